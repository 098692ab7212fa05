"""Training data: Fashion-MNIST from Debian's package, `fashion-colors` made from it, and captioned image folders.

Every dataset gives a batch for a list of indices, so the loop can draw them in an order fixed by (seed, epoch)
and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from athena.errors import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ITEMS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 210, 40), "green": (40, 170, 60),
    "cyan": (40, 200, 210), "blue": (40, 80, 220), "purple": (140, 60, 200), "pink": (240, 140, 190),
    "brown": (130, 85, 45), "white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Batch:
    images: Tensor  # (B, C, H, W) in [-1, 1]
    labels: Tensor | None = None  # (B,) class ids, for class-conditional training
    captions: list[str] | None = None
    indices: list[int] | None = None  # the dataset items these are


class Dataset(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices: Sequence[int]) -> Batch: ...


def caption(fg: str, item: str, bg: str) -> str:
    return f"a {fg} {item} on a {bg} background"


# --------------------------------------------------------------------------- Fashion-MNIST


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): magic (0, 0, dtype 0x08 = uint8, ndim), the dims, then the data."""
    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ConfigError(f"{path}: not an IDX file of uint8 (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(*dims)


def fashion_mnist(split: str = "train", data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of the train (60k) or test (10k) split."""
    root = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}[split]
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = [root / f"{prefix}-{kind}{s}" for s in (".gz", "") if (root / f"{prefix}-{kind}{s}").is_file()]
        if not found:
            raise ConfigError(f"Fashion-MNIST not found: {root / f'{prefix}-{kind}.gz'} is missing. Install it with "
                              f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four IDX files "
                              f"and pass --data-dir to their folder")
        files.append(found[0])
    images, labels = _idx(files[0]), _idx(files[1])
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNIST:
    """28x28 grey items padded to 32x32, white on black, in [-1, 1]; the label is the class id."""

    def __init__(self, split: str = "train", data_dir: str | Path | None = None, limit: int | None = None):
        self.images, self.labels = fashion_mnist(split, data_dir)
        if limit:
            self.images, self.labels = self.images[:limit], self.labels[:limit]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices)
        x = F.pad(self.images[idx].float() / 127.5 - 1, (2, 2, 2, 2), value=-1.0)
        return Batch(x[:, None], labels=self.labels[idx], indices=idx.tolist())


# --------------------------------------------------------------------------- fashion-colors


class FashionColors:
    """The captioned 64x64 RGB set of the bundled model, deterministic by seed.

    Item i is Fashion-MNIST item i upscaled to `item_size` px, jittered by up to `jitter` px, painted in a
    foreground colour with its grey level as coverage, on a plain background of another colour. The colours and
    the jitter of item i come from a generator seeded with (seed, split, i), so any subset renders identically.
    """

    def __init__(self, split: str = "train", data_dir: str | Path | None = None, *, seed: int = 0,
                 limit: int | None = None, size: int = 64, item_size: int = 48, jitter: int = 3):
        self.items, self.labels = fashion_mnist(split, data_dir)
        if limit:
            self.items, self.labels = self.items[:limit], self.labels[:limit]
        self.size, self.item_size, self.jitter = size, item_size, jitter
        n, k = len(self.labels), len(COLORS)
        rng = [np.random.default_rng([seed, 0 if split == "train" else 1, i]) for i in range(n)]
        draws = np.array([(r.integers(k), r.integers(k - 1), *r.integers(-jitter, jitter + 1, size=2)) for r in rng])
        self.fg = torch.from_numpy(draws[:, 0])
        self.bg = torch.from_numpy((draws[:, 0] + 1 + draws[:, 1]) % k)  # any colour but fg
        self.offsets = torch.from_numpy(draws[:, 2:])
        self.palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int) -> str:
        return caption(COLOR_NAMES[int(self.fg[i])], ITEMS[int(self.labels[i])], COLOR_NAMES[int(self.bg[i])])

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices)
        s, m = self.size, self.item_size
        items = F.interpolate(self.items[idx, None].float() / 255, size=(m, m), mode="bilinear", align_corners=False)
        cover = torch.zeros(len(idx), 1, s, s)
        for j, (dy, dx) in enumerate(self.offsets[idx].tolist()):
            y0, x0 = (s - m) // 2 + dy, (s - m) // 2 + dx
            cover[j, :, y0:y0 + m, x0:x0 + m] = items[j].clamp(0, 1)
        fg, bg = (self.palette[c][:, :, None, None] for c in (self.fg[idx], self.bg[idx]))
        rgb = bg + (fg - bg) * cover
        rgb = (rgb * 255).round() / 255  # what an 8-bit PNG of it would hold
        return Batch(rgb * 2 - 1, labels=self.labels[idx], captions=[self.caption(i) for i in idx.tolist()],
                     indices=idx.tolist())


# --------------------------------------------------------------------------- image folders


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


class ImageFolder:
    """Images with captions in `metadata.jsonl` ({"file_name", "text"}, the Hugging Face image folder) or in a
    sidecar `NAME.txt` beside each image (kohya's convention); center-cropped and resized to `size`."""

    def __init__(self, root: str | Path, size: int = 64, limit: int | None = None):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise ConfigError(f"dataset folder {self.root} does not exist; pass --dataset with a folder of images and "
                              f"captions, or one of fashion-mnist, fashion-colors")
        self.files, self.captions = self._scan()
        if limit:
            self.files, self.captions = self.files[:limit], self.captions[:limit]
        if not self.files:
            raise ConfigError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")

    def _scan(self) -> tuple[list[Path], list[str]]:
        meta = self.root / "metadata.jsonl"
        if meta.is_file():
            files, captions = [], []
            for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    files.append(self.root / row["file_name"])
                    captions.append(str(row.get("text", row.get("caption", ""))))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConfigError(f"{meta}:{n}: expected a JSON object with 'file_name' and 'text' ({e})") from None
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConfigError(f"{meta} names {len(missing)} missing images, e.g. {missing[0]}")
            return files, captions
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        caps = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() if p.with_suffix(".txt").is_file() else ""
                for p in files]
        return files, caps

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> Batch:
        arrays = []
        for i in indices:
            with Image.open(self.files[i]) as im:
                arrays.append(np.asarray(center_crop_resize(im.convert("RGB"), self.size), dtype=np.float32))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1
        return Batch(x, captions=[self.captions[i] for i in indices], indices=list(indices))


def open_dataset(name: str, *, split: str = "train", data_dir: str | None = None, resolution: int = 64,
                 seed: int = 0, limit: int | None = None) -> Dataset:
    if name == "fashion-mnist":
        return FashionMNIST(split, data_dir, limit)
    if name == "fashion-colors":
        return FashionColors(split, data_dir, seed=seed, limit=limit, size=resolution)
    return ImageFolder(name, resolution, limit)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled indices of one epoch, a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
