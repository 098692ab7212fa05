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
    flow in fp32 while weights stay in low precision; each layer computes in the faster dtype (see `mixed`).
    GPUs and AMX CPUs run in the weights' dtype.
    """
    if device.type == "cpu" and weight_dtype in LOW_PRECISION and not torch.cpu._is_amx_tile_supported():
        return torch.float32
    return weight_dtype


def mixed(op: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Tensor, w: Tensor, b: Tensor | None,
          uses: int | None = None) -> Tensor:
    """Run `op(x, w, b)` when x and w may differ in dtype, in whichever dtype is faster.

    `uses` is how often each weight is applied: a Linear's tokens (the default) or a convolution's output
    pixels. Computing in fp32 costs a cast of the weight (about 1 ns per element, mostly page faults of the
    fresh buffer) and then runs at the fp32 rate, ~1.5-2x the bf16 rate on a CPU without AMX; so fp32 wins
    once a weight is used often enough. Measured on every layer shape of SD1.x at 256 and 512 px (batch 2):
    from 128 uses up for GEMMs (Linear, 1x1 conv), from 256 up for larger kernels; below that, the
    weight-bound layers (8x8 latents, 1280 channels) are faster in the weights' low precision.
    """
    if x.dtype == w.dtype:
        return op(x, w, b)
    uses = x.numel() // w.shape[1] if uses is None else uses
    dt = x.dtype if uses >= (128 if math.prod(w.shape[2:]) == 1 else 256) else w.dtype
    return op(x.to(dt), w.to(dt), None if b is None else b.to(dt)).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same keys) whose weights may be stored in another dtype than the activations."""

    def forward(self, x: Tensor) -> Tensor:
        return mixed(F.linear, x, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same keys) whose weights may be stored in another dtype than the activations.

    On the CPU in fp32, a wide convolution over few pixels runs as im2col and one GEMM (`gemm_conv2d`). Those
    layers are weight-bound, and there oneDNN's direct convolution reaches a half to a third of MKL's GEMM
    rate: at batch 2 on 2 AVX-512 cores, 1280->1280 channels take 29.5 ms direct vs 15.2 ms as a GEMM at 8x8
    and 21.7 vs 7.3 ms at 4x4 (the 8x8 and 4x4 levels of SD1.x at 256 and 512 px); 2560->1280 at 16x16 takes
    128 vs 113 ms. With fewer channels, or more than 512 output pixels, the direct convolution wins and runs.
    `benchmarks/unet.py --conv` measures both on this machine's shapes.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype:
            return self._conv(x, self.weight, self.bias)
        Ho, Wo = x.shape[2:] if isinstance(self.padding, str) else conv_out_size(x, self.weight, self.stride,
                                                                                  self.padding, self.dilation)
        return mixed(self._conv, x, self.weight, self.bias, uses=x.shape[0] * Ho * Wo)

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        padding = self.padding
        if not isinstance(padding, str) and self._gemm_wins(x, w, padding):
            return gemm_conv2d(x, w, b, self.stride, padding, self.dilation)
        return self._conv_forward(x, w, b)

    def _gemm_wins(self, x: Tensor, w: Tensor, padding: tuple[int, ...]) -> bool:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.groups != 1 or self.padding_mode != "zeros"
                or w.shape[2] * w.shape[3] == 1 or min(w.shape[0], w.shape[1]) < 1024):
            return False
        Ho, Wo = conv_out_size(x, w, self.stride, padding, self.dilation)
        return x.shape[0] * Ho * Wo <= 512


def conv_out_size(x: Tensor, w: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                  dilation: tuple[int, ...]) -> tuple[int, int]:
    """(H_out, W_out) of a convolution of weight `w` over `x` (B, C, H, W) with integer padding."""
    Ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (w.shape[2] - 1) - 1) // stride[0] + 1
    Wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (w.shape[3] - 1) - 1) // stride[1] + 1
    return Ho, Wo


def gemm_conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, ...], padding: tuple[int, ...],
                dilation: tuple[int, ...]) -> Tensor:
    """F.conv2d (groups 1, zero padding) as im2col and one matrix product: (O, C*kh*kw) @ (B, C*kh*kw, pixels)."""
    Ho, Wo = conv_out_size(x, w, stride, padding, dilation)
    out = torch.matmul(w.reshape(w.shape[0], -1), F.unfold(x, w.shape[2:], dilation, padding, stride))
    if b is not None:
        out += b[:, None]
    return out.view(x.shape[0], w.shape[0], Ho, Wo)


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
