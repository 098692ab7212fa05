"""`generate`: prompt (+ init image, mask) -> images, over one frozen `GenerateRequest`.

txt2img starts from pure noise; img2img from the encoded init image noised to `strength`; inpainting keeps the
unmasked latent (or feeds a 9-channel inpainting U-Net its mask and masked image); outpainting pads the image and
inpaints the new border; the hires fix samples, upscales (in latent or pixel space) and runs img2img on the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from athena.cancel import CancelToken
from athena.diffusion.progress import Step
from athena.diffusion.samplers import SAMPLERS
from athena.diffusion.schedules import SCHEDULERS
from athena.errors import ConfigError
from athena.media.images import (
    open_image,
    pad_for_outpaint,
    resize,
    to_images,
    to_mask,
    to_tensor,
)
from athena.pipelines.conditioning import Conditioning
from athena.pipelines.pipeline import Pipeline
from athena.pipelines.sample import latent_mask, sample_latent

DEFAULT_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sdxl_refiner": 1024}


@dataclass(frozen=True)
class Hires:
    """The hires fix: after the first pass, upscale by `scale` and run img2img at `strength` for `steps`
    (0 = the request's steps). `upscale` "latent" resizes the latent (nearest-exact, as ComfyUI's default);
    "pixel" decodes, resizes with Lanczos, and encodes again."""

    scale: float = 2.0
    strength: float = 0.5
    steps: int = 0
    upscale: Literal["latent", "pixel"] = "latent"

    def __post_init__(self) -> None:
        if not 1.0 <= self.scale <= 8.0:
            raise ConfigError(f"hires scale must be in [1, 8], got {self.scale}")
        if not 0 < self.strength <= 1:
            raise ConfigError(f"hires strength must be in (0, 1], got {self.strength}")
        if self.upscale not in ("latent", "pixel"):
            raise ConfigError(f"hires upscale must be 'latent' or 'pixel', got {self.upscale!r}")


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: the CLI's flags, the server's JSON body and the nodes' input."""

    prompt: str
    negative: str = ""
    width: int | None = None  # None: the init image's size, else the family's native size
    height: int | None = None
    steps: int = 20
    sampler: str = "euler"
    scheduler: str = "normal"
    cfg: float = 7.0
    seed: int = 0
    batch: int = 1
    init_image: str | None = None  # path of the img2img / inpainting source
    strength: float = 1.0  # img2img denoise: 1 repaints everything
    mask: str | None = None  # path of the inpainting mask (white = repaint)
    outpaint: tuple[int, int, int, int] | None = None  # pixels added (left, top, right, bottom)
    hires: Hires | None = None
    clip_skip: int | None = None
    cfg_rescale: float = 0.0

    def __post_init__(self) -> None:
        names: dict[str, tuple[str, list[str]]] = {"sampler": (self.sampler, list(SAMPLERS)),
                                                   "scheduler": (self.scheduler, list(SCHEDULERS))}
        for what, (value, valid) in names.items():
            if value not in valid:
                raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")
        for what, size in (("width", self.width), ("height", self.height)):
            if size is not None and (size < 8 or size % 8):
                raise ConfigError(f"{what}={size} is not a positive multiple of 8; try {max(8, round(size / 8) * 8)}")
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: use at least 1 step")
        if not 0 < self.strength <= 1:
            raise ConfigError(f"strength={self.strength} is outside (0, 1]; 1 repaints fully, 0.3 changes a little")
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch}: make at least 1 image")
        if not 0 <= self.seed < 2 ** 64:
            raise ConfigError(f"seed={self.seed} must be in [0, 2^64)")
        if self.cfg < 0:
            raise ConfigError(f"cfg={self.cfg} must be >= 0")
        if (self.mask is not None or self.outpaint is not None) and self.init_image is None:
            raise ConfigError("a mask or outpainting needs an init image; pass --init-image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerateRequest:
        """Parse JSON (a PNG's request, an HTTP body), rejecting unknown fields by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown request field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        d = dict(d)
        if d.get("hires") is not None:
            d["hires"] = Hires(**d["hires"])
        if d.get("outpaint") is not None:
            d["outpaint"] = tuple(d["outpaint"])
        return cls(**d)


@dataclass(frozen=True)
class Progress:
    """A sampling step of a request: `step` of `total` in this pass (`stage` "base" or "hires"), the sampler's
    step (index, sigma, x, x0), and `preview()`: the step's x0 as a cheap RGB image (a linear latent-to-RGB map
    fitted to the pipeline's VAE, no decode), made only when asked for."""

    step: int
    total: int
    stage: str
    sample: Step = field(repr=False)
    pipe: Pipeline | None = field(default=None, repr=False, compare=False)

    def preview(self, index: int = 0) -> Image.Image:
        if self.pipe is None:
            raise ConfigError("this progress report carries no pipeline to preview with")
        return self.pipe.preview(self.sample.x0, index)


ProgressFn = Callable[[Progress], None]


# ---------------------------------------------------------------- VAE helpers

def encode(pipe: Pipeline, img: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> the U-Net's latent (the distribution's mode, scaled), as ComfyUI's VAEEncode."""
    vae = _vae(pipe)
    with torch.no_grad():
        z = vae.encode(img.to(vae.device, vae.dtype)).mode().float()
    return (z - pipe.family.latent_shift) * pipe.family.latent_scale


def decode(pipe: Pipeline, latent: Tensor) -> Tensor:
    """The U-Net's latent -> (B, 3, H, W) in [-1, 1]."""
    vae = _vae(pipe)
    with torch.no_grad():
        z = latent / pipe.family.latent_scale + pipe.family.latent_shift
        return vae.decode(z.to(vae.device, vae.dtype)).float()


def _vae(pipe: Pipeline) -> Any:
    if pipe.vae is None:
        raise ConfigError(f"{pipe.path.name if pipe.path else 'this model'} has no VAE; load a full checkpoint")
    return pipe.vae


# ---------------------------------------------------------------- generation

def generate(pipe: Pipeline, prompt: str, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None,
             **options: Any) -> list[Image.Image]:
    """Images for `prompt`; `options` are `GenerateRequest` fields."""
    return generate_request(pipe, GenerateRequest(prompt, **options), progress=progress, cancel=cancel)


def generate_request(pipe: Pipeline, req: GenerateRequest, *, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> list[Image.Image]:
    """The images of `req` (B = req.batch)."""
    return to_images(generate_pixels(pipe, req, progress=progress, cancel=cancel))


def generate_pixels(pipe: Pipeline, req: GenerateRequest, *, progress: ProgressFn | None = None,
                    cancel: CancelToken | None = None) -> Tensor:
    """The decoded images of `req`, (B, 3, H, W) in [-1, 1] before rounding to 8 bits."""
    init, mask = _inputs(req)
    width, height = _size(pipe, req, init)
    positive = pipe.encode_prompt(req.prompt, clip_skip=req.clip_skip, width=width, height=height)
    negative = pipe.encode_prompt(req.negative, clip_skip=req.clip_skip, width=width, height=height)
    f = pipe.vae.cfg.downscale if pipe.vae is not None else 8
    shape = (req.batch, pipe.unet.cfg.out_channels, height // f, width // f)
    latent, lmask, strength = torch.zeros(shape, device=pipe.device), None, 1.0
    pixels = pmask = None
    if init is not None:
        pixels = to_tensor(resize(init, width, height)).to(pipe.device)
        latent = encode(pipe, pixels).expand(req.batch, -1, -1, -1).contiguous()
        strength = req.strength
        if mask is not None:
            pmask = F.interpolate(mask, size=(height, width), mode="bilinear")
            lmask = latent_mask(pmask, latent)
            if pipe.unet.cfg.in_channels == 9:  # a dedicated inpainting U-Net sees the mask and the masked image
                positive, negative = (_with_inpaint_concat(pipe, c, pixels, pmask, latent) for c in (positive, negative))
                lmask = None
    if pipe.unet.cfg.in_channels == 9 and positive.concat is None:
        raise ConfigError("this is an inpainting model (9 input channels); pass --init-image and --mask")

    def run(lat: Tensor, steps: int, denoise: float, stage: str, m: Tensor | None) -> Tensor:
        def report(s: Step) -> None:
            if progress is not None:
                progress(Progress(s.i + 1, steps, stage, s, pipe))
        return sample_latent(pipe.unet, positive, negative, lat, seed=req.seed, steps=steps, sampler=req.sampler,
                             scheduler=req.scheduler, guidance=req.cfg, denoise=denoise, mask=m,
                             cfg_rescale=req.cfg_rescale, callback=report, cancel=cancel)

    with torch.no_grad():
        latent = run(latent, req.steps, strength, "base", lmask)
        if req.hires is not None:
            latent = _hires(pipe, req, latent, run)
        out = decode(pipe, latent)
    if pmask is not None and pixels is not None and out.shape[-2:] == pixels.shape[-2:]:
        # Outside the mask the original pixels come back exactly (A1111's overlay), not their VAE round trip.
        m = pmask.to(out)
        out = out * m + pixels.to(out) * (1 - m)
    return out


def _with_inpaint_concat(pipe: Pipeline, c: Conditioning, pixels: Tensor, pmask: Tensor, latent: Tensor) -> Conditioning:
    keep = (pmask < 0.5).to(pixels)  # masked pixels become grey (0 in [-1, 1]), as diffusers and ComfyUI do
    masked_latent = encode(pipe, pixels * keep).expand(latent.shape[0], -1, -1, -1)
    small = F.interpolate(pmask.to(latent), size=latent.shape[-2:], mode="bilinear").expand(latent.shape[0], -1, -1, -1)
    return dataclasses.replace(c, concat=torch.cat([small, masked_latent], dim=1))


def _hires(pipe: Pipeline, req: GenerateRequest, latent: Tensor,
           run: Callable[[Tensor, int, float, str, Tensor | None], Tensor]) -> Tensor:
    hires = req.hires
    assert hires is not None
    f = pipe.vae.cfg.downscale if pipe.vae is not None else 8
    # the target in pixels is int(size * scale), floored to the latent grid, as A1111's hires fix sizes it
    h, w = (int(s * f * hires.scale) // f for s in latent.shape[-2:])
    if hires.upscale == "latent":
        latent = F.interpolate(latent, size=(h, w), mode="nearest-exact")
    else:
        images = [im.resize((w * f, h * f), Image.Resampling.LANCZOS) for im in to_images(decode(pipe, latent))]
        latent = encode(pipe, torch.cat([to_tensor(im) for im in images]).to(pipe.device))
    return run(latent, hires.steps or req.steps, hires.strength, "hires", None)


def _inputs(req: GenerateRequest) -> tuple[Image.Image | None, Tensor | None]:
    """The init image (padded when outpainting) and the pixel mask (1, 1, H, W)."""
    if req.init_image is None:
        return None, None
    init = open_image(req.init_image).convert("RGB")
    mask = to_mask(open_image(req.mask)) if req.mask is not None else None
    if mask is not None and mask.shape[-2:] != (init.height, init.width):
        mask = F.interpolate(mask, size=(init.height, init.width), mode="bilinear")
    if req.outpaint is not None:
        init, pad_mask = pad_for_outpaint(init, *req.outpaint)
        if mask is not None:
            left, top = req.outpaint[0], req.outpaint[1]
            pad_mask[..., top:top + mask.shape[-2], left:left + mask.shape[-1]] = torch.maximum(
                mask, pad_mask[..., top:top + mask.shape[-2], left:left + mask.shape[-1]])
        mask = pad_mask
    return init, mask


def _size(pipe: Pipeline, req: GenerateRequest, init: Image.Image | None) -> tuple[int, int]:
    if init is not None and req.width is None and req.height is None:
        w, h = init.size
        return max(8, w // 8 * 8), max(8, h // 8 * 8)
    native = pipe.resolution or DEFAULT_SIZE.get(pipe.family.name, 512)
    return req.width or native, req.height or native


# ---------------------------------------------------------------- metadata

A1111_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
                  "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive",
                  "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M",
                  "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC",
                  "lcm": "LCM", "ipndm": "iPNDM"}


def a1111_parameters(req: GenerateRequest, *, width: int, height: int, seed: int, model: str) -> str:
    """A1111's `parameters` text: prompt, negative, then `Key: value` pairs."""
    sched = {"karras": " Karras", "exponential": " Exponential"}.get(req.scheduler, "")
    pairs = [("Steps", req.steps), ("Sampler", A1111_SAMPLERS.get(req.sampler, req.sampler) + sched),
             ("Schedule type", req.scheduler), ("CFG scale", req.cfg), ("Seed", seed), ("Size", f"{width}x{height}"),
             ("Model", model)]
    if req.init_image is not None:
        pairs.append(("Denoising strength", req.strength))
    if req.hires is not None:
        pairs += [("Hires upscale", req.hires.scale), ("Hires steps", req.hires.steps or req.steps),
                  ("Hires upscaler", req.hires.upscale), ("Denoising strength", req.hires.strength)]
    if req.clip_skip is not None:
        pairs.append(("Clip skip", -req.clip_skip))
    text = req.prompt + (f"\nNegative prompt: {req.negative}" if req.negative else "")
    return text + "\n" + ", ".join(f"{k}: {v}" for k, v in pairs)


def image_path(out: Path, index: int, batch: int) -> Path:
    """A folder gets athena-<index + 1>.png; a .png path is used as it is for one image, and as
    <stem>-1.png, <stem>-2.png, ... for a batch."""
    if out.suffix.lower() != ".png":
        return out / f"athena-{index + 1:05d}.png"
    return out if batch == 1 else out.with_name(f"{out.stem}-{index + 1}{out.suffix}")
