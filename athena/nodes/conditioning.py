"""Conditioning nodes: text encoding, and the list operations on CONDITIONING (a tuple of `CondEntry`).

Combining keeps every entry (each is evaluated and the results are averaged by weight when sampling); areas, masks
and timestep ranges are recorded on the entries and resolved by the sampler (see `athena.diffusion.areas`).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from athena.graph.node import Node
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Output, Schema, String
from athena.nodes.types import Clip, Vae
from athena.pipelines.entries import (
    CondEntry,
    SizeCond,
    averaged,
    concatenated,
    encode_text,
    inpaint_inputs,
    vae_encoder,
    zeroed,
)

__all__ = ["NODES", "CondEntry"]

MAX_RESOLUTION = 16384
Conds = tuple[CondEntry, ...]
COND = Output("CONDITIONING")


def placed(conditioning: Conds, **changes: Any) -> Conds:
    """Every entry with its placement changed (ComfyUI's `conditioning_set_values`)."""
    return tuple(replace(e, place=replace(e.place, **changes)) for e in conditioning)


def loras(clip: Clip) -> list[tuple[Any, float]]:
    return [(u.path, u.strength) for u in clip.loras]


class CLIPTextEncode(Node):
    schema = Schema("CLIPTextEncode", "conditioning",
                    inputs=(String("text", multiline=True), Link("clip", "CLIP")), outputs=(COND,),
                    description="Encodes a prompt with the CLIP model into conditioning for a sampler.")

    @classmethod
    def run(cls, text: str, clip: Clip) -> tuple[Any, ...]:
        return ((encode_text(clip.pipe, text, clip_skip=clip.clip_skip, loras=loras(clip)),),)


class CLIPTextEncodeSDXL(Node):
    schema = Schema("CLIPTextEncodeSDXL", "advanced/conditioning",
                    inputs=(Link("clip", "CLIP"), Int("width", 1024, 0, MAX_RESOLUTION),
                            Int("height", 1024, 0, MAX_RESOLUTION), Int("crop_w", 0, 0, MAX_RESOLUTION),
                            Int("crop_h", 0, 0, MAX_RESOLUTION), Int("target_width", 1024, 0, MAX_RESOLUTION),
                            Int("target_height", 1024, 0, MAX_RESOLUTION), String("text_g", multiline=True),
                            String("text_l", multiline=True)),
                    outputs=(COND,))

    @classmethod
    def run(cls, clip: Clip, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
            target_height: int, text_g: str, text_l: str) -> tuple[Any, ...]:
        sizes = SizeCond(width, height, crop_w, crop_h, target_width, target_height)
        entry = encode_text(clip.pipe, {"clip_g": text_g, "clip_l": text_l}, clip_skip=clip.clip_skip,
                            loras=loras(clip), sizes=sizes)
        return ((entry,),)


class CLIPTextEncodeSDXLRefiner(Node):
    schema = Schema("CLIPTextEncodeSDXLRefiner", "advanced/conditioning",
                    inputs=(Link("clip", "CLIP"), Float("ascore", 6.0, 0.0, 1000.0, 0.01),
                            Int("width", 1024, 0, MAX_RESOLUTION), Int("height", 1024, 0, MAX_RESOLUTION),
                            String("text", multiline=True)),
                    outputs=(COND,))

    @classmethod
    def run(cls, clip: Clip, ascore: float, width: int, height: int, text: str) -> tuple[Any, ...]:
        sizes = SizeCond(width, height, aesthetic_score=ascore)
        return ((encode_text(clip.pipe, text, clip_skip=clip.clip_skip, loras=loras(clip), sizes=sizes),),)


class CLIPSetLastLayer(Node):
    schema = Schema("CLIPSetLastLayer", "conditioning",
                    inputs=(Link("clip", "CLIP"), Int("stop_at_clip_layer", -1, -24, -1)), outputs=(Output("CLIP"),))

    @classmethod
    def run(cls, clip: Clip, stop_at_clip_layer: int) -> tuple[Any, ...]:
        return (replace(clip, clip_skip=stop_at_clip_layer),)


class ConditioningCombine(Node):
    schema = Schema("ConditioningCombine", "conditioning",
                    inputs=(Link("conditioning_1", "CONDITIONING"), Link("conditioning_2", "CONDITIONING")),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning_1: Conds, conditioning_2: Conds) -> tuple[Any, ...]:
        return (tuple(conditioning_1) + tuple(conditioning_2),)


def _first(source: Conds, node: str) -> CondEntry:
    if len(source) > 1:
        warnings.warn(f"{node}: conditioning_from has {len(source)} entries; only the first is used", stacklevel=3)
    return source[0]


class ConditioningAverage(Node):
    schema = Schema("ConditioningAverage", "conditioning",
                    inputs=(Link("conditioning_to", "CONDITIONING"), Link("conditioning_from", "CONDITIONING"),
                            Float("conditioning_to_strength", 1.0, 0.0, 1.0, 0.01)),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning_to: Conds, conditioning_from: Conds, conditioning_to_strength: float) -> tuple[Any, ...]:
        source = _first(conditioning_from, "ConditioningAverage")
        return (tuple(averaged(e, source, conditioning_to_strength) for e in conditioning_to),)


class ConditioningConcat(Node):
    schema = Schema("ConditioningConcat", "conditioning",
                    inputs=(Link("conditioning_to", "CONDITIONING"), Link("conditioning_from", "CONDITIONING")),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning_to: Conds, conditioning_from: Conds) -> tuple[Any, ...]:
        source = _first(conditioning_from, "ConditioningConcat")
        return (tuple(concatenated(e, source) for e in conditioning_to),)


class ConditioningZeroOut(Node):
    schema = Schema("ConditioningZeroOut", "advanced/conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"),), outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds) -> tuple[Any, ...]:
        return (tuple(zeroed(e) for e in conditioning),)


