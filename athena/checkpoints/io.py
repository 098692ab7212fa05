"""Weight sources: one lazy mapping interface over safetensors files, safe pickles and key views.

Every source maps a name to a `TensorInfo` (dtype, shape) and hands out tensors with `view(name)`
(zero-copy where possible) and `release(name)` once the caller has copied them, or, from a mapped file,
`shared(name)`: a tensor that may outlive the source and is never copied.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from athena.checkpoints.safetensors import Pending, SafetensorsFile, TensorInfo
from athena.errors import CheckpointError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class Weights(Mapping[str, TensorInfo]):
    """Lazy weight mapping; subclasses implement `__getitem__`, `__iter__`, `__len__` and `view`."""

    metadata: dict[str, str]  # set by every subclass

    @abstractmethod
    def view(self, name: str) -> Tensor:
        """The tensor's data, zero-copy where the source allows; copy it before `release(name)`."""

    def release(self, name: str) -> None:
        """Let go of any memory held for `name` after the caller copied it."""

    def shared(self, name: str) -> Tensor | None:
        """`name` as a tensor that stays valid after `close()` without a copy (a file's private mapping), or None."""
        return None

    def pending(self, name: str, shape: tuple[int, ...] | None = None) -> Pending:
        """`name` as a tensor to write later (read when the writer reaches it), optionally reshaped."""
        info = self[name]
        if shape is None:
            return Pending(info.dtype, info.shape, lambda: self.view(name))
        return Pending(info.dtype, shape, lambda: self.view(name).reshape(shape))

    def get(self, name: str, dtype: torch.dtype | None = None) -> Tensor:  # type: ignore[override]
        t = self.view(name).to(dtype=dtype or self[name].dtype, copy=True)
        self.release(name)
        return t

    def close(self) -> None:
        """Close the underlying files."""


class FileWeights(Weights):
    """Adapter making a `SafetensorsFile` a `Weights`."""

    def __init__(self, f: SafetensorsFile):
        self.file, self.metadata = f, f.metadata

    def __getitem__(self, name: str) -> TensorInfo:
        return self.file[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.file)

    def __len__(self) -> int:
        return len(self.file)

    def view(self, name: str) -> Tensor:
        return self.file.view(name)

    def release(self, name: str) -> None:
        self.file.release(name)

    def shared(self, name: str) -> Tensor | None:
        return self.file.shared(name)

    def close(self) -> None:
        self.file.close()


class DictWeights(Weights):
    """Tensors already in memory (a weights-only pickle, a state dict built in a test)."""

    def __init__(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None):
        self.tensors, self.metadata = dict(tensors), dict(metadata or {})

    def __getitem__(self, name: str) -> TensorInfo:
        t = self.tensors[name]
        return TensorInfo(t.dtype, tuple(t.shape), 0, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def view(self, name: str) -> Tensor:
        return self.tensors[name]


class PendingWeights(Weights):
    """Tensors made on demand (a key map that splits or transposes, e.g. OpenCLIP's fused q/k/v)."""

    def __init__(self, items: Mapping[str, Pending], base: Weights):
        self.made, self.base, self.metadata = dict(items), base, base.metadata

    def __getitem__(self, name: str) -> TensorInfo:
        p = self.made[name]
        return TensorInfo(p.dtype, p.shape, 0, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self.made)

    def __len__(self) -> int:
        return len(self.made)

    def view(self, name: str) -> Tensor:
        return self.made[name].make()

    def close(self) -> None:
        self.base.close()


class Renamed(Weights):
    """A view of `base` under new names: `table` maps new name -> base name (a prefix strip is a table too)."""

    def __init__(self, base: Weights, table: Mapping[str, str]):
        self.base, self.table, self.metadata = base, dict(table), base.metadata

    def __getitem__(self, name: str) -> TensorInfo:
        return self.base[self.table[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def view(self, name: str) -> Tensor:
        return self.base.view(self.table[name])

    def release(self, name: str) -> None:
        self.base.release(self.table[name])

    def shared(self, name: str) -> Tensor | None:
        return self.base.shared(self.table[name])

    def close(self) -> None:
        self.base.close()


class Merged(Weights):
    """Several sources seen as one (diffusers' sharded files)."""

    def __init__(self, parts: list[Weights]):
        self.parts = parts
        self.owner = {name: p for p in parts for name in p}
        self.metadata = {k: v for p in parts for k, v in p.metadata.items()}

    def __getitem__(self, name: str) -> TensorInfo:
        return self.owner[name][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.owner)

    def __len__(self) -> int:
        return len(self.owner)

    def view(self, name: str) -> Tensor:
        return self.owner[name].view(name)

    def release(self, name: str) -> None:
        self.owner[name].release(name)

    def shared(self, name: str) -> Tensor | None:
        return self.owner[name].shared(name)

    def close(self) -> None:
        for p in self.parts:
            p.close()


def strip_prefix(w: Weights, prefix: str) -> Renamed:
    return Renamed(w, {k[len(prefix):]: k for k in w if k.startswith(prefix)})


# --------------------------------------------------------------------------- opening files


def load_pickle(path: Path) -> dict[str, Tensor]:
    """Load a pickle checkpoint with `weights_only=True`; anything that needs code execution is refused."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise CheckpointError(
            f"{path.name}: refused to load; this pickle needs arbitrary code to run ({detail.strip()[:200]}). "
            f"Athena loads pickles only with weights_only=True. Use a .safetensors version of this model, or, if you "
            f"trust the file, re-save its state dict with safetensors in the tool that made it.") from None
    except (EOFError, OSError, zipfile.BadZipFile, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path.name}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                              f"the file is truncated or corrupt. Re-download it.") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning/LDM .ckpt wrapper
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: holds a {type(obj).__name__}, not a state dict of tensors")
    return _tensors(obj)


def _tensors(obj: Mapping[object, object], prefix: str = "") -> dict[str, Tensor]:
    """The tensors of a (nested) dict under dotted names; other values (steps, names, strings) are dropped."""
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, Mapping):
            out.update(_tensors(v, f"{prefix}{k}."))
    return out


def open_weights(path: str | os.PathLike[str], *, share: bool = True) -> Weights:
    """Open one weights file: safetensors (lazy, mmapped; `share` lets models use the mapping itself) or a
    weights-only pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return FileWeights(SafetensorsFile(path, share=share))
    if path.suffix in PICKLE_SUFFIXES:
        return DictWeights(load_pickle(path))
    raise CheckpointError(f"{path.name}: unknown weights format {path.suffix!r}; expected .safetensors or {PICKLE_SUFFIXES}")


def open_component(folder: Path, stem: str, *, share: bool = True) -> Weights:
    """A diffusers component's weights: `stem.safetensors`, its sharded index, an fp16 variant, or a `.bin`."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            return open_weights(folder / name, share=share)
    for index in (f"{stem}.safetensors.index.json", f"{stem}.safetensors.index.fp16.json"):
        if (folder / index).is_file():
            files = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return Merged([open_weights(folder / f, share=share) for f in files])
    raise CheckpointError(f"{folder}: no weights file named {stem}.safetensors (or .bin / sharded index)")
