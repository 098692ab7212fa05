"""Latent nodes: empty latents, VAE encode/decode (plain, tiled, for inpainting), resizing, compositing, batches.

LATENT is ComfyUI's dict: "samples" (B, C, h, w) is the raw VAE latent (the family's scale and shift are applied by
the model when it samples, not here), with an optional "noise_mask" and "batch_index". Nodes return a new dict
and never change the one they were given: a cached value may feed several nodes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from athena.graph.node import Node
from athena.graph.schema import Combo, Float, Int, Link, Output, Schema
from athena.media import ops
from athena.nodes.types import Vae

MAX_RESOLUTION = 16384  # ComfyUI's bound on sizes and offsets
Latent = dict[str, Any]


# --------------------------------------------------------------------------- VAE calls


def encode(vae: Vae, pixels: Tensor, tile: int | None = None, overlap: int = 0) -> Latent:
    """IMAGE -> {"samples": the distribution's mode}, tiled when `tile` (pixels) is given."""
    model = vae.vae
    x = ops.to_vae_input(pixels, model.cfg.downscale).to(model.device, model.dtype)
    with torch.no_grad():
        d = model.encode(x) if tile is None else model.encode_tiled(x, tile, overlap)
    return {"samples": d.mode().float().cpu()}


def decode(vae: Vae, latent: Latent, tile: int | None = None, overlap: int = 0) -> Tensor:
    """LATENT -> IMAGE, tiled when `tile` (latent pixels) is given."""
    model = vae.vae
    z = latent["samples"].to(model.device, model.dtype)
    with torch.no_grad():
        x = model.decode(z) if tile is None else model.decode_tiled(z, tile, overlap)
    return ops.from_vae_output(x)


def tiles(tile_size: int, overlap: int, f: int) -> tuple[int, int]:
    """ComfyUI's tile settings made valid: sizes cut to multiples of f, and overlap at most a quarter tile."""
    tile_size = max(tile_size // f * f, f)
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    return tile_size, overlap // f * f


# --------------------------------------------------------------------------- nodes: VAE


class EmptyLatentImage(Node):
    schema = Schema(
        id="EmptyLatentImage", category="latent", display_name="Empty Latent Image",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        inputs=(Int("width", default=512, min=16, max=MAX_RESOLUTION, step=8),
                Int("height", default=512, min=16, max=MAX_RESOLUTION, step=8),
                Int("batch_size", default=1, min=1, max=4096)),
        outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, width: int, height: int, batch_size: int) -> tuple[Latent]:
        # Always 4 channels at 1/8, as ComfyUI: the sampler widens it for models with other latents.
        return ({"samples": torch.zeros(batch_size, 4, height // 8, width // 8)},)


class VAEEncode(Node):
    schema = Schema(id="VAEEncode", category="latent", display_name="VAE Encode",
                    inputs=(Link("pixels", "IMAGE"), Link("vae", "VAE")), outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, pixels: Tensor, vae: Vae) -> tuple[Latent]:
        return (encode(vae, pixels),)


class VAEDecode(Node):
    schema = Schema(id="VAEDecode", category="latent", display_name="VAE Decode",
                    description="Decodes latent images back into pixel space images.",
                    inputs=(Link("samples", "LATENT"), Link("vae", "VAE")), outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, samples: Latent, vae: Vae) -> tuple[Tensor]:
        return (decode(vae, samples),)


TEMPORAL = (Int("temporal_size", default=64, min=8, max=4096, step=4,
                tooltip="Only used for video VAEs: Amount of frames to process at a time."),
            Int("temporal_overlap", default=8, min=4, max=4096, step=4,
                tooltip="Only used for video VAEs: Amount of frames to overlap."))


class VAEEncodeTiled(Node):
    """Encodes in overlapping tiles to bound memory; the temporal inputs matter only for video VAEs."""

    schema = Schema(id="VAEEncodeTiled", category="_for_testing", display_name="VAE Encode (Tiled)",
                    inputs=(Link("pixels", "IMAGE"), Link("vae", "VAE"),
                            Int("tile_size", default=512, min=64, max=4096, step=64),
                            Int("overlap", default=64, min=0, max=4096, step=32), *TEMPORAL),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, pixels: Tensor, vae: Vae, tile_size: int, overlap: int, temporal_size: int = 64,
            temporal_overlap: int = 8) -> tuple[Latent]:
        tile, over = tiles(tile_size, overlap, vae.vae.cfg.downscale)
        return (encode(vae, pixels, tile, over),)


class VAEDecodeTiled(Node):
    """Decodes in overlapping tiles (sizes in image pixels) to bound memory."""

    schema = Schema(id="VAEDecodeTiled", category="_for_testing", display_name="VAE Decode (Tiled)",
                    inputs=(Link("samples", "LATENT"), Link("vae", "VAE"),
                            Int("tile_size", default=512, min=64, max=4096, step=32),
                            Int("overlap", default=64, min=0, max=4096, step=32), *TEMPORAL),
                    outputs=(Output("IMAGE"),))

    @classmethod
    def run(cls, samples: Latent, vae: Vae, tile_size: int, overlap: int = 64, temporal_size: int = 64,
            temporal_overlap: int = 8) -> tuple[Tensor]:
        f = vae.vae.cfg.downscale
        tile, over = tiles(tile_size, overlap, f)
        return (decode(vae, samples, tile // f, over // f),)


class VAEEncodeForInpaint(Node):
    """Encodes with the masked pixels greyed out, and sets the (grown) mask as the noise mask, for models
    that must invent the masked area from nothing (denoise 1.0)."""

    schema = Schema(id="VAEEncodeForInpaint", category="latent/inpaint", display_name="VAE Encode (for Inpainting)",
                    inputs=(Link("pixels", "IMAGE"), Link("vae", "VAE"), Link("mask", "MASK"),
                            Int("grow_mask_by", default=6, min=0, max=64)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, pixels: Tensor, vae: Vae, mask: Tensor, grow_mask_by: int = 6) -> tuple[Latent]:
        greyed, noise_mask = ops.inpaint_input(pixels, mask, vae.vae.cfg.downscale, grow_mask_by)
        return ({**encode(vae, greyed), "noise_mask": noise_mask},)


class SetLatentNoiseMask(Node):
    schema = Schema(id="SetLatentNoiseMask", category="latent/inpaint", display_name="Set Latent Noise Mask",
                    inputs=(Link("samples", "LATENT"), Link("mask", "MASK")), outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples: Latent, mask: Tensor) -> tuple[Latent]:
        return ({**samples, "noise_mask": ops.as_masks(mask)[:, None]},)


# --------------------------------------------------------------------------- nodes: resize and combine


class LatentUpscale(Node):
    """Resizes to a size in pixels (a 0 side keeps the aspect ratio); both sides are at least 64 pixels."""

    schema = Schema(id="LatentUpscale", category="latent", display_name="Upscale Latent",
                    inputs=(Link("samples", "LATENT"), Combo("upscale_method", ops.LATENT_METHODS),
                            Int("width", default=512, min=0, max=MAX_RESOLUTION, step=8),
                            Int("height", default=512, min=0, max=MAX_RESOLUTION, step=8),
                            Combo("crop", ops.CROPS)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples: Latent, upscale_method: str, width: int, height: int, crop: str) -> tuple[Latent]:
        if width == 0 and height == 0:
            return (samples,)
        x = samples["samples"]
        width, height = (max(64, v) if v else 0 for v in (width, height))
        width, height = (max(64, v) for v in ops.size_keeping_aspect(x.shape[-1], x.shape[-2], width, height))
        return ({**samples, "samples": ops.resize(x, width // 8, height // 8, upscale_method, crop)},)


class LatentUpscaleBy(Node):
    schema = Schema(id="LatentUpscaleBy", category="latent", display_name="Upscale Latent By",
                    inputs=(Link("samples", "LATENT"), Combo("upscale_method", ops.LATENT_METHODS),
                            Float("scale_by", default=1.5, min=0.01, max=8.0, step=0.01)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        x = samples["samples"]
        w, h = ops.scaled_size(x.shape[-1], x.shape[-2], scale_by)
        return ({**samples, "samples": ops.resize(x, w, h, upscale_method)},)


class LatentComposite(Node):
    """Pastes samples_from into samples_to at (x, y) pixels (rounded down to latent pixels), its inner edges
    feathered over `feather` pixels."""

    schema = Schema(id="LatentComposite", category="latent", display_name="Latent Composite",
                    inputs=(Link("samples_to", "LATENT"), Link("samples_from", "LATENT"),
                            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
                            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
                            Int("feather", default=0, min=0, max=MAX_RESOLUTION, step=8)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int) -> tuple[Latent]:
        out = ops.composite_latent(samples_to["samples"], samples_from["samples"], x // 8, y // 8, feather // 8)
        return ({**samples_to, "samples": out},)


class LatentBlend(Node):
    schema = Schema(id="LatentBlend", category="_for_testing", display_name="Latent Blend",
                    inputs=(Link("samples1", "LATENT"), Link("samples2", "LATENT"),
                            Float("blend_factor", default=0.5, min=0, max=1, step=0.01)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        return ({**samples1, "samples": ops.blend_latents(samples1["samples"], samples2["samples"], blend_factor)},)


# --------------------------------------------------------------------------- nodes: batches


def _batch_slice(samples: Latent, start: int, length: int) -> Latent:
    """Items [start, start + length) of a latent batch, their masks and their batch indices (which keep the
    noise each item had in the full batch)."""
    x = samples["samples"]
    start = min(x.shape[0] - 1, start)
    length = min(x.shape[0] - start, length)
    out = {**samples, "samples": x[start:start + length].clone()}
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        out["noise_mask"] = masks.clone() if masks.shape[0] == 1 else \
            ops.fit_batch(masks, x.shape[0])[start:start + length].clone()
    indices = samples.get("batch_index", list(range(x.shape[0])))
    out["batch_index"] = list(indices[start:start + length])
    return out


def _batch_repeat(samples: Latent, amount: int) -> Latent:
    """The batch `amount` times over; batch indices continue past the original span so each copy gets its own
    noise."""
    x = samples["samples"]
    out = {**samples, "samples": x.repeat(amount, *([1] * (x.ndim - 1)))}
    masks = samples.get("noise_mask")
    if masks is not None and masks.shape[0] > 1:
        masks = ops.fit_batch(masks, x.shape[0])
        out["noise_mask"] = masks.repeat(amount, *([1] * (masks.ndim - 1)))
    if "batch_index" in samples:
        idx = list(samples["batch_index"])
        span = max(idx) - min(idx) + 1
        out["batch_index"] = idx + [i + k * span for k in range(1, amount) for i in idx]
    return out


class LatentFromBatch(Node):
    schema = Schema(id="LatentFromBatch", category="latent/batch", display_name="Latent From Batch",
                    inputs=(Link("samples", "LATENT"), Int("batch_index", default=0, min=0, max=63),
                            Int("length", default=1, min=1, max=64)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        return (_batch_slice(samples, batch_index, length),)


class RepeatLatentBatch(Node):
    schema = Schema(id="RepeatLatentBatch", category="latent/batch", display_name="Repeat Latent Batch",
                    inputs=(Link("samples", "LATENT"), Int("amount", default=1, min=1, max=64)),
                    outputs=(Output("LATENT"),))

    @classmethod
    def run(cls, samples: Latent, amount: int) -> tuple[Latent]:
        return (_batch_repeat(samples, amount),)


NODES = (EmptyLatentImage, VAEEncode, VAEDecode, VAEEncodeTiled, VAEDecodeTiled, VAEEncodeForInpaint,
         SetLatentNoiseMask, LatentUpscale, LatentUpscaleBy, LatentComposite, LatentBlend, LatentFromBatch,
         RepeatLatentBatch)
