"""Conditioning entries as the node graph passes them (ComfyUI's CONDITIONING list): encoded text plus where and
when it acts, SDXL's size conditioning and an inpainting model's concat image, resolved only when sampling.

Text encoders run when a text node runs, but SDXL's `y` depends on the image size and an area crop on the latent,
which are only known to the sampler; so an entry keeps the pooled output and the size settings, and
`regions` builds the U-Net's conditioning for one latent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from athena.diffusion.areas import Placement, Region, resolve
from athena.diffusion.denoisers import ModelSampling
from athena.models.unet import adm_vector
from athena.models.vae import AutoencoderKL
from athena.pipelines.conditioning import Conditioning, size_ids
from athena.pipelines.pipeline import Pipeline, TextModels

Lora = tuple[Path, float]  # a LoRA file and its strength for one component (U-Net or text encoders)


@dataclass(frozen=True)
class SizeCond:
    """SDXL's micro-conditioning as CLIPTextEncodeSDXL(Refiner) sets it; None = the latent's size in pixels, and an
    unset aesthetic score is 6 for the positive side and 2.5 for the negative (ComfyUI's defaults)."""

    width: int | None = None
    height: int | None = None
    crop_w: int = 0
    crop_h: int = 0
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float | None = None


@dataclass(frozen=True, eq=False)
class CondEntry:
    """One CONDITIONING entry: the encoded prompt, its placement, SDXL sizes, and an inpainting model's inputs."""

    cond: Conditioning
    place: Placement = field(default_factory=Placement)
    sizes: SizeCond = field(default_factory=SizeCond)
    concat_latent: Tensor | None = field(default=None, repr=False)  # raw VAE latent of the masked image
    concat_mask: Tensor | None = field(default=None, repr=False)  # (B, H, W) pixel mask, 1 = repaint


# ---------------------------------------------------------------- LoRAs, patched in only while used

@contextmanager
def loras_applied(pipe: Pipeline | TextModels, unet: Sequence[Lora] = (), text: Sequence[Lora] = ()) -> Iterator[None]:
    """The LoRAs patched into `pipe`'s U-Net and text encoders, restored bit for bit afterwards (also on errors and
    cancellation), so a cached pipeline shared by several graph branches never keeps a LoRA."""
    handles = []
    try:
        for path, strength in unet:
            handles.append(pipe.load_lora(path, strength, 0.0))
        for path, strength in text:
            handles.append(pipe.load_lora(path, 0.0, strength))
        yield
    finally:
        for h in reversed(handles):
            h.remove()


# ---------------------------------------------------------------- building entries

def encode_text(pipe: Pipeline | TextModels, text: str | Mapping[str, str], *, clip_skip: int | None = None,
                loras: Sequence[Lora] = (), sizes: SizeCond | None = None) -> CondEntry:
    """A prompt (or SDXL's per-encoder prompts) encoded with the text-encoder LoRAs applied."""
    with loras_applied(pipe, text=loras):
        cond = pipe.encode_prompt(text, clip_skip=clip_skip)
    return CondEntry(cond, sizes=sizes or SizeCond())


def zeroed(e: CondEntry) -> CondEntry:
    """ConditioningZeroOut: zero tokens and pooled output (SDXL's size part of `y` is rebuilt when sampling)."""
    c = e.cond
    pooled = None if c.pooled is None else torch.zeros_like(c.pooled)
    return replace(e, cond=Conditioning(torch.zeros_like(c.context), c.y, pooled, c.concat))


def averaged(to: CondEntry, source: CondEntry, strength: float) -> CondEntry:
    """ConditioningAverage: `to`'s tokens times `strength` plus `source`'s (cut or zero-padded to the same length)
    times 1 - strength; pooled outputs blend the same way."""
    t1, t0 = to.cond.context, source.cond.context[:, :to.cond.context.shape[1]]
    if t0.shape[1] < t1.shape[1]:
        t0 = torch.cat([t0, t0.new_zeros(t0.shape[0], t1.shape[1] - t0.shape[1], t0.shape[2])], dim=1)
    pooled = to.cond.pooled if to.cond.pooled is not None else source.cond.pooled
    if to.cond.pooled is not None and source.cond.pooled is not None:
        pooled = to.cond.pooled * strength + source.cond.pooled * (1 - strength)
    context = t1 * strength + t0 * (1 - strength)
    return replace(to, cond=Conditioning(context, to.cond.y, pooled, to.cond.concat))


def concatenated(to: CondEntry, source: CondEntry) -> CondEntry:
    """ConditioningConcat: `source`'s tokens appended after `to`'s (attention sees both prompts)."""
    context = torch.cat([to.cond.context, source.cond.context], dim=1)
    return replace(to, cond=Conditioning(context, to.cond.y, to.cond.pooled, to.cond.concat))


def vae_ready(pixels: Tensor) -> Tensor:
    """IMAGE (B, H, W, 3) in [0, 1] -> (B, 3, H', W') in [-1, 1], cropped centrally to multiples of 8 (as VAEEncode)."""
    H, W = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, dy:dy + H, dx:dx + W, :3].movedim(-1, 1) * 2 - 1


