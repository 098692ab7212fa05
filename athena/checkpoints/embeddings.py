"""Textual-inversion embedding files: A1111 and ComfyUI layouts, in safetensors or a weights-only pickle.

Layouts read:
- `emb_params` (n, width): A1111's safetensors;
- `string_to_param.*` (n, width): A1111's `.pt` (the one tensor under `string_to_param`);
- `clip_l` (n, 768) + `clip_g` (n, 1280): SDXL embeddings, one tensor per text encoder;
- any file holding a single tensor.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from athena.checkpoints.io import PICKLE_SUFFIXES, open_weights
from athena.errors import CheckpointError, ConfigError

SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
PER_ENCODER = ("clip_l", "clip_g")


def find_embedding(folder: Path, name: str) -> Path:
    """`name` (with or without its suffix) inside `folder` or its subfolders; never outside it."""
    root = folder.resolve()
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if root.is_dir() else []
    for path in [root / name, *(root / f"{name}{s}" for s in SUFFIXES)] + [p for p in files if p.stem == name]:
        path = path.resolve()
        if path.is_file() and path.is_relative_to(root) and path.suffix in SUFFIXES:
            return path
    known = [p.stem for p in files]
    raise ConfigError(f"embedding:{name} was not found in {folder} (available: {', '.join(known[:20]) or 'none'}); "
                      f"put {name}.safetensors there or fix the name in the prompt")


def load_embedding(path: Path) -> dict[str, Tensor]:
    """The file's vectors: {'clip_l': (n, 768), 'clip_g': (n, 1280)} for SDXL files, else {'*': (n, width)}."""
    w = open_weights(path)
    try:
        tensors = {k: w.get(k) for k in w}
    finally:
        w.close()
    if any(k in tensors for k in PER_ENCODER):
        return {k: _rows(tensors[k], path) for k in PER_ENCODER if k in tensors}
    for key in ("emb_params", *sorted(k for k in tensors if k.startswith("string_to_param."))):
        if key in tensors:
            return {"*": _rows(tensors[key], path)}
    if len(tensors) == 1:
        return {"*": _rows(next(iter(tensors.values())), path)}
    raise CheckpointError(f"{path.name}: not a textual-inversion embedding (keys {sorted(tensors)[:5]}); expected "
                          f"'emb_params', 'string_to_param', or 'clip_l'/'clip_g'")


def vectors_for(embedding: dict[str, Tensor], encoder: str, width: int, name: str) -> Tensor:
    """The rows meant for the text encoder `encoder` (clip_l, clip_h, clip_g) of hidden size `width`."""
    t = embedding.get(encoder, embedding.get("*"))
    if t is None or t.shape[1] != width:
        have = ", ".join(f"{k}: width {v.shape[1]}" for k, v in embedding.items())
        raise ConfigError(f"embedding:{name} does not fit the {encoder} text encoder (width {width}); the file has {have}. "
                          f"It was trained for another model family")
    return t


def _rows(t: Tensor, path: Path) -> Tensor:
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise CheckpointError(f"{path.name}: an embedding must be (vectors, width), got shape {tuple(t.shape)}")
    return t.float()
