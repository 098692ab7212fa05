"""Primitives shared by the model families: timestep embedding, attention, norms, convs."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- embeddings


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) float timesteps -> (B, dim), cos half first (LDM convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# --------------------------------------------------------------------------- attention

AttnImpl = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) each (B, heads, T, d) -> (B, heads, T, d)


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention through PyTorch's fused kernel.

    On the CPU the fused kernel is about 2x slower in bf16/fp16 than in fp32 (it has no
    low-precision fast path without AMX), so there we run it in fp32 and cast back: faster and
    more accurate. On accelerators the low-precision kernel is used as is.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)."""
    B, T, _ = x.shape
    return x.view(B, T, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, T, d) -> (B, T, heads*d)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


# --------------------------------------------------------------------------- norms and convs


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps)


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=padding)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)
