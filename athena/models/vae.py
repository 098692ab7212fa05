"""The KL-regularised autoencoder (LDM `AutoencoderKL`), with module names equal to the checkpoint keys.

Images are in [-1, 1]; latents are unscaled (the family's scale/shift factor is applied by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.errors import ConfigError
from athena.models.config import from_dict
from athena.models.layers import (
    activation_dtype,
    conv1x1,
    conv3x3,
    group_norm,
    mixed,
    sdpa,
)

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    z_channels: int = 4
    use_quant_conv: bool = True

    def __post_init__(self) -> None:
        if self.ch % 32:
            raise ConfigError(f"VAEConfig.ch={self.ch} must be a multiple of 32 (GroupNorm(32))")
        if not self.ch_mult:
            raise ConfigError("VAEConfig.ch_mult must have at least one level")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        return from_dict(cls, d)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# --------------------------------------------------------------------------- layers


def norm(ch: int) -> nn.GroupNorm:
    return group_norm(ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), conv3x3(cin, cout)
        self.norm2, self.conv2 = norm(cout), conv3x3(cout, cout)
        self.nin_shortcut = conv1x1(cin, cout) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        # In place where the overwritten tensor is fresh: at 512 px a 256-channel activation is 268 MB, and the
        # decoder's peak is set by how many of them are alive at once.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs as in the checkpoints."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = norm(ch)
        self.q, self.k, self.v, self.proj_out = conv1x1(ch, ch), conv1x1(ch, ch), conv1x1(ch, ch), conv1x1(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2).contiguous()  # (B, HW, C)
        # The 1x1 convs applied as linears on contiguous tokens: SDPA's flash kernel needs a unit last stride.
        q, k, v = (mixed(F.linear, tokens, p.weight.flatten(1), p.bias)[:, None] for p in (self.q, self.k, self.v))
        h = mixed(F.linear, sdpa(q, k, v)[:, 0], self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = conv3x3(ch, ch, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in LDM


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = conv3x3(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class DownLevel(nn.Module):
    """`encoder.down.i`: resnet blocks, then an optional 2x downsample."""

    def __init__(self, cin: int, cout: int, n: int, downsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n))
        self.downsample = Downsample(cout) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """`decoder.up.i`: resnet blocks, then an optional 2x upsample."""

    def __init__(self, cin: int, cout: int, n: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n))
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = conv3x3(cfg.in_channels, cfg.ch)
        last = len(chs) - 1
        self.down = nn.ModuleList(
            DownLevel(cfg.ch if i == 0 else chs[i - 1], chs[i], cfg.num_res_blocks, downsample=i != last)
            for i in range(len(chs)))
        self.mid = Mid(chs[-1])
        self.norm_out = norm(chs[-1])
        self.conv_out = conv3x3(chs[-1], 2 * cfg.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h)), inplace=True))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = conv3x3(cfg.z_channels, chs[-1])
        self.mid = Mid(chs[-1])
        # `up.i` is stored in encoder order (up.0 is the full-resolution level) but runs last-to-first.
        self.up = nn.ModuleList(
            UpLevel(chs[i + 1] if i < len(chs) - 1 else chs[-1], chs[i], cfg.num_res_blocks + 1, upsample=i != 0)
            for i in range(len(chs)))
        self.norm_out = norm(chs[0])
        self.conv_out = conv3x3(chs[0], cfg.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class DiagonalGaussian:
    """The encoder's latent distribution N(mean, exp(logvar))."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device="cpu" if generator is None
                            else generator.device).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean


# --------------------------------------------------------------------------- model


