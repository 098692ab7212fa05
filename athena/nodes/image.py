"""Image nodes: loading from the input folder, resizing, padding, cropping, batching, blending, compositing.

IMAGE is (B, H, W, C) float32 in [0, 1], channels last, C = 3 (4 where an alpha was kept); MASK is (B, H, W).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from athena.errors import ConfigError
from athena.graph.node import Context, Node
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Output, Schema
from athena.media import files, ops

MAX_RESOLUTION = 16384


# --------------------------------------------------------------------------- loading


def input_images(services: Any) -> list[str]:
    """The LoadImage combo: image files in the host's input folder (none when asked without a host)."""
    return services.folders.input_names() if services is not None else []


def input_path(services: Any, name: str) -> Path:
    """The file behind a LoadImage choice ("x.png", "sub/x.png", "x.png [output]"), confined to its folder."""
    if services is None:
        raise ConfigError(f"cannot find input image {name!r}: this node needs a Runtime with an input folder")
    path: Path = services.folders.input_file(name)
    return path


class LoadImage(Node):
    """Every frame of an input image as IMAGE, and its alpha as MASK (1 = transparent, the part to paint)."""

    schema = Schema(id="LoadImage", category="image", display_name="Load Image",
                    inputs=(Combo("image", input_images, image_upload=True),),
                    outputs=(Output("IMAGE"), Output("MASK")))

    @classmethod
    def run(cls, ctx: Context, image: str) -> tuple[Tensor, Tensor]:
        return files.load_frames(input_path(ctx.services, image))

    @classmethod
    def fingerprint(cls, services: Any, **inputs: Any) -> Hashable:
        # The file's content, so replacing it under the same name re-runs the node and everything after it.
        return files.sha256(input_path(services, inputs["image"]))

    @classmethod
    def validate_inputs(cls, services: Any, **inputs: Any) -> str | None:
        try:
            input_path(services, inputs["image"])
        except ConfigError as e:
            return f"Invalid image file: {e}"
        return None


class LoadImageMask(Node):
    """One channel of an input image as MASK (alpha inverted, so transparent = 1)."""

    schema = Schema(id="LoadImageMask", category="mask", display_name="Load Image (as Mask)",
                    inputs=(Combo("image", input_images, image_upload=True), Combo("channel", files.CHANNELS)),
                    outputs=(Output("MASK"),))

    @classmethod
    def run(cls, ctx: Context, image: str, channel: str) -> tuple[Tensor]:
        return (files.load_channel(input_path(ctx.services, image), channel),)

    fingerprint = LoadImage.fingerprint
    validate_inputs = LoadImage.validate_inputs


# --------------------------------------------------------------------------- resizing


