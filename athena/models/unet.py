"""The SD1.x / SD2.x / SDXL U-Net, with module names equal to the original LDM/SGM checkpoint keys.

`UNet(cfg).state_dict()` keys are the real files' keys minus `model.diffusion_model.`, so loading
an original single file is a prefix strip and a strict `load_state_dict`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.errors import ConfigError
from athena.models.config import from_dict
from athena.models.layers import (
    AttnImpl,
    LayerNorm,
    Linear,
    activation_dtype,
    conv1x1,
    conv3x3,
    group_norm,
    merge_heads,
    sdpa,
    split_heads,
    timestep_embedding,
)

Prediction = Literal["eps", "v"]

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)  # per level; 0 = no attention at that level
    transformer_depth_middle: int = 1
    num_heads: int | None = 8  # exactly one of num_heads / head_dim is set
    head_dim: int | None = None
    context_dim: int = 768
    use_linear_in_transformer: bool = False  # SD2/SDXL: Linear proj_in/out; SD1: 1x1 convs
    adm_in_channels: int | None = None  # SDXL: pooled text + size conditioning vector `y`
    prediction: Prediction = "eps"  # what the network predicts; not stored in the weights

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if len(self.transformer_depth) != levels:
            raise ConfigError(
                f"UNetConfig.transformer_depth={self.transformer_depth} has {len(self.transformer_depth)} entries "
                f"but channel_mult={self.channel_mult} has {levels} levels; give one depth per level")
        if (self.num_heads is None) == (self.head_dim is None):
            raise ConfigError(f"UNetConfig needs exactly one of num_heads={self.num_heads} / head_dim={self.head_dim}")
        if self.model_channels % 32:
            raise ConfigError(f"UNetConfig.model_channels={self.model_channels} must be a multiple of 32 (GroupNorm(32))")
        if self.transformer_depth_middle < 1:
            raise ConfigError(f"UNetConfig.transformer_depth_middle={self.transformer_depth_middle} must be >= 1")
        if self.prediction not in ("eps", "v"):
            raise ConfigError(f"UNetConfig.prediction={self.prediction!r} must be 'eps' or 'v'")
        for mult, depth in zip(self.channel_mult, self.transformer_depth):
            if depth:
                self.heads_for(self.model_channels * mult)
        self.heads_for(self.model_channels * self.channel_mult[-1])

    def heads_for(self, channels: int) -> int:
        """Attention heads at a level of `channels` width."""
        if self.num_heads is not None:
            if channels % self.num_heads:
                raise ConfigError(f"UNetConfig: width {channels} is not divisible by num_heads={self.num_heads}")
            return self.num_heads
        assert self.head_dim is not None
        if channels % self.head_dim:
            raise ConfigError(f"UNetConfig: width {channels} is not divisible by head_dim={self.head_dim}")
        return channels // self.head_dim

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        return from_dict(cls, d)


# --------------------------------------------------------------------------- layers


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        # In-place SiLU and sums: every tensor they overwrite is fresh and not needed by autograd. They save
        # allocations; on sd15 at 256 and 512 px no change in time was measurable.
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(inplace=True), conv3x3(channels, out_channels))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(inplace=True), nn.Dropout(0.0),
                                        conv3x3(out_channels, out_channels))
        self.skip_connection = nn.Identity() if channels == out_channels else conv1x1(channels, out_channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h += self.emb_layers(emb)[:, :, None, None]
        return self.out_layers(h).add_(self.skip_connection(x))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, attn: AttnImpl):
        super().__init__()
        self.heads, self.attn = heads, attn
        self.to_q = Linear(dim, dim, bias=False)
        self.to_k = Linear(context_dim, dim, bias=False)
        self.to_v = Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = (split_heads(p(s), self.heads) for p, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        return self.to_out(merge_heads(self.attn(q, k, v)))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(x)  # in place: one (B, T, 4*dim) activation fewer


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), Linear(dim * 4, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, attn: AttnImpl):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, attn)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, attn)
        self.norm1, self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim), LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, depth: int, context_dim: int, heads: int, linear: bool, attn: AttnImpl):
        super().__init__()
        self.linear = linear
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = Linear(channels, channels) if linear else conv1x1(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads, attn) for _ in range(depth))
        self.proj_out = Linear(channels, channels) if linear else conv1x1(channels, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2).contiguous()  # (B, H*W, C); a strided view would slow every block
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(B, C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return x + h  # not in place: for SD1.x, h is a channels-last view, and x's contiguous layout must win


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = conv3x3(channels, channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        # `size` is the next skip's size, so latents that are not a multiple of 2**levels still work.
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Block(nn.ModuleList):
    """One `input_blocks.N` / `output_blocks.N` / `middle_block` entry; dispatches on layer type."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------- model


