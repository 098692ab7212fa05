"""The CLIP text transformer (OpenAI CLIP-L, OpenCLIP ViT-H and ViT-bigG), under Hugging Face `CLIPTextModel` names.

`CLIPTextModel(cfg).state_dict()` keys are `text_model.embeddings.token_embedding.weight`,
`text_model.encoder.layers.N.self_attn.q_proj.weight`, ..., `text_model.final_layer_norm.*`, plus
`text_projection.weight` when the config has a projection (HF's `CLIPTextModelWithProjection`). SD1.x and SDXL's
first encoder store exactly these names; OpenCLIP files go through `checkpoints/keymaps/open_clip.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from athena.errors import ConfigError
from athena.models.config import from_dict
from athena.models.layers import (
    LayerNorm,
    Linear,
    activation_dtype,
    merge_heads,
    sdpa,
    split_heads,
)

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 77
    act: Activation = "quick_gelu"  # OpenAI's CLIP; OpenCLIP models use the exact GELU
    projection_dim: int | None = None  # `text_projection` applied to the pooled output (bigG; SD2's unused one)
    eos_token_id: int = 49407  # pooling reads the first EOS position (the argmax of ids for CLIP's vocabulary)
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"CLIPTextConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"CLIPTextConfig.act={self.act!r} must be 'quick_gelu' or 'gelu'")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPTextConfig:
        return from_dict(cls, d)


CLIP_L = CLIPTextConfig()
OPENCLIP_H = CLIPTextConfig(width=1024, layers=24, heads=16, mlp_dim=4096, act="gelu", projection_dim=1024)
OPENCLIP_BIGG = CLIPTextConfig(width=1280, layers=32, heads=20, mlp_dim=5120, act="gelu", projection_dim=1280)
TINY = CLIPTextConfig(width=64, layers=3, heads=2, mlp_dim=128)
CLIP_PRESETS = {"clip_l": CLIP_L, "openclip_h": OPENCLIP_H, "openclip_bigg": OPENCLIP_BIGG, "tiny": TINY}


class Embeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width, dtype=dtype, device=device)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width, dtype=dtype, device=device)


class Attention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            Linear(cfg.width, cfg.width, dtype=dtype, device=device) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(sdpa(q, k, v, causal=True)))


class MLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.quick = cfg.act == "quick_gelu"
        self.fc1 = Linear(cfg.width, cfg.mlp_dim, dtype=dtype, device=device)
        self.fc2 = Linear(cfg.mlp_dim, cfg.width, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else nn.functional.gelu(h)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.self_attn = Attention(cfg, dtype, device)
        self.layer_norm1 = LayerNorm(cfg.width, eps=cfg.eps, dtype=dtype, device=device)
        self.mlp = MLP(cfg, dtype, device)
        self.layer_norm2 = LayerNorm(cfg.width, eps=cfg.eps, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg, dtype, device) for _ in range(cfg.layers))


class TextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, dtype: torch.dtype | None, device: torch.device | str | None):
        super().__init__()
        self.embeddings = Embeddings(cfg, dtype, device)
        self.encoder = Encoder(cfg, dtype, device)
        self.final_layer_norm = LayerNorm(cfg.width, eps=cfg.eps, dtype=dtype, device=device)


@dataclass
class TextOutput:
    hidden: Tensor  # (B, T, width): the requested layer's output
    pooled: Tensor | None  # (B, projection_dim or width): final-normed EOS token, projected if the model has one


class CLIPTextModel(nn.Module):
    """`forward(ids, layer=-1)`: layer counts like HF's `hidden_states` (-1 last, -2 penultimate; 0 = embeddings)."""

    def __init__(self, cfg: CLIPTextConfig = CLIP_L, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        self.text_model = TextTransformer(cfg, dtype, device)
        if cfg.projection_dim is not None:
            self.text_projection = Linear(cfg.width, cfg.projection_dim, bias=False, dtype=dtype, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.embeddings.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.embeddings.token_embedding.weight.device

    def forward(self, ids: Tensor, *, layer: int = -1, final_norm: bool = True, pooled: bool = True,
                extra_embeddings: Tensor | None = None) -> TextOutput:
        """`ids` (B, T). `final_norm` passes the chosen layer through `final_layer_norm` (SD1, SD2; SDXL does not).
        Ids >= vocab_size pick rows of `extra_embeddings` (n, width): textual-inversion vectors."""
        n = self.cfg.layers
        index = layer + n + 1 if layer < 0 else layer
        if not 0 <= index <= n:
            raise ConfigError(f"layer {layer} is out of range for a {n}-layer text encoder (use -1..-{n + 1} or 0..{n})")
        tm = self.text_model
        dt = activation_dtype(self.dtype, ids.device)
        vocab = self.cfg.vocab_size
        x = tm.embeddings.token_embedding(ids.clamp(max=vocab - 1)).to(dt)
        if extra_embeddings is not None:
            extra = extra_embeddings.to(x)[(ids - vocab).clamp(min=0, max=len(extra_embeddings) - 1)]
            x = torch.where((ids >= vocab)[..., None], extra, x)
        elif int(ids.max()) >= vocab:
            raise ConfigError(f"token id {int(ids.max())} is outside the vocabulary ({vocab}) and no extra embeddings were given")
        x = x + tm.embeddings.position_embedding.weight[: ids.shape[1]].to(dt)
        chosen = x
        for i, block in enumerate(tm.encoder.layers[: n if pooled else index]):
            x = block(x)
            if i + 1 == index:
                chosen = x
        hidden = tm.final_layer_norm(chosen) if final_norm else chosen
        if not pooled:
            return TextOutput(hidden, None)
        eos = (ids == self.cfg.eos_token_id).int().argmax(-1)
        out = tm.final_layer_norm(x)[torch.arange(ids.shape[0], device=ids.device), eos]
        return TextOutput(hidden, self.text_projection(out) if self.cfg.projection_dim is not None else out)
