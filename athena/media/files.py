"""Image files as ComfyUI's nodes read and write them, so files move between the two without surprises.

In: every frame of a file as IMAGE (N, H, W, 3) and its alpha as MASK (N, H, W) with 1 = transparent (ComfyUI's
"paint here" convention). Out: `{prefix}_{counter:05}_.png` under the output folder, the counter one past the
highest already there, with the graph in `prompt` and `workflow` text chunks so dropping the file on ComfyUI
restores it.
"""

from __future__ import annotations

import hashlib
import os
import json
import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin
from torch import Tensor

from athena.errors import ConfigError
from athena.media.images import open_image

CHANNELS = ("alpha", "red", "green", "blue")

# --------------------------------------------------------------------------- reading


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _upright(frame: Image.Image) -> Image.Image:
    """The frame rotated as its EXIF says, with 16-bit greyscale ('I') brought to 8-bit range."""
    frame = ImageOps.exif_transpose(frame) or frame
    if frame.mode == "I":
        frame = frame.point(lambda v: v * (1 / 255))
    return frame


def _alpha(frame: Image.Image) -> np.ndarray | None:
    if "A" in frame.getbands():
        return np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
    if frame.mode == "P" and "transparency" in frame.info:
        return np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return None


def load_frames(path: Path) -> tuple[Tensor, Tensor]:
    """IMAGE (N, H, W, 3) and MASK (N, h, w) of every frame the size of the first (an animated GIF or WebP
    gives a batch). A file without alpha gets ComfyUI's placeholder mask, 64x64 zeros, which mask users resize;
    in a file that mixes both, frames without alpha get zeros of their size. MPO files (phone photos with a
    depth frame) give only their first frame."""
    img = open_image(path)
    images: list[Tensor] = []
    masks: list[Tensor | None] = []
    for frame in ImageSequence.Iterator(img):
        frame = _upright(frame)
        rgb = frame.convert("RGB")
        if images and rgb.size != (images[0].shape[2], images[0].shape[1]):
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None])
        alpha = _alpha(frame)
        masks.append(1.0 - torch.from_numpy(alpha) if alpha is not None else None)
        if img.format == "MPO":
            break
    if all(m is None for m in masks):
        return torch.cat(images), torch.zeros(len(images), 64, 64)
    h, w = images[0].shape[1:3]
    return torch.cat(images), torch.stack([torch.zeros(h, w) if m is None else m for m in masks])


def load_channel(path: Path, channel: str) -> Tensor:
    """One channel of the file's first frame as MASK (1, H, W); alpha is inverted (1 = transparent)."""
    if channel not in CHANNELS:
        raise ConfigError(f"channel {channel!r} is not one of {CHANNELS}")
    frame = _upright(open_image(path))
    if frame.getbands() != ("R", "G", "B", "A"):
        frame = frame.convert("RGBA")
    band = channel[0].upper()
    m = torch.from_numpy(np.asarray(frame.getchannel(band), dtype=np.float32) / 255.0)
    return (1.0 - m if band == "A" else m)[None]


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SaveTarget:
    """Where a batch of outputs goes: `folder / f"{stem}_{counter:05}_{suffix}"`, the counter rising per file."""

    folder: Path
    subfolder: str  # relative to the output root, '/'-separated ('' for the root itself)
    stem: str
    counter: int

    def name(self, index: int, suffix: str, batch_number: int = 0) -> str:
        return f"{self.stem.replace('%batch_num%', str(batch_number))}_{self.counter + index:05}_{suffix}"


def _expand(prefix: str, width: int, height: int) -> str:
    """ComfyUI's %width%, %height%, %year%, %month%, %day%, %hour%, %minute%, %second% in a filename prefix (the
    frontend expands %date:...% and %Node.widget% before it sends the prompt)."""
    now = time.localtime()
    for key, value in (("width", width), ("height", height), ("year", now.tm_year), ("month", f"{now.tm_mon:02}"),
                       ("day", f"{now.tm_mday:02}"), ("hour", f"{now.tm_hour:02}"), ("minute", f"{now.tm_min:02}"),
                       ("second", f"{now.tm_sec:02}")):
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def save_target(root: Path, prefix: str, width: int = 0, height: int = 0) -> SaveTarget:
    """The folder, file stem and first counter for `prefix` ("ComfyUI", "portraits/fox_%width%") under `root`.

    The prefix can never leave `root`: '..' parts, absolute paths and subfolders that resolve elsewhere (a
    symlink out) are refused before anything is written.
    """
    if "%" in prefix:
        prefix = _expand(prefix, width, height)
    raw = prefix.replace("\\", "/")
    if not raw.strip("/ ") or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in raw.split("/"):
        raise ConfigError(f"filename_prefix {prefix!r} must be a relative name inside the output folder, without "
                          f"'..' or a leading '/' (e.g. 'ComfyUI' or 'portraits/fox')")
    subfolder, stem = posixpath.split(posixpath.normpath(raw))
    base = root.resolve()
    folder = (base / subfolder).resolve()
    if folder != base and base not in folder.parents:
        raise ConfigError(f"filename_prefix {prefix!r} resolves to {folder}, outside the output folder {base}; "
                          f"use a subfolder that stays inside it")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d+)")
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return SaveTarget(folder, subfolder, stem, max(taken, default=0) + 1)


def to_pil(image: Tensor) -> Image.Image:
    """One IMAGE frame (H, W, C) -> an 8-bit PIL image, truncating as ComfyUI does (255 * x, clipped, floored)
    so the same tensor gives the same file."""
    a = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def png_text(prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None) -> PngImagePlugin.PngInfo:
    """ComfyUI's metadata: `prompt` = json.dumps(the API prompt) and one chunk per extra_pnginfo key
    (`workflow` = the UI graph), each a JSON text."""
    info = PngImagePlugin.PngInfo()
    if prompt:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def webp_exif(frame: Image.Image, prompt: dict[str, Any] | None,
              extra_pnginfo: dict[str, Any] | None) -> Image.Exif:
    """ComfyUI's WebP metadata: "prompt:<json>" in EXIF Model (0x0110) and "key:<json>" per extra_pnginfo key
    counting down from Make (0x010F), which ComfyUI's frontend reads back."""
    exif = frame.getexif()
    if prompt:
        exif[0x0110] = f"prompt:{json.dumps(prompt)}"
    for i, (key, value) in enumerate((extra_pnginfo or {}).items()):
        exif[0x010F - i] = f"{key}:{json.dumps(value)}"
    return exif


def save_png(image: Tensor, path: Path, info: PngImagePlugin.PngInfo, compress_level: int) -> None:
    with atomic(path) as tmp:
        to_pil(image).save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Write to a temporary name beside `path`, then rename: a crash never leaves a truncated file under the real
    name (the temporary name keeps the counter's number reserved)."""
    tmp = path.with_name(f"{path.name}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_animated_webp(images: Tensor, path: Path, fps: float, lossless: bool, quality: int, method: int,
                       prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None) -> None:
    """All frames of an IMAGE batch as one animated WebP at `fps` (Pillow's libwebp; `method` 0-6 trades speed
    for size)."""
    frames = [to_pil(im) for im in images]
    with atomic(path) as tmp:
        frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:], duration=int(1000.0 / fps),
                       lossless=lossless, quality=quality, method=method,
                       exif=webp_exif(frames[0], prompt, extra_pnginfo))
