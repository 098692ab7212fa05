"""Cheap step previews: a linear latent -> RGB map, one matrix multiply per pixel instead of a VAE decode.

The map is fitted per VAE by least squares on a few decoded latents, so any latent format (SD, SDXL, a tiny test
VAE) gets its own map without tables of magic numbers; it is fitted once per pipeline and kept on it.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from athena.media.images import to_images
from athena.models.vae import AutoencoderKL


def fit_latent_rgb(vae: AutoencoderKL, scale: float, shift: float, *, size: int = 16, seed: int = 0) -> Tensor:
    """(C + 1, 3): RGB in [-1, 1] ~ [latent, 1] @ map, for the U-Net's (scaled) latents."""
    g = torch.Generator("cpu").manual_seed(seed)
    c, f = vae.cfg.z_channels, vae.cfg.downscale
    latent = torch.randn(4, c, size, size, generator=g)  # unit variance: the scale of the U-Net's latents
    with torch.no_grad():
        rgb = vae.decode((latent / scale + shift).to(vae.device, vae.dtype)).float().cpu()
    rgb = F.avg_pool2d(rgb, f)  # (4, 3, size, size): each latent pixel's colour
    a = torch.cat([latent, torch.ones(4, 1, size, size)], 1).permute(0, 2, 3, 1).reshape(-1, c + 1)
    b = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(a, b).solution


def preview(latent_rgb: Tensor, x0: Tensor, index: int = 0) -> Image.Image:
    """The preview of sample `index` of `x0` (B, C, h, w), at latent resolution."""
    z = x0[index].float().cpu()
    rgb = torch.einsum("chw,cd->dhw", torch.cat([z, torch.ones_like(z[:1])]), latent_rgb)
    return to_images(rgb[None])[0]
