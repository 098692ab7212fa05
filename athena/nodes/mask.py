"""Mask nodes: to and from images, solid masks, inverting, growing and feathering.

MASK is (B, H, W) float32 in [0, 1], 1 = the part to repaint; nodes accept (H, W) and (B, 1, H, W) too.
"""

from __future__ import annotations

from torch import Tensor

from athena.errors import ConfigError
from athena.graph.node import Node
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Output, Schema
from athena.media import ops

MAX_RESOLUTION = 16384
CHANNELS = ("red", "green", "blue", "alpha")


class ImageToMask(Node):
    schema = Schema(id="ImageToMask", category="mask", display_name="Convert Image to Mask",
                    inputs=(Link("image", "IMAGE"), Combo("channel", CHANNELS)), outputs=(Output("MASK"),))

    @classmethod
    def run(cls, image: Tensor, channel: str) -> tuple[Tensor]:
        c = CHANNELS.index(channel)
        if c >= image.shape[-1]:
            raise ConfigError(f"ImageToMask: the image has {image.shape[-1]} channels, so it has no {channel!r} "
                              f"channel; use LoadImage's MASK output for an image's transparency")
        return (image[..., c],)


class MaskToImage(Node):
    schema = Schema(id="MaskToImage", category="mask", display_name="Convert Mask to Image",
                    inputs=(Link("mask", "MASK"),), outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, mask: Tensor) -> tuple[Tensor]:
        return (ops.as_masks(mask)[..., None].expand(-1, -1, -1, 3),)


class SolidMask(Node):
    schema = Schema(id="SolidMask", category="mask",
                    inputs=(Float("value", default=1.0, min=0.0, max=1.0, step=0.01),
                            Int("width", default=512, min=1, max=MAX_RESOLUTION),
                            Int("height", default=512, min=1, max=MAX_RESOLUTION)),
                    outputs=(Output("MASK"),))

    @classmethod
    def run(cls, value: float, width: int, height: int) -> tuple[Tensor]:
        return (ops.solid_mask(value, width, height),)


class InvertMask(Node):
    schema = Schema(id="InvertMask", category="mask", inputs=(Link("mask", "MASK"),), outputs=(Output("MASK"),))

    @classmethod
    def run(cls, mask: Tensor) -> tuple[Tensor]:
        return (1.0 - mask,)


class GrowMask(Node):
    """Grows (expand > 0) or shrinks (< 0) the mask by that many pixels; tapered corners grow it as a diamond."""

    schema = Schema(id="GrowMask", category="mask",
                    inputs=(Link("mask", "MASK"), Int("expand", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
                            Boolean("tapered_corners", default=True)),
                    outputs=(Output("MASK"),))

    @classmethod
    def run(cls, mask: Tensor, expand: int, tapered_corners: bool) -> tuple[Tensor]:
        return (ops.grow_mask(mask, expand, tapered_corners),)


class FeatherMask(Node):
    """Fades the mask out linearly towards the chosen edges over that many pixels."""

    schema = Schema(id="FeatherMask", category="mask",
                    inputs=(Link("mask", "MASK"),
                            *(Int(side, default=0, min=0, max=MAX_RESOLUTION) for side in ("left", "top", "right", "bottom"))),
                    outputs=(Output("MASK"),))

    @classmethod
    def run(cls, mask: Tensor, left: int, top: int, right: int, bottom: int) -> tuple[Tensor]:
        return (ops.feather_mask(mask, left, top, right, bottom),)


NODES = (ImageToMask, MaskToImage, SolidMask, InvertMask, GrowMask, FeatherMask)