class ConditioningSetTimestepRange(Node):
    schema = Schema("ConditioningSetTimestepRange", "advanced/conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"), Float("start", 0.0, 0.0, 1.0, 0.001),
                            Float("end", 1.0, 0.0, 1.0, 0.001)),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds, start: float, end: float) -> tuple[Any, ...]:
        return (placed(conditioning, start_percent=start, end_percent=end),)


class ConditioningSetArea(Node):
    schema = Schema("ConditioningSetArea", "conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"), Int("width", 64, 64, MAX_RESOLUTION, 8),
                            Int("height", 64, 64, MAX_RESOLUTION, 8), Int("x", 0, 0, MAX_RESOLUTION, 8),
                            Int("y", 0, 0, MAX_RESOLUTION, 8), Float("strength", 1.0, 0.0, 10.0, 0.01)),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds, width: int, height: int, x: int, y: int, strength: float) -> tuple[Any, ...]:
        area = (height // 8, width // 8, y // 8, x // 8)  # latent pixels
        return (placed(conditioning, area=area, percentage=False, strength=strength, set_area_to_bounds=False),)


class ConditioningSetAreaPercentage(Node):
    schema = Schema("ConditioningSetAreaPercentage", "conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"), Float("width", 1.0, 0.0, 1.0, 0.01),
                            Float("height", 1.0, 0.0, 1.0, 0.01), Float("x", 0.0, 0.0, 1.0, 0.01),
                            Float("y", 0.0, 0.0, 1.0, 0.01), Float("strength", 1.0, 0.0, 10.0, 0.01)),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds, width: float, height: float, x: float, y: float,
            strength: float) -> tuple[Any, ...]:
        return (placed(conditioning, area=(height, width, y, x), percentage=True, strength=strength,
                       set_area_to_bounds=False),)


class ConditioningSetAreaStrength(Node):
    schema = Schema("ConditioningSetAreaStrength", "conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"), Float("strength", 1.0, 0.0, 10.0, 0.01)),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds, strength: float) -> tuple[Any, ...]:
        return (placed(conditioning, strength=strength),)


class ConditioningSetMask(Node):
    schema = Schema("ConditioningSetMask", "conditioning",
                    inputs=(Link("conditioning", "CONDITIONING"), Link("mask", "MASK"),
                            Float("strength", 1.0, 0.0, 10.0, 0.01), Combo("set_cond_area", ("default", "mask bounds"))),
                    outputs=(COND,))

    @classmethod
    def run(cls, conditioning: Conds, mask: Any, strength: float, set_cond_area: str) -> tuple[Any, ...]:
        return (placed(conditioning, mask=mask, mask_strength=strength,
                       set_area_to_bounds=set_cond_area != "default"),)


class InpaintModelConditioning(Node):
    schema = Schema("InpaintModelConditioning", "conditioning/inpaint",
                    inputs=(Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"), Link("vae", "VAE"),
                            Link("pixels", "IMAGE"), Link("mask", "MASK"), Boolean("noise_mask", True)),
                    outputs=(Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
                             Output("LATENT", "latent")))

    @classmethod
    def run(cls, positive: Conds, negative: Conds, vae: Vae, pixels: Any, mask: Any,
            noise_mask: bool = True) -> tuple[Any, ...]:
        latent, masked, m = inpaint_inputs(vae_encoder(vae.vae), pixels, mask)
        pos, neg = (tuple(replace(e, concat_latent=masked, concat_mask=m) for e in c) for c in (positive, negative))
        return pos, neg, {"samples": latent, **({"noise_mask": m[:, None]} if noise_mask else {})}


NODES = (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPSetLastLayer, ConditioningCombine,
         ConditioningAverage, ConditioningConcat, ConditioningZeroOut, ConditioningSetTimestepRange,
         ConditioningSetArea, ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
         InpaintModelConditioning)
