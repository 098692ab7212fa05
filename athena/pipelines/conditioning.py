"""Prompts to conditioning, per family: which text encoders, which layer, which padding, and how weights act.

| family | encoders (layer, final LayerNorm, padding) | context | y |
|---|---|---|---|
| SD1.x | CLIP-L (last, yes, EOS) | 768 | - |
| SD2.x | OpenCLIP-H (penultimate, yes, 0) | 1024 | - |
| SDXL | CLIP-L (penultimate, no, EOS) + OpenCLIP-bigG (penultimate, no, 0) | 768 + 1280 | bigG pooled + 6 sizes |
| SDXL refiner | OpenCLIP-bigG (penultimate, no, 0) | 1280 | bigG pooled + 4 sizes + aesthetic score |

Weights (see `athena.text.prompt` for the grammar):
- "comfy" (default, ComfyUI): each weighted token's embedding is moved away from the empty prompt's embedding at
  the same position: `z = e + (z - e) * w`. Weight 1 leaves a token exactly as encoded.
- "a1111" (A1111): each window's embeddings are scaled by their weights, then rescaled to the original mean.
Windows are encoded independently and joined along the sequence; the pooled output is the first window's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from athena.checkpoints.embeddings import find_embedding, load_embedding, vectors_for
from athena.errors import ConfigError
from athena.models.clip import CLIPTextModel
from athena.models.unet import adm_vector
from athena.text.bpe import ClipTokenizer, clip_tokenizer
from athena.text.prompt import Embedding, Window, windows

Weighting = Literal["comfy", "a1111"]


@dataclass(frozen=True)
class EncoderSpec:
    """How a family conditions on one text encoder."""

    name: str  # clip_l, clip_h, clip_g
    layer: int  # hidden-state index of the full tower: -1 last, -2 penultimate
    final_norm: bool  # pass that layer through final_layer_norm
    pad_with_eos: bool  # OpenAI CLIP pads with EOS; OpenCLIP with id 0


FAMILY_TEXT: dict[str, tuple[EncoderSpec, ...]] = {
    "sd1": (EncoderSpec("clip_l", -1, True, True),),
    "sd2": (EncoderSpec("clip_h", -2, True, False),),
    "sdxl": (EncoderSpec("clip_l", -2, False, True), EncoderSpec("clip_g", -2, False, False)),
    "sdxl_refiner": (EncoderSpec("clip_g", -2, False, False),),
}


@dataclass
class Conditioning:
    context: Tensor  # (B, T, D): cross-attention tokens, T = 77 per window
    y: Tensor | None = None  # (B, adm_in_channels) for SDXL, else None
    pooled: Tensor | None = None  # (B, P): the last encoder's pooled output (bigG for SDXL)
    concat: Tensor | None = None  # (B, 5, h, w): mask + masked-image latent for 9-channel inpainting U-Nets

    def expand(self, batch: int) -> Conditioning:
        """The same conditioning for each of `batch` samples."""
        def rep(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.shape[0] == batch else t.expand(batch, *t.shape[1:])
        return Conditioning(rep(self.context), rep(self.y), rep(self.pooled), rep(self.concat))  # type: ignore[arg-type]

    def crop(self, rows: slice, cols: slice) -> Conditioning:
        """This conditioning for an area of the latent (regional prompts): the inpainting concat is cut to it."""
        concat = None if self.concat is None else self.concat[..., rows, cols]
        return Conditioning(self.context, self.y, self.pooled, concat)

    def cat(self, other: Conditioning) -> Conditioning:
        """Batch-concatenate (for one CFG forward). Contexts of different lengths (a long prompt and a short one) are
        repeated to their least common multiple of 77-token windows, as ComfyUI does; attention over the repeated
        copies gives the same result as over one."""
        n = math.lcm(self.context.shape[1], other.context.shape[1])
        ctx = torch.cat([c.repeat(1, n // c.shape[1], 1) for c in (self.context, other.context)])

        def both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None or b is None else torch.cat([a, b])
        return Conditioning(ctx, both(self.y, other.y), both(self.pooled, other.pooled), both(self.concat, other.concat))


@dataclass
class TextEncoder:
    spec: EncoderSpec
    model: CLIPTextModel
    tokenizer_source: Path | None = None  # a diffusers tokenizer folder; None = CLIP's installed vocabulary
    layers_dropped: int = 0  # final tower layers the stored model already left out (diffusers' SD2)
    tokenizer: ClipTokenizer | None = field(default=None, repr=False)

    def get_tokenizer(self) -> ClipTokenizer:
        if self.tokenizer is None:  # built on first use, so loading models needs no vocabulary file
            self.tokenizer = clip_tokenizer(self.tokenizer_source)
        return self.tokenizer


class PromptEncoder:
    """A family's text encoders and the embeddings folder, turning prompts into context and pooled output."""

    def __init__(self, encoders: list[TextEncoder], embeddings_dir: Path | None = None):
        self.encoders = encoders
        self.embeddings_dir = embeddings_dir
        self.loaded: dict[str, dict[str, Tensor]] = {}

    def encode(self, text: str | Mapping[str, str], *, clip_skip: int | None = None,
               weighting: Weighting = "comfy") -> tuple[Tensor, Tensor | None]:
        """(context (1, 77k, D), pooled (1, P) or None). `clip_skip` is ComfyUI's `stop_at_clip_layer` (-1, -2, ...).
        `text` may map encoder names to their own prompts (SDXL's text_l / text_g); an encoder whose prompt needs
        fewer 77-token windows is padded with windows of the empty prompt, as ComfyUI does."""
        if weighting not in ("comfy", "a1111"):
            raise ConfigError(f"weighting {weighting!r} is not 'comfy' or 'a1111'")
        if clip_skip is not None and clip_skip >= 0:
            raise ConfigError(f"clip_skip={clip_skip}: use -1 (last layer), -2 (penultimate), ... as ComfyUI's CLIPSetLastLayer")
        contexts, pooled = [], None
        for enc in self.encoders:
            context, pooled = self._encode_one(enc, text if isinstance(text, str) else text.get(enc.spec.name, ""),
                                               clip_skip, weighting)
            contexts.append(context)
        if not isinstance(text, str):
            longest = max(c.shape[1] for c in contexts)
            for i, (enc, c) in enumerate(zip(self.encoders, contexts)):
                if c.shape[1] < longest:
                    empty = self._encode_one(enc, "", clip_skip, weighting)[0]
                    contexts[i] = torch.cat([c] + [empty] * ((longest - c.shape[1]) // empty.shape[1]), dim=1)
        lengths = {c.shape[1] for c in contexts}
        if len(lengths) > 1:
            raise ConfigError(f"the text encoders split this prompt into different numbers of windows ({sorted(lengths)}); "
                              f"check that its embeddings have the same number of vectors for every encoder")
        return torch.cat(contexts, dim=-1), pooled

    def _encode_one(self, enc: TextEncoder, text: str, clip_skip: int | None,
                    weighting: Weighting) -> tuple[Tensor, Tensor]:
        tok, model = enc.get_tokenizer(), enc.model
        pad = tok.eos if enc.spec.pad_with_eos else 0
        wins = windows(text, tok, pad=pad, embedding_rows=lambda n: len(self._vectors(n, enc)))
        extra, ids = self._ids(wins, enc, model.cfg.vocab_size)
        weights = torch.tensor([w.weights for w in wins], dtype=torch.float32)
        weighted = bool((weights != 1).any())
        if weighted and weighting == "comfy":
            empty = [tok.bos, tok.eos] + [pad] * (len(wins[0].tokens) - 2)
            ids = torch.cat([ids, torch.tensor([empty])])
        layer = (clip_skip if clip_skip is not None else enc.spec.layer) + enc.layers_dropped
        layer = min(layer, -1)
        with torch.no_grad():
            out = model(ids.to(model.device), layer=layer, final_norm=enc.spec.final_norm, extra_embeddings=extra)
        z = out.hidden.float().cpu()
        assert out.pooled is not None
        pooled = out.pooled[:1].float().cpu()
        w = weights[..., None]
        if weighted and weighting == "comfy":
            z, empty_z = z[:-1], z[-1:]
            z = torch.where(w != 1, empty_z + (z - empty_z) * w, z)
        elif weighted:
            scaled = z * w
            z = scaled * (z.mean(dim=(1, 2), keepdim=True) / scaled.mean(dim=(1, 2), keepdim=True))
        return z.reshape(1, -1, z.shape[-1]), pooled

    def _ids(self, wins: list[Window], enc: TextEncoder, vocab: int) -> tuple[Tensor | None, Tensor]:
        """Window tokens as ids; embedding rows become ids vocab, vocab+1, ... into the returned extra table."""
        slots: dict[Embedding, int] = {}
        rows: list[Tensor] = []
        ids = []
        for w in wins:
            row = []
            for t in w.tokens:
                if isinstance(t, Embedding):
                    if t not in slots:
                        slots[t] = vocab + len(rows)
                        rows.append(self._vectors(t.name, enc)[t.row])
                    row.append(slots[t])
                else:
                    row.append(t)
            ids.append(row)
        return (torch.stack(rows) if rows else None), torch.tensor(ids)

    def _vectors(self, name: str, enc: TextEncoder) -> Tensor:
        if name not in self.loaded:
            if self.embeddings_dir is None:
                raise ConfigError(f"embedding:{name} is used in the prompt but no embeddings folder is set; "
                                  f"pass embeddings=PATH to athena.load")
            self.loaded[name] = load_embedding(find_embedding(self.embeddings_dir, name))
        return vectors_for(self.loaded[name], enc.spec.name, enc.model.cfg.width, name)


def size_ids(family: str, *, width: int, height: int, crop: tuple[int, int] = (0, 0),
             original: tuple[int, int] | None = None, target: tuple[int, int] | None = None,
             aesthetic_score: float = 6.0) -> Tensor:
    """SDXL's micro-conditioning, (1, 6): original (h, w), crop (top, left), target (h, w); the refiner's (1, 5):
    original (h, w), crop (top, left), aesthetic score. Sizes default to the image being made."""
    oh, ow = original or (height, width)
    if family == "sdxl_refiner":
        return torch.tensor([[oh, ow, crop[0], crop[1], aesthetic_score]], dtype=torch.float32)
    th, tw = target or (height, width)
    return torch.tensor([[oh, ow, crop[0], crop[1], th, tw]], dtype=torch.float32)


def conditioning(family: str, encoder: PromptEncoder, text: str | Mapping[str, str], *, clip_skip: int | None = None,
                 weighting: Weighting = "comfy", sizes: Callable[[], Tensor] | None = None) -> Conditioning:
    context, pooled = encoder.encode(text, clip_skip=clip_skip, weighting=weighting)
    if not family.startswith("sdxl"):
        return Conditioning(context, None, pooled)
    assert pooled is not None and sizes is not None
    return Conditioning(context, adm_vector(pooled, sizes()), pooled)