class UNet(nn.Module):
    """Noise-prediction U-Net: (x (B,C,H,W), t (B,), context (B,T,D), y (B,adm)) -> (B,C_out,H,W)."""

    def __init__(self, cfg: UNetConfig, *, attn: AttnImpl = sdpa, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        mc, n = cfg.model_channels, cfg.num_res_blocks
        ted = mc * 4
        with torch.device(device or "cpu"):
            self.time_embed = nn.Sequential(Linear(mc, ted), nn.SiLU(), Linear(ted, ted))
            if cfg.adm_in_channels is not None:
                self.label_emb = nn.Sequential(
                    nn.Sequential(Linear(cfg.adm_in_channels, ted), nn.SiLU(), Linear(ted, ted)))

            def transformer(ch: int, depth: int) -> SpatialTransformer:
                return SpatialTransformer(ch, depth, cfg.context_dim, cfg.heads_for(ch), cfg.use_linear_in_transformer, attn)

            self.input_blocks = nn.ModuleList([Block([conv3x3(cfg.in_channels, mc)])])
            skip_chs, ch = [mc], mc
            for level, (mult, depth) in enumerate(zip(cfg.channel_mult, cfg.transformer_depth)):
                for _ in range(n):
                    layers: list[nn.Module] = [ResBlock(ch, ted, mc * mult)]
                    ch = mc * mult
                    if depth:
                        layers.append(transformer(ch, depth))
                    self.input_blocks.append(Block(layers))
                    skip_chs.append(ch)
                if level != len(cfg.channel_mult) - 1:
                    self.input_blocks.append(Block([Downsample(ch)]))
                    skip_chs.append(ch)

            self.middle_block = Block([ResBlock(ch, ted, ch), transformer(ch, cfg.transformer_depth_middle), ResBlock(ch, ted, ch)])

            self.output_blocks = nn.ModuleList()
            for level in reversed(range(len(cfg.channel_mult))):
                mult, depth = cfg.channel_mult[level], cfg.transformer_depth[level]
                for i in range(n + 1):
                    layers = [ResBlock(ch + skip_chs.pop(), ted, mc * mult)]
                    ch = mc * mult
                    if depth:
                        layers.append(transformer(ch, depth))
                    if level and i == n:
                        layers.append(Upsample(ch))
                    self.output_blocks.append(Block(layers))

            self.out = nn.Sequential(group_norm(ch), nn.SiLU(inplace=True), conv3x3(mc, cfg.out_channels))
        if dtype is not None:
            self.to(dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: Tensor, t: Tensor, context: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is None) != (self.cfg.adm_in_channels is None):
            raise ValueError(f"UNet with adm_in_channels={self.cfg.adm_in_channels} got y={'None' if y is None else tuple(y.shape)}")
        weight_dtype = self.dtype
        dtype = activation_dtype(weight_dtype, x.device)
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(dtype))  # (B, 4*mc)
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))
        h, context = x.to(dtype), context.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            skip = skips.pop()
            h = block(torch.cat([h, skip], dim=1), emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(weight_dtype)


def adm_vector(pooled: Tensor, time_ids: Tensor) -> Tensor:
    """SDXL's `y`: pooled text (B, P) then each of the (B, K) size ids sinusoid-embedded to 256 (SGM order)."""
    B = pooled.shape[0]
    sizes = timestep_embedding(time_ids.flatten(), 256).reshape(B, -1)
    return torch.cat([pooled, sizes.to(pooled.dtype)], dim=1)


# --------------------------------------------------------------------------- presets

SD15 = UNetConfig()
SD21 = replace(SD15, num_heads=None, head_dim=64, context_dim=1024, use_linear_in_transformer=True, prediction="v")
SD21_BASE = replace(SD21, prediction="eps")  # the 512px SD2.x base models
SDXL = replace(SD21, channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
               context_dim=2048, adm_in_channels=2816, prediction="eps")
SDXL_REFINER = replace(SDXL, model_channels=384, channel_mult=(1, 2, 4, 4), transformer_depth=(0, 4, 4, 0),
                       transformer_depth_middle=4, context_dim=1280, adm_in_channels=2560)
TINY_SD1 = replace(SD15, model_channels=32, channel_mult=(1, 2), transformer_depth=(1, 1), context_dim=32)
TINY_SD2 = replace(SD21, model_channels=32, channel_mult=(1, 2), transformer_depth=(1, 1), context_dim=32, head_dim=16)
TINY_SDXL = replace(SDXL, model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 2), transformer_depth_middle=2,
                    context_dim=32, head_dim=16, adm_in_channels=32 + 6 * 256)
TINY_SDXL_REFINER = replace(SDXL_REFINER, model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 2),
                            transformer_depth_middle=2, context_dim=32, head_dim=16, adm_in_channels=32 + 5 * 256)
UNET_PRESETS: dict[str, UNetConfig] = {
    "sd15": SD15, "sd21": SD21, "sd21_base": SD21_BASE, "sdxl": SDXL, "sdxl_refiner": SDXL_REFINER,
    "tiny": TINY_SD1, "tiny_sd1": TINY_SD1, "tiny_sd2": TINY_SD2, "tiny_sdxl": TINY_SDXL,
    "tiny_sdxl_refiner": TINY_SDXL_REFINER,
}
