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


# --------------------------------------------------------------------------- CPU low-precision compute

LOW_PRECISION = (torch.bfloat16, torch.float16)


def cpu_fp32_faster(x: Tensor, weight_numel: int = 0) -> bool:
    """Whether a bf16/fp16 op on this CPU runs faster computed in fp32 from the low-precision tensors.

    Without AMX, oneDNN's bf16/fp16 GEMMs and convolutions are ~1.5x slower than fp32 (AVX512-BF16 only
    helps dot products). Casting to fp32 costs memory traffic proportional to the tensors, so it pays off
    once the activations are at least a tenth of the weights (measured per shape for the SD U-Net);
    weight-bound layers (8x8 latents, 1280+ channels) stay in low precision. GPUs and AMX CPUs never upcast.
    """
    return (x.device.type == "cpu" and x.dtype in LOW_PRECISION and x.numel() * 10 >= weight_numel
            and not torch.cpu._is_amx_tile_supported())


class Linear(nn.Linear):
    """nn.Linear (same keys) that computes in fp32 where `cpu_fp32_faster` says so; weights stay as stored."""

    def forward(self, x: Tensor) -> Tensor:
        if cpu_fp32_faster(x, self.weight.numel()):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same keys) that computes in fp32 where `cpu_fp32_faster` says so; weights stay as stored."""

    def forward(self, x: Tensor) -> Tensor:
        if cpu_fp32_faster(x, self.weight.numel()):
            bias = None if self.bias is None else self.bias.float()
            return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)
        return self._conv_forward(x, self.weight, self.bias)


# --------------------------------------------------------------------------- attention

AttnImpl = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) each (B, heads, T, d) -> (B, heads, T, d)


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention through PyTorch's fused kernel.

    On a CPU without AMX the fused kernel is ~2.2x slower in bf16 than in fp32 (at 4096 tokens, head dim
    40: the largest single cost of an SD1.5 step), so there it runs in fp32 and casts back: faster and
    more accurate. Accelerators use the low-precision kernel as is.
    """
    if cpu_fp32_faster(q):
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


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=padding)


def conv1x1(cin: int, cout: int) -> Conv2d:
    return Conv2d(cin, cout, 1)
