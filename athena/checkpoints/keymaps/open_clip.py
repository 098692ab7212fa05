"""OpenCLIP text-tower names (SD2's ViT-H, SDXL's bigG in single files) <-> Hugging Face `CLIPTextModel` names.

Two entries are not renames: OpenCLIP fuses q/k/v into `attn.in_proj_{weight,bias}` (rows q, k, v),
and stores `text_projection` as the matrix used as `x @ P`, the transpose of HF's `text_projection.weight`.
Keys neither table knows (e.g. `logit_scale`) are carried unchanged so conversions stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

from athena.checkpoints.io import Weights
from athena.checkpoints.safetensors import Pending

TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
       "positional_embedding": "text_model.embeddings.position_embedding.weight",
       "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias"}
LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
         "attn.out_proj": "self_attn.out_proj"}
QKV = ("q_proj", "k_proj", "v_proj")
OC_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
OC_QKV = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def is_open_clip(w: Weights) -> bool:
    return "token_embedding.weight" in w


def _transposed(w: Weights, key: str) -> Pending:
    a, b = w[key].shape
    return Pending(w[key].dtype, (b, a), lambda: w.view(key).t().contiguous())


def _rows(w: Weights, key: str, lo: int, hi: int) -> Pending:
    info = w[key]
    return Pending(info.dtype, (hi - lo,) + info.shape[1:], lambda: w.view(key)[lo:hi])


def _concat(w: Weights, keys: list[str]) -> Callable[[], Tensor]:
    return lambda: torch.cat([w.view(k) for k in keys])


def to_hf(w: Weights) -> dict[str, Pending]:
    """OpenCLIP text tower -> HF CLIPTextModel(WithProjection) keys, tensor for tensor."""
    out: dict[str, Pending] = {}
    for key in w:
        m, qkv = OC_LAYER.match(key), OC_QKV.match(key)
        if key in TOP:
            out[TOP[key]] = w.pending(key)
        elif key == "text_projection":
            out["text_projection.weight"] = _transposed(w, key)
        elif qkv:
            i, kind = qkv.groups()
            third = w[key].shape[0] // 3
            for j, name in enumerate(QKV):
                out[f"text_model.encoder.layers.{i}.self_attn.{name}.{kind}"] = _rows(w, key, j * third, (j + 1) * third)
        elif m and m.group(2) in LAYER:
            out[f"text_model.encoder.layers.{m.group(1)}.{LAYER[m.group(2)]}.{m.group(3)}"] = w.pending(key)
        else:
            out[key] = w.pending(key)
    return out


def from_hf(w: Weights) -> dict[str, Pending]:
    """HF CLIPTextModel(WithProjection) keys -> the OpenCLIP text tower, tensor for tensor."""
    inverse_top = {v: k for k, v in TOP.items()}
    inverse_layer = {v: k for k, v in LAYER.items()}
    out: dict[str, Pending] = {}
    for key in w:
        m = HF_LAYER.match(key)
        if key in inverse_top:
            out[inverse_top[key]] = w.pending(key)
        elif key == "text_projection.weight":
            out["text_projection"] = _transposed(w, key)
        elif m and m.group(2).startswith("self_attn.") and m.group(2)[len("self_attn."):] in QKV:
            if m.group(2) == "self_attn.q_proj":
                i, kind = m.group(1), m.group(3)
                parts = [f"text_model.encoder.layers.{i}.self_attn.{n}.{kind}" for n in QKV]
                info = w[parts[0]]
                out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = Pending(
                    info.dtype, (3 * info.shape[0],) + info.shape[1:], _concat(w, parts))
        elif m and m.group(2) in inverse_layer:
            out[f"transformer.resblocks.{m.group(1)}.{inverse_layer[m.group(2)]}.{m.group(3)}"] = w.pending(key)
        else:
            out[key] = w.pending(key)
    return out