def vae_encoder(vae: AutoencoderKL) -> Callable[[Tensor], Tensor]:
    """(B, 3, H, W) in [-1, 1] -> the raw VAE latent (the distribution's mode, unscaled), on the CPU."""
    def encode(img: Tensor) -> Tensor:
        with torch.no_grad():
            return vae.encode(img.to(vae.device, vae.dtype)).mode().float().cpu()
    return encode


def inpaint_inputs(encode: Callable[[Tensor], Tensor], pixels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """InpaintModelConditioning's tensors: (raw latent of the image, raw latent of the image with the masked pixels
    grey, the mask at the image's size (B, H, W))."""
    H, W = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    m = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=pixels.shape[1:3], mode="bilinear")
    dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    m = m[:, :, dy:dy + H, dx:dx + W]
    image = vae_ready(pixels)
    keep = 1 - m.round()
    masked = image * keep  # grey (0 in [-1, 1]) where repainted
    return encode(image), encode(masked), m[:, 0]


# ---------------------------------------------------------------- resolving entries for one latent

def _to_batch(t: Tensor, batch: int) -> Tensor:
    """`t` repeated along the batch to `batch` items (then cut)."""
    reps = -(-batch // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:batch]


def unet_cond(pipe: Pipeline, e: CondEntry, latent: Tensor, *, negative: bool,
              denoise_mask: Tensor | None = None) -> Conditioning:
    """`e`'s conditioning for this U-Net and `latent` (B, C, h, w; the U-Net's scaled space): SDXL's `y` from the
    pooled output and the sizes, an inpainting U-Net's mask + masked-image concat. An inpainting U-Net given no
    InpaintModelConditioning input takes the latent's noise mask and the latent itself (VAEEncodeForInpaint
    greyed the masked pixels), or with no mask, "repaint everything" over a blank image, as in ComfyUI."""
    c, fam, (h, w) = e.cond, pipe.family, latent.shape[-2:]
    y = c.y
    if fam.name.startswith("sdxl") and c.pooled is not None:
        s = e.sizes
        width, height = s.width or w * 8, s.height or h * 8
        score = s.aesthetic_score if s.aesthetic_score is not None else (2.5 if negative else 6.0)
        ids = size_ids(fam.name, width=width, height=height, crop=(s.crop_h, s.crop_w),
                       target=(s.target_height or height, s.target_width or width), aesthetic_score=score)
        y = adm_vector(c.pooled, ids)
    concat = c.concat
    if pipe.unet.cfg.in_channels == 9 and e.concat_latent is not None and e.concat_mask is not None:
        m = F.interpolate(e.concat_mask.reshape(-1, 1, *e.concat_mask.shape[-2:]).float(), size=(h, w),
                          mode="bilinear").round()
        z = (e.concat_latent.float() - fam.latent_shift) * fam.latent_scale
        if z.shape[-2:] != (h, w):
            z = F.interpolate(z, size=(h, w), mode="bilinear")
        B = latent.shape[0]
        concat = torch.cat([_to_batch(m, B), _to_batch(z, B)], dim=1).to(latent.device)
    elif pipe.unet.cfg.in_channels == 9 and concat is None:
        if denoise_mask is not None:
            concat = torch.cat([denoise_mask.round().to(latent), latent], dim=1)  # rounded, as ComfyUI does
        else:
            concat = torch.cat([torch.ones_like(latent[:, :1]), blank_latent(pipe, latent)], dim=1)
    return Conditioning(c.context, y, c.pooled, concat)


def blank_latent(pipe: Pipeline, like: Tensor) -> Tensor:
    """The U-Net-space latent of a blank (mid-grey, 0 in [-1, 1]) image, shaped like `like`: what an inpainting
    U-Net sees as "no image" (per channel, from this checkpoint's own VAE)."""
    if pipe.vae is None:
        return torch.zeros_like(like)
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, 64, 64, device=pipe.vae.device, dtype=pipe.vae.dtype)).mode().float()
    z = ((z - pipe.family.latent_shift) * pipe.family.latent_scale).mean(dim=(2, 3), keepdim=True)
    return z.to(like).expand_as(like).clone()


def regions(pipe: Pipeline, entries: Sequence[CondEntry], ms: ModelSampling, latent: Tensor, *,
            negative: bool = False, denoise_mask: Tensor | None = None) -> list[Region]:
    """Each entry resolved for `latent`: U-Net conditioning, area and mask in latent pixels, range as sigmas."""
    size = (latent.shape[-2], latent.shape[-1])
    return [resolve(unet_cond(pipe, e, latent, negative=negative, denoise_mask=denoise_mask), e.place, ms, size)
            for e in entries]
