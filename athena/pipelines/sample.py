"""Sampling a latent with a loaded pipeline: noise from the seed, the schedule, guidance, the inpainting mask.

Latents here are in the U-Net's space (the VAE latent times the family's scale). This is the piece that the
KSampler node, `generate` and the server share.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from athena.cancel import CancelToken
from athena.diffusion.denoisers import ModelSampling, Net, discrete_sampling
from athena.diffusion.guidance import CFGDenoiser, cfg, unconditional_pair
from athena.diffusion.progress import Denoiser, Step
from athena.diffusion.samplers import DISCARD_PENULTIMATE, SAMPLERS, Sampler, for_model
from athena.diffusion.schedules import sigmas_for
from athena.errors import ConfigError
from athena.models.unet import UNet
from athena.pipelines.conditioning import Conditioning


def model_sampling(unet: UNet) -> ModelSampling:
    """SD1.x, SD2.x and SDXL: SD's discrete schedule, with the checkpoint's prediction type."""
    return discrete_sampling(unet.cfg.prediction)


def unet_net(unet: UNet) -> Net:
    """The U-Net as `net(x_in, t, cond)`: float32 in and out, the model's dtype inside."""
    def net(x_in: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        if cond.concat is not None:
            x_in = torch.cat([x_in, cond.concat.to(x_in)], dim=1)
        elif unet.cfg.in_channels != x_in.shape[1]:
            raise ConfigError(f"this U-Net takes {unet.cfg.in_channels} input channels (an inpainting model); "
                              f"give it an init image and a mask")
        y = cond.y.to(x_in.device) if cond.y is not None else None
        return unet(x_in, t.to(x_in.device), cond.context.to(x_in.device), y).float()
    return net


def noise_for(shape: tuple[int, ...], seed: int) -> Tensor:
    """ComfyUI's and diffusers' initial noise: one CPU draw for the whole batch, so a seed means the same image
    on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def schedule(ms: ModelSampling, sampler: str, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """The sigmas ComfyUI's KSampler uses for these settings."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sigmas_for(scheduler, ms, steps, denoise=denoise, discard_penultimate=sampler in DISCARD_PENULTIMATE)


def latent_mask(mask: Tensor, latent: Tensor) -> Tensor:
    """A pixel mask (1, 1, H, W) resized to the latent (B, 1, h, w), bilinear as ComfyUI's noise mask."""
    m = F.interpolate(mask.float(), size=latent.shape[-2:], mode="bilinear")
    return m.expand(latent.shape[0], 1, *latent.shape[-2:]).to(latent.device)


class NoiseMasked:
    """Inpainting by noise mask (ComfyUI's SetLatentNoiseMask): outside the mask the sample is replaced by the
    original latent noised to the current sigma, and the estimate by the original latent. `pair` passes a guided
    denoiser's unconditional estimate on unblended, as ComfyUI's CFG++ hook sees it, so CFG++ works in a mask."""

    def __init__(self, denoise: Denoiser, ms: ModelSampling, latent: Tensor, noise: Tensor, mask: Tensor) -> None:
        self.denoise, self.ms, self.latent, self.noise, self.mask = denoise, ms, latent, noise, mask
        self._pair = unconditional_pair(denoise)

    def _input(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x * self.mask + self.ms.noise(self.latent, self.noise, sigma) * (1 - self.mask)

    def _blend(self, x0: Tensor) -> Tensor:
        return x0 * self.mask + self.latent * (1 - self.mask)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self._blend(self.denoise(self._input(x, sigma), sigma))

    def pair(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x0, x0_u = self._pair(self._input(x, sigma), sigma)
        return self._blend(x0), x0_u


def sample_latent(unet: UNet, positive: Conditioning, negative: Conditioning, latent: Tensor, *, seed: int,
                  steps: int, sampler: str = "euler", scheduler: str = "normal", guidance: float = 7.0,
                  denoise: float = 1.0, mask: Tensor | None = None, cfg_rescale: float = 0.0,
                  callback: Callable[[Step], None] | None = None, cancel: CancelToken | None = None,
                  sampling: ModelSampling | None = None) -> Tensor:
    """Denoise `latent` (B, C, h, w; zeros for txt2img) from the noise of `seed`. `denoise` < 1 starts part-way
    (img2img strength); `mask` (B, 1, h, w, 1 = repaint) keeps the rest of `latent`. `sampling` replaces the
    checkpoint's schedule (a model trained on another one, e.g. flow matching)."""
    ms = sampling or model_sampling(unet)
    sigmas = schedule(ms, sampler, scheduler, steps, denoise).to(latent.device)
    noise = noise_for(tuple(latent.shape), seed).to(latent.device)
    batch = latent.shape[0]
    guided: CFGDenoiser = cfg(ms.model(unet_net(unet)), positive.expand(batch), negative.expand(batch), guidance,
                              rescale=cfg_rescale)
    return run_sampler(SAMPLERS[sampler], guided, ms, latent, noise, sigmas, seed=seed, mask=mask,
                       callback=callback, cancel=cancel)


def run_sampler(sampler: Sampler, guided: Denoiser, ms: ModelSampling, latent: Tensor, noise: Tensor, sigmas: Tensor,
                *, seed: int, mask: Tensor | None = None, callback: Callable[[Step], None] | None = None,
                cancel: CancelToken | None = None) -> Tensor:
    """Run `sampler` with a prepared guided denoiser from `latent` noised by `noise` to `sigmas[0]` (zeros `noise`
    for none): the part that `sample_latent` and the graph's samplers share."""
    batch = latent.shape[0]
    start = sigmas[0].expand(batch)
    max_denoise = math.isclose(float(sigmas[0]), ms.sigma_max, rel_tol=1e-5) or float(sigmas[0]) > ms.sigma_max
    x = ms.noise(latent, noise, start, max_denoise=max_denoise)
    denoiser: Denoiser = guided if mask is None else NoiseMasked(guided, ms, latent, noise, mask)

    def step(s: Step) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if callback is not None:
            callback(s)

    # ComfyUI seeds the samplers' own noise afresh from the same seed (a separate generator from the initial noise).
    x = for_model(sampler, ms)(denoiser, x, sigmas, generator=torch.Generator("cpu").manual_seed(seed), callback=step)
    x = ms.inverse_noise(x, sigmas[-1].expand(batch))
    if mask is not None:
        x = x * mask + latent * (1 - mask)
    return x
