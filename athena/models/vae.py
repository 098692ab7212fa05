"""The KL-regularised autoencoder (LDM `AutoencoderKL`), with module names equal to the checkpoint keys.

Images are in [-1, 1]; latents are unscaled (the family's scale/shift factor is applied by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.errors import ConfigError
from athena.models.layers import conv1x1, conv3x3, group_norm, sdpa

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
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs as in the checkpoints."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = norm(ch)
        self.q, self.k, self.v, self.proj_out = conv1x1(ch, ch), conv1x1(ch, ch), conv1x1(ch, ch), conv1x1(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (p(h).flatten(2).transpose(1, 2)[:, None] for p in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = sdpa(q, k, v)[:, 0].transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


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
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


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
        return self.conv_out(F.silu(self.norm_out(h)))


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
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode(self, img: Tensor) -> DiagonalGaussian:
        moments = self.encoder(img.to(self.dtype))
        if self.cfg.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: Tensor) -> Tensor:
        z = z.to(self.dtype)
        if self.cfg.use_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# --------------------------------------------------------------------------- presets

SD_VAE = VAEConfig()
TINY_VAE = replace(SD_VAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)
VAE_PRESETS: dict[str, VAEConfig] = {"sd": SD_VAE, "tiny": TINY_VAE}