class ImageScale(Node):
    """Resizes to width x height pixels; a 0 side keeps the aspect ratio, both 0 leaves the image as it is."""

    schema = Schema(id="ImageScale", category="image/upscaling", display_name="Upscale Image",
                    inputs=(Link("image", "IMAGE"), Combo("upscale_method", ops.IMAGE_METHODS),
                            Int("width", default=512, min=0, max=MAX_RESOLUTION),
                            Int("height", default=512, min=0, max=MAX_RESOLUTION), Combo("crop", ops.CROPS)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image: Tensor, upscale_method: str, width: int, height: int, crop: str) -> tuple[Tensor]:
        if width == 0 and height == 0:
            return (image,)
        width, height = ops.size_keeping_aspect(image.shape[2], image.shape[1], width, height)
        return (ops.resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    schema = Schema(id="ImageScaleBy", category="image/upscaling", display_name="Upscale Image By",
                    inputs=(Link("image", "IMAGE"), Combo("upscale_method", ops.IMAGE_METHODS),
                            Float("scale_by", default=1.0, min=0.01, max=8.0, step=0.01)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image: Tensor, upscale_method: str, scale_by: float) -> tuple[Tensor]:
        width, height = ops.scaled_size(image.shape[2], image.shape[1], scale_by)
        return (ops.resize_image(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    schema = Schema(id="ImageScaleToTotalPixels", category="image/upscaling",
                    display_name="Scale Image to Total Pixels",
                    inputs=(Link("image", "IMAGE"), Combo("upscale_method", ops.IMAGE_METHODS),
                            Float("megapixels", default=1.0, min=0.01, max=16.0, step=0.01)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image: Tensor, upscale_method: str, megapixels: float) -> tuple[Tensor]:
        width, height = ops.total_pixels_size(image.shape[2], image.shape[1], megapixels)
        return (ops.resize_image(image, width, height, upscale_method),)


# --------------------------------------------------------------------------- canvas


class ImageInvert(Node):
    schema = Schema(id="ImageInvert", category="image", display_name="Invert Image",
                    inputs=(Link("image", "IMAGE"),), outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image: Tensor) -> tuple[Tensor]:
        return (1.0 - image,)


class ImagePadForOutpaint(Node):
    """Grows the canvas with grey and gives the mask of the new border, ramped into the old image by
    `feathering` pixels so the seam is repainted too."""

    schema = Schema(id="ImagePadForOutpaint", category="image", display_name="Pad Image for Outpainting",
                    inputs=(Link("image", "IMAGE"),
                            *(Int(side, default=0, min=0, max=MAX_RESOLUTION, step=8)
                              for side in ("left", "top", "right", "bottom")),
                            Int("feathering", default=40, min=0, max=MAX_RESOLUTION)),
                    outputs=(Output("IMAGE"), Output("MASK")))

    @classmethod
    def run(cls, image: Tensor, left: int, top: int, right: int, bottom: int,
            feathering: int) -> tuple[Tensor, Tensor]:
        return ops.pad_for_outpaint(image, left, top, right, bottom, feathering)


class ImageCrop(Node):
    schema = Schema(id="ImageCrop", category="image/transform", display_name="Image Crop",
                    inputs=(Link("image", "IMAGE"), Int("width", default=512, min=1, max=MAX_RESOLUTION),
                            Int("height", default=512, min=1, max=MAX_RESOLUTION),
                            Int("x", default=0, min=0, max=MAX_RESOLUTION), Int("y", default=0, min=0, max=MAX_RESOLUTION)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image: Tensor, width: int, height: int, x: int, y: int) -> tuple[Tensor]:
        return (ops.crop_image(image, width, height, x, y),)


class EmptyImage(Node):
    schema = Schema(id="EmptyImage", category="image",
                    inputs=(Int("width", default=512, min=1, max=MAX_RESOLUTION),
                            Int("height", default=512, min=1, max=MAX_RESOLUTION),
                            Int("batch_size", default=1, min=1, max=4096),
                            Int("color", default=0, min=0, max=0xFFFFFF)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, width: int, height: int, batch_size: int, color: int) -> tuple[Tensor]:
        return (ops.solid_image(width, height, batch_size, color),)


# --------------------------------------------------------------------------- combining


class ImageBatch(Node):
    """image1's frames then image2's, image2 resized (bilinear, centre crop) to image1's size if they differ."""

    schema = Schema(id="ImageBatch", category="image", display_name="Batch Images",
                    inputs=(Link("image1", "IMAGE"), Link("image2", "IMAGE")), outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image1: Tensor, image2: Tensor) -> tuple[Tensor]:
        if image1.shape[1:] != image2.shape[1:]:
            image2 = ops.resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat([image1, image2]),)


class ImageBlend(Node):
    schema = Schema(id="ImageBlend", category="image/postprocessing", display_name="Image Blend",
                    inputs=(Link("image1", "IMAGE"), Link("image2", "IMAGE"),
                            Float("blend_factor", default=0.5, min=0.0, max=1.0, step=0.01),
                            Combo("blend_mode", ops.BLEND_MODES)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, image1: Tensor, image2: Tensor, blend_factor: float, blend_mode: str) -> tuple[Tensor]:
        image1, image2 = ops.with_alpha_like(image1, image2)
        return (ops.blend(image1, image2, blend_factor, blend_mode),)


class ImageCompositeMasked(Node):
    """Pastes source onto destination at (x, y), through the mask where one is given."""

    schema = Schema(id="ImageCompositeMasked", category="image",
                    inputs=(Link("destination", "IMAGE"), Link("source", "IMAGE"),
                            Int("x", default=0, min=0, max=MAX_RESOLUTION), Int("y", default=0, min=0, max=MAX_RESOLUTION),
                            Boolean("resize_source", default=False), Link("mask", "MASK", optional=True)),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, destination: Tensor, source: Tensor, x: int, y: int, resize_source: bool,
            mask: Tensor | None = None) -> tuple[Tensor]:
        destination, source = ops.with_alpha_like(destination, source)
        out = ops.paste(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, resize_source)
        return (out.movedim(1, -1),)


NODES = (LoadImage, LoadImageMask, ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImageInvert,
         ImagePadForOutpaint, ImageCrop, EmptyImage, ImageBatch, ImageBlend, ImageCompositeMasked)