class AutoencoderKL(nn.Module):
    """img (B,3,H,W) in [-1,1] <-> unscaled latent (B,z,H/f,W/f), f = 2**(levels-1)."""

    def __init__(self, cfg: VAEConfig, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        with torch.device(device or "cpu"):
            self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
            if cfg.use_quant_conv:
                self.quant_conv = conv1x1(2 * cfg.z_channels, 2 * cfg.z_channels)
                self.post_quant_conv = conv1x1(cfg.z_channels, cfg.z_channels)
        if dtype is not None:
            self.to(dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, img: Tensor) -> DiagonalGaussian:
        moments = self.encoder(img.to(activation_dtype(self.dtype, img.device)))
        if self.cfg.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments.to(self.dtype))

    def decode(self, z: Tensor) -> Tensor:
        z = z.to(activation_dtype(self.dtype, z.device))
        if self.cfg.use_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).to(self.dtype)

    def decode_tiled(self, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """`decode` over overlapping latent tiles (sizes in latent pixels), blended at the seams."""
        return tiled(self.decode, z, tile, overlap, scale=float(self.cfg.downscale))

    def encode_tiled(self, img: Tensor, tile: int = 512, overlap: int = 128) -> DiagonalGaussian:
        """`encode` over overlapping image tiles (sizes in image pixels); blends the distribution's moments."""
        f = self.cfg.downscale
        if tile % f or overlap % f:
            raise ConfigError(f"encode tile={tile} and overlap={overlap} must be multiples of the VAE's downscale {f}")

        def moments(x: Tensor) -> Tensor:
            d = self.encode(x)
            return torch.cat([d.mean, d.logvar], dim=1)

        return DiagonalGaussian(tiled(moments, img, tile, overlap, scale=1.0 / f, align=f))


# --------------------------------------------------------------------------- tiling


def _starts(n: int, tile: int, stride: int, align: int) -> list[int]:
    """Tile origins covering [0, n): every `stride`, the last one flush with the end, all multiples of `align`."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [(n - tile) // align * align]


def _ramp(n: int, lo: int, hi: int, device: torch.device) -> Tensor:
    """1-D blend weights: rising over `lo` samples, flat, falling over `hi` samples; never zero."""
    w = torch.ones(n, device=device)
    if lo:
        w[:lo] = torch.arange(1, lo + 1, device=device) / (lo + 1)
    if hi:
        w[n - hi:] = torch.minimum(w[n - hi:], torch.arange(hi, 0, -1, device=device) / (hi + 1))
    return w


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, scale: float, align: int = 1) -> Tensor:
    """Apply `fn` to overlapping `tile`-sized windows of x (B,C,H,W) and blend the outputs linearly at the seams.

    `fn` maps a window to an output `scale` times its size (8 for decode, 1/8 for encode). Memory is bounded by
    one tile's activations instead of the whole image's.
    """
    if overlap >= tile:
        raise ConfigError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    H, W = x.shape[-2:]
    ys, xs = _starts(H, tile, tile - overlap, align), _starts(W, tile, tile - overlap, align)
    out = weight = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            t = fn(x[..., y0:y0 + tile, x0:x0 + tile]).float()
            oy, ox, (th, tw) = int(y0 * scale), int(x0 * scale), t.shape[-2:]
            if out is None:
                out = torch.zeros(*t.shape[:2], int(H * scale), int(W * scale), device=t.device)
                weight = torch.zeros(int(H * scale), int(W * scale), device=t.device)
            assert weight is not None
            # Blend only where this tile overlaps a neighbour; image borders keep full weight.
            top = int((ys[i - 1] + tile - y0) * scale) if i else 0
            bottom = int((y0 + tile - ys[i + 1]) * scale) if i + 1 < len(ys) else 0
            left = int((xs[j - 1] + tile - x0) * scale) if j else 0
            right = int((x0 + tile - xs[j + 1]) * scale) if j + 1 < len(xs) else 0
            w = _ramp(th, top, bottom, t.device)[:, None] * _ramp(tw, left, right, t.device)[None, :]
            out[..., oy:oy + th, ox:ox + tw] += t * w
            weight[oy:oy + th, ox:ox + tw] += w
    assert out is not None and weight is not None
    return (out / weight).to(x.dtype)


# --------------------------------------------------------------------------- presets

SD_VAE = VAEConfig()
TINY_VAE = replace(SD_VAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)
VAE_PRESETS: dict[str, VAEConfig] = {"sd": SD_VAE, "tiny": TINY_VAE}
