"""Text encoders of a checkpoint: their configs, read off the shapes, and strict loading under HF CLIP names.

Single files store CLIP-L under Hugging Face names and OpenCLIP towers (SD2's ViT-H, SDXL's bigG) under OpenCLIP
names, mapped by `keymaps/open_clip.py`. Head counts are not in the weights: a diffusers `config.json` or Athena's
`athena.text_config` metadata gives them, otherwise every published CLIP text tower uses a head size of 64.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from athena.checkpoints.io import PendingWeights, Renamed, Weights, strip_prefix
from athena.checkpoints.keymaps import open_clip
from athena.errors import CheckpointError
from athena.models.clip import CLIPTextConfig

META_TEXT = "athena.text_config"  # JSON {encoder name: CLIPTextConfig fields}
HEAD_DIM = 64
ACTIVATION = {"clip_l": "quick_gelu", "clip_h": "gelu", "clip_g": "gelu"}  # OpenAI's CLIP-L vs OpenCLIP towers
# Stored in some files but not weights: the position ids buffer, OpenCLIP's contrastive temperature and mask.
NOT_WEIGHTS = ("text_model.embeddings.position_ids", "logit_scale", "attn_mask")
LAYER_KEY = "text_model.encoder.layers."
TOKEN_KEY = "text_model.embeddings.token_embedding.weight"
# Standalone files: the encoder is told by its width (every published tower of a width is the same model)
WIDTHS = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
SUPPORTED = "CLIP-L (width 768: SD1.x, SDXL), OpenCLIP ViT-H (1024: SD2.x) or OpenCLIP ViT-bigG (1280: SDXL)"


def hf_names(w: Weights) -> Weights:
    """`w` under Hugging Face `CLIPTextModel(WithProjection)` names, whatever layout it is stored in: OpenCLIP's,
    HF's, or HF's without the `text_model.` prefix (how transformers 5 saves a `CLIPTextModel`)."""
    if open_clip.is_open_clip(w):
        return PendingWeights(open_clip.to_hf(w), w)
    if "embeddings.token_embedding.weight" in w:
        return Renamed(w, {(k if k.startswith("text_projection") else "text_model." + k): k for k in w})
    return w


def stored_layers(w: Weights) -> int:
    return len({k.split(".")[3] for k in w if k.startswith(LAYER_KEY)})


def text_config(w: Weights, name: str, hf_config: Mapping[str, Any] | None = None) -> CLIPTextConfig:
    """The encoder's config: Athena metadata if present, else the shapes plus a diffusers config or conventions."""
    meta = json.loads(w.metadata.get(META_TEXT) or "{}")
    if name in meta:
        return CLIPTextConfig.from_dict(meta[name])
    token = w[TOKEN_KEY].shape
    width = token[1]
    hf = dict(hf_config or {})
    heads = hf.get("num_attention_heads") or width // HEAD_DIM
    if not heads or width % heads:
        raise CheckpointError(f"{name}: width {width} does not split into heads of {HEAD_DIM}; give the config "
                              f"(a diffusers text_encoder/config.json or the '{META_TEXT}' metadata)")
    projection = w["text_projection.weight"].shape[0] if "text_projection.weight" in w else None
    return CLIPTextConfig(
        vocab_size=token[0], width=width, layers=hf.get("num_hidden_layers", stored_layers(w)), heads=heads,
        mlp_dim=w[f"{LAYER_KEY}0.mlp.fc1.weight"].shape[0],
        max_positions=w["text_model.embeddings.position_embedding.weight"].shape[0],
        act=hf.get("hidden_act", ACTIVATION.get(name, "quick_gelu")), projection_dim=projection,
        eos_token_id=token[0] - 1,  # CLIP's EOS is its last token (SD1.5's config.json says 2, a legacy value)
        eps=hf.get("layer_norm_eps", 1e-5))


def model_weights(w: Weights, cfg: CLIPTextConfig) -> Weights:
    """The keys the model holds: drops non-weights and the layers a config declares away (diffusers' SD2)."""
    def keep(k: str) -> bool:
        return k not in NOT_WEIGHTS and not (k.startswith(LAYER_KEY) and int(k.split(".")[3]) >= cfg.layers)
    return Renamed(w, {k: k for k in w if keep(k)})


# --------------------------------------------------------------------------- standalone files


def standalone(w: Weights, prefixes: Iterable[str]) -> Weights:
    """A text-encoder file's weights under HF names; a checkpoint prefix that every key carries (files cut out of a
    checkpoint keep `cond_stage_model.transformer.` and the like) is stripped first."""
    prefix = next((p for p in prefixes if len(w) and all(k.startswith(p) for k in w)), "")
    return hf_names(strip_prefix(w, prefix) if prefix else w)


def encoder_name(w: Weights, file: str) -> str:
    """clip_l, clip_h or clip_g: the one Athena's metadata declares at this width, else the one of this width."""
    if TOKEN_KEY not in w:
        hint = "; it is a full checkpoint, load it with CheckpointLoaderSimple" if any(
            k.startswith("model.diffusion_model.") for k in w) else ""
        raise CheckpointError(f"{file}: not a CLIP text encoder (no token embedding; keys like "
                              f"{sorted(w)[:3]}){hint}. Supported: {SUPPORTED}, in HF or OpenCLIP layout")
    width = w[TOKEN_KEY].shape[1]
    declared = [n for n, c in json.loads(w.metadata.get(META_TEXT) or "{}").items() if c.get("width") == width]
    if len(declared) == 1:
        return declared[0]
    if width not in WIDTHS:
        raise CheckpointError(f"{file}: a CLIP text encoder of width {width}, which is none of the supported ones: "
                              f"{SUPPORTED}")
    return WIDTHS[width]


def layers_dropped(name: str, cfg: CLIPTextConfig) -> int:
    """Final layers a stored ViT-H leaves out: diffusers' SD2 text encoder keeps 23 of OpenCLIP's 24 layers."""
    return 1 if name == "clip_h" and cfg.width == 1024 and cfg.layers == 23 else 0
