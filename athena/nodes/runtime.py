"""`Runtime`: the services that nodes use (folders, device, dtype, the shared model cache), built once by the host
(`athena run`, the server) and passed to the engine; nodes receive it as `ctx.services`."""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import torch

from athena.errors import ConfigError
from athena.pipelines.pipeline import BUNDLED, bundled_model

BUNDLED_FILE = f"{BUNDLED}.safetensors"  # offered in every checkpoints list
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
T = TypeVar("T")


@dataclass(frozen=True)
class Folders:
    models: Path
    output: Path
    input: Path
    temp: Path

    def model_names(self, kind: str) -> list[str]:
        """Files under models/`kind`/ (subfolders included, '/'-separated) and diffusers folders, as combo options.
        Checkpoints always include the bundled model, so a fresh install has one to run."""
        root = self.models / kind
        names = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*")
                       if (p.is_file() and p.suffix.lower() in MODEL_SUFFIXES) or (p / "model_index.json").is_file()
                       ) if root.is_dir() else []
        if kind == "checkpoints" and BUNDLED_FILE not in names:
            names.append(BUNDLED_FILE)
        return names

    def model(self, kind: str, name: str) -> Path:
        """The file `name` under models/`kind`/; a name can never leave that folder."""
        if kind == "checkpoints" and name == BUNDLED_FILE and not (self.models / kind / name).exists():
            return bundled_model()
        return confined(self.models / kind, name, f"models/{kind}")

    def input_names(self) -> list[str]:
        if not self.input.is_dir():
            return []
        return sorted(p.relative_to(self.input).as_posix() for p in self.input.glob("**/*")
                      if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"))

    def input_file(self, name: str) -> Path:
        """An input image: `name` under the input folder, or `name [output]` / `name [temp]` as ComfyUI writes."""
        for tag, root in ((" [output]", self.output), (" [temp]", self.temp), (" [input]", self.input)):
            if name.endswith(tag):
                return confined(root, name[: -len(tag)], tag.strip(" []"))
        return confined(self.input, name, "input")


def confined(root: Path, name: str, label: str) -> Path:
    """`root / name` for a name that stays inside `root` as written: no `..`, absolute paths, drive letters,
    backslashes or NUL. A file that is itself a symlink placed in the folder (a model shared with another app) is
    used, as ComfyUI does; a name can never walk out of the folder."""
    parts = PurePosixPath(name).parts
    if (not parts or "\x00" in name or "\\" in name or name.startswith("/") or ".." in parts
            or re.match(r"^[A-Za-z]:", name)):
        raise ConfigError(f"{name!r} points outside the {label} folder; use a name inside {root}")
    path = root / name
    if not path.exists():
        have = ", ".join(sorted(p.name for p in root.glob("*"))[:8]) if root.is_dir() else "the folder does not exist"
        raise ConfigError(f"{name!r} is not in the {label} folder {root} (there: {have or 'nothing'})")
    return path


class ModelCache:
    """Loaded models shared by every node and job: loading the same file with the same settings twice gives the same
    object while anyone still holds it (weak references, so the graph cache decides what stays in memory)."""

    def __init__(self) -> None:
        self._items: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.loads = 0  # files actually read, for tests and stats

    def get(self, kind: str, path: Path, options: tuple[Any, ...], load: Callable[[], T]) -> T:
        st = path.stat()
        key = (kind, str(path.resolve()), st.st_mtime_ns, st.st_size, options)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                return hit
            value = load()
            self.loads += 1
            self._items[key] = value
            return value


@dataclass
class Runtime:
    folders: Folders
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    models: ModelCache = field(default_factory=ModelCache)
