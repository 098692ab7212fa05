"""Primitives shared by the model families: timestep embedding, attention, norms, convs."""

from __future__ import annotations

import math
from collections.abc import Callable

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


# --------------------------------------------------------------------------- mixed precision

LOW_PRECISION = (torch.bfloat16, torch.float16)


def activation_dtype(weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype activations flow in for weights stored in `weight_dtype` on `device`.

    On a CPU without AMX, oneDNN's bf16/fp16 GEMMs and convolutions are ~1.5x slower than fp32 and the
    fused attention kernel ~2.2x slower (AVX512-BF16 only speeds up dot products). There, activations
    flow in fp32 while weights stay in low precision; each layer casts the smaller side (see `mixed`).
    GPUs and AMX CPUs run in the weights' dtype.
    """
    if device.type == "cpu" and weight_dtype in LOW_PRECISION and not torch.cpu._is_amx_tile_supported():
        return torch.float32
    return weight_dtype


def mixed(op: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Run `op(x, w, b)` when x and w may differ in dtype, casting whichever side is cheaper.

    Casting costs memory traffic proportional to the cast tensor. Measured on the SD U-Net's shapes,
    computing in the activations' fp32 wins once they are at least a tenth of the weight's size;
    weight-bound layers (8x8 latents, 1280+ channels) are faster in the weights' low precision.
    """
    if x.dtype == w.dtype:
        return op(x, w, b)
    dt = x.dtype if x.numel() * 10 >= w.numel() else w.dtype
    return op(x.to(dt), w.to(dt), None if b is None else b.to(dt)).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same keys) whose weights may be stored in another dtype than the activations."""

    def forward(self, x: Tensor) -> Tensor:
        return mixed(F.linear, x, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same keys) whose weights may be stored in another dtype than the activations."""

    def forward(self, x: Tensor) -> Tensor:
        return mixed(self._conv_forward, x, self.weight, self.bias)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose (tiny) affine parameters follow the activations' dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose (tiny) affine parameters follow the activations' dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


# --------------------------------------------------------------------------- attention

AttnImpl = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) each (B, heads, T, d) -> (B, heads, T, d)


def sdpa(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """Scaled dot-product attention through PyTorch's fused kernel.

    On a CPU without AMX the fused kernel is ~2.2x slower in bf16 than in fp32 (at 4096 tokens, head dim
    40: the largest single cost of an SD1.5 step), so there it runs in fp32 and casts back: faster and
    more accurate. Accelerators use the low-precision kernel as is.
    """
    if activation_dtype(q.dtype, q.device) != q.dtype:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)."""
    B, T, _ = x.shape
    return x.view(B, T, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, T, d) -> (B, T, heads*d)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


# --------------------------------------------------------------------------- norms and convs


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> GroupNorm:
    return GroupNorm(groups, channels, eps=eps)


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=padding)


def conv1x1(cin: int, cout: int) -> Conv2d:
    return Conv2d(cin, cout, 1)
