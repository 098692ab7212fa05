"""Build random-weight checkpoints in the exact key layout of real SD files (for demos, tests and benchmarks).

Nothing is downloaded: the U-Net and VAE come from our models (whose names are the LDM keys), text
encoders from a shape table of the Hugging Face CLIP layout (mapped to OpenCLIP where the family uses it), and the
12 DDPM schedule buffers from SD's scaled-linear betas, as the original training code registered them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from athena.checkpoints.detect import (
    FAMILIES,
    META_FAMILY,
    META_UNET,
    UNET_PREFIX,
    VAE_PREFIX,
)
from athena.checkpoints.io import DictWeights
from athena.checkpoints.keymaps import open_clip
from athena.checkpoints.safetensors import Pending, save_file
from athena.checkpoints.text import HEAD_DIM, META_TEXT
from athena.models.clip import CLIP_L, OPENCLIP_H, CLIPTextConfig, CLIPTextModel
from athena.models.unet import UNet, UNetConfig
from athena.models.vae import AutoencoderKL, VAEConfig


def text_config(name: str, width: int, layers: int) -> CLIPTextConfig:
    """A CLIP text tower of `name`'s kind (CLIP-L: quick_gelu; OpenCLIP: gelu and a projection) at any size."""
    heads = width // HEAD_DIM if width % HEAD_DIM == 0 else max(1, width // 16)
    if name == "clip_l":
        return replace(CLIP_L, width=width, layers=layers, heads=heads, mlp_dim=4 * width)
    return replace(OPENCLIP_H, width=width, layers=layers, heads=heads, mlp_dim=4 * width, projection_dim=width)


def ddpm_buffers(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> dict[str, Tensor]:
    """The schedule buffers an LDM training checkpoint carries (computed in float64, stored in float32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    bufs = {"betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "log_one_minus_alphas_cumprod": (1 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(), "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
            "posterior_mean_coef2": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)}
    return {k: v.float() for k, v in bufs.items()}


def text_shapes(layout_prefix: str, cfg: CLIPTextConfig) -> dict[str, tuple[int, ...]]:
    """Text-encoder key -> shape in the layout its single-file prefix implies (HF CLIP, or OpenCLIP for `...model.`)."""
    meta = DictWeights(CLIPTextModel(cfg, device="meta").state_dict())
    if not layout_prefix.endswith(".model."):
        return {k: tuple(t.shape) for k, t in meta.tensors.items()}
    return {k: p.shape for k, p in open_clip.from_hf(meta).items()}


def random_checkpoint(path: Path, family: str, unet_cfg: UNetConfig, vae_cfg: VAEConfig | None,
                      text: dict[str, tuple[int, int]] | None = None, *, dtype: torch.dtype = torch.float16,
                      seed: int = 0, metadata: bool = False) -> Path:
    """Write a random-weight single file in `family`'s exact layout; `text` maps encoder name -> (width, layers).

    Tensors are drawn one at a time as they are written, so RAM stays at one tensor even for full-size models.
    """
    fam = FAMILIES[family]
    g = torch.Generator().manual_seed(seed)
    shapes = {UNET_PREFIX + k: tuple(v.shape) for k, v in UNet(unet_cfg, device="meta").state_dict().items()}
    if vae_cfg is not None:
        shapes.update({VAE_PREFIX + k: tuple(v.shape) for k, v in AutoencoderKL(vae_cfg, device="meta").state_dict().items()})
    text_configs = {name: text_config(name, *text[name]) for name, _ in fam.text_encoders if text and name in text}
    for name, prefix in fam.text_encoders:
        if name in text_configs:
            shapes.update({prefix + k: s for k, s in text_shapes(prefix, text_configs[name]).items()})

    def draw(key: str, shape: tuple[int, ...]) -> Tensor:
        if len(shape) == 1:  # norm scales near 1, biases near 0, as in trained weights
            return ((1.0 if key.endswith("weight") else 0.0) + torch.randn(shape, generator=g) * 0.02).to(dtype)
        return (torch.randn(shape, generator=g) / math.prod(shape[1:]) ** 0.5).to(dtype)

    def pending(key: str, shape: tuple[int, ...]) -> Pending:
        return Pending(dtype, shape, lambda: draw(key, shape))

    entries: dict[str, Tensor | Pending] = {k: pending(k, s) for k, s in shapes.items()}
    if family in ("sd1", "sd2"):
        entries.update(ddpm_buffers())
    for name, prefix in fam.text_encoders:
        if name in text_configs and not prefix.endswith(".model."):  # real CLIP-L files carry this int64 buffer
            entries[prefix + "text_model.embeddings.position_ids"] = torch.arange(text_configs[name].max_positions)[None]
    meta = {META_FAMILY: family}
    if text_configs:
        meta[META_TEXT] = json.dumps({n: asdict(c) for n, c in text_configs.items()})
    if metadata:
        meta[META_UNET] = unet_cfg.to_json()
    save_file(entries, path, meta)
    return path
