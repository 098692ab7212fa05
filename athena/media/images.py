"""Images as tensors: (B, 3, H, W) in [-1, 1] for the VAE, masks as (1, 1, H, W) in [0, 1] (1 = repaint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from athena.errors import ConfigError


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """A PIL image from a path or an image, with a clear error for a missing or unreadable file."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"image {str(path)!r} does not exist; pass the path of a PNG, JPEG or WebP file")
    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise ConfigError(f"{path.name}: not a readable image ({e}); pass a PNG, JPEG or WebP file") from None
    return img


def to_tensor(img: Image.Image) -> Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB images, rounded as diffusers and ComfyUI do (x * 255 + 0.5, clipped)."""
    a = ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((im * 255 + 0.5).clip(0, 255).astype(np.uint8)) for im in a]


def to_mask(img: Image.Image) -> Tensor:
    """A mask image -> (1, 1, H, W) in [0, 1], 1 = repaint. White repaints; an image with transparency repaints
    its transparent pixels (ComfyUI's convention for a painted-out alpha channel)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        if alpha.min() < 1.0:
            return torch.from_numpy(1.0 - alpha)[None, None]
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]


def resize(img: Image.Image, width: int, height: int) -> Image.Image:
    return img if img.size == (width, height) else img.resize((width, height), Image.Resampling.LANCZOS)


def pad_for_outpaint(img: Image.Image, left: int, top: int, right: int, bottom: int,
                     feather: int = 0) -> tuple[Image.Image, Tensor]:
    """The image on a grey canvas grown by the given pixels, and the mask of the new area (1 = paint), with its
    edge into the old image ramped over `feather` pixels (ComfyUI's ImagePadForOutpaint)."""
    if min(left, top, right, bottom) < 0:
        raise ConfigError(f"outpaint padding must be >= 0 pixels, got {(left, top, right, bottom)}")
    w, h = img.size
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), (128, 128, 128))
    canvas.paste(img.convert("RGB"), (left, top))
    mask = torch.ones(1, 1, canvas.height, canvas.width)
    inner = torch.zeros(h, w)
    if feather > 0:
        ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
        dist = torch.full((h, w), float(feather))
        for pad, d in ((top, ys[:, None]), (bottom, (h - 1 - ys)[:, None]), (left, xs[None]), (right, (w - 1 - xs)[None])):
            if pad:
                dist = torch.minimum(dist, d.expand(h, w))
        inner = ((feather - dist) / feather).clamp(0, 1) ** 2
    mask[0, 0, top:top + h, left:left + w] = inner
    return canvas, mask
