"""New concepts for adapter training, and the image measures that show whether a model learned them.

- a new item shape: a five-pointed star drawn on the fashion-colors palette, captioned `a {fg} star on a {bg}
  background` (athena-tiny has never seen a star);
- a new colour word: fashion-colors items on a teal background (not in the palette), captioned with a placeholder
  token (`a {fg} {item} on a <teal> background`).

Shared by the tests (small, fast runs) and `benchmarks/adapters.py` (the figures in docs/adapters.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from athena.training.data import COLOR_NAMES, COLORS, ITEMS, FashionColors

TEAL = (0, 128, 128)
STAR = "a {fg} star on a {bg} background"


def star_mask(size: int = 64, radius: float = 24.0, dy: int = 0, dx: int = 0) -> np.ndarray:
    """A filled five-pointed star (inner radius 0.45 of the outer), centred (plus an offset), as a bool array."""
    c = size / 2
    points = [(c + dx + r * math.sin(k * math.pi / 5), c + dy - r * math.cos(k * math.pi / 5))
              for k in range(10) for r in [radius if k % 2 == 0 else 0.45 * radius]]
    img = Image.new("L", (size, size))
    ImageDraw.Draw(img).polygon(points, fill=255)
    return np.asarray(img) > 127


def write_star_folder(root: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """n star images (colours and a +-2 px jitter drawn from `seed`) with captions in metadata.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fg, bg = rng.choice(len(COLORS), 2, replace=False)
        dy, dx = rng.integers(-2, 3, 2)
        mask = star_mask(size, dy=int(dy), dx=int(dx))[..., None]
        rgb = np.where(mask, COLORS[COLOR_NAMES[fg]], COLORS[COLOR_NAMES[bg]]).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"{i:04d}.png")
        rows.append({"file_name": f"{i:04d}.png", "text": STAR.format(fg=COLOR_NAMES[fg], bg=COLOR_NAMES[bg])})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_colour_folder(root: Path, n: int, token: str, data_dir: str | Path | None = None, seed: int = 0) -> Path:
    """n fashion-colors items (Fashion-MNIST from `data_dir`) on a teal background, captioned with `token`."""
    root.mkdir(parents=True, exist_ok=True)
    data = FashionColors("train", data_dir, seed=seed, limit=n)
    data.palette = torch.cat([data.palette, torch.tensor([TEAL], dtype=torch.float32) / 255])
    data.bg[:] = len(COLORS)  # every background teal
    data.caption = lambda i: ""  # type: ignore[method-assign]  # the captions are written below
    batch = data.batch(range(len(data)))
    rows = []
    for i, img in enumerate(((batch.images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(root / f"{i:04d}.png")
        item, fg = ITEMS[int(data.labels[i])], COLOR_NAMES[int(data.fg[i])]
        rows.append({"file_name": f"{i:04d}.png", "text": f"a {fg} {item} on a {token} background"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def background(images: torch.Tensor) -> torch.Tensor:
    """(N, 3) in [0, 1]: the median colour of each image's 2-pixel border."""
    x = (images.float() + 1) / 2
    border = torch.cat([x[..., :2, :].flatten(2), x[..., -2:, :].flatten(2), x[..., :, :2].flatten(2),
                        x[..., :, -2:].flatten(2)], dim=2)
    return border.median(dim=2).values


def item_pixels(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """(N, H, W) bool: pixels whose colour is further than `threshold` (RGB distance in [0, 1]) from the background."""
    x = (images.float() + 1) / 2
    return (x - background(images)[:, :, None, None]).norm(dim=1) > threshold


def share_in_mask(images: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """(N,): the share of each image's item pixels inside `mask` (0 where an image has no item pixels)."""
    items = item_pixels(images)
    inside = (items & torch.from_numpy(mask)).flatten(1).sum(1)
    return inside / items.flatten(1).sum(1).clamp(min=1)


def colour_distance(images: torch.Tensor, rgb: tuple[int, int, int] = TEAL) -> torch.Tensor:
    """(N,): the distance of each image's background colour from `rgb` (RGB in [0, 1])."""
    return (background(images) - torch.tensor(rgb) / 255).norm(dim=1)


def star_prompts(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    pairs = [rng.choice(len(COLORS), 2, replace=False) for _ in range(n)]
    return [STAR.format(fg=COLOR_NAMES[f], bg=COLOR_NAMES[b]) for f, b in pairs]


def generate_all(pipe, prompts: list[str], seed: int = 0, steps: int = 20) -> torch.Tensor:
    """One image per prompt (seed + i), in [-1, 1], at the model's own resolution."""
    from athena.pipelines.generate import GenerateRequest, generate_pixels

    return torch.cat([generate_pixels(pipe, GenerateRequest(p, steps=steps, seed=seed + i, cfg=7.0))
                      for i, p in enumerate(prompts)])


def star_figures(pipe, lora: Path, n: int = 32, strength: float = 1.0) -> dict[str, float]:
    """Mean share of item pixels inside the reference star, without and with the LoRA, for n star prompts."""
    prompts, mask = star_prompts(n), star_mask()
    base = share_in_mask(generate_all(pipe, prompts), mask).mean().item()
    handle = pipe.load_lora(lora, strength, strength)
    try:
        with_lora = share_in_mask(generate_all(pipe, prompts), mask).mean().item()
    finally:
        handle.remove()
    return {"base": base, "lora": with_lora}


def colour_figures(pipe, n: int = 32, name: str = "teal") -> dict[str, float]:
    """Mean distance of the background from teal: the plain word "teal" (unknown to the base) vs `embedding:name`."""
    rng = np.random.default_rng(2)
    pairs = [(COLOR_NAMES[rng.integers(len(COLORS))], ITEMS[rng.integers(len(ITEMS))]) for _ in range(n)]
    word = [f"a {fg} {item} on a teal background" for fg, item in pairs]
    embedding = [f"a {fg} {item} on a embedding:{name} background" for fg, item in pairs]
    return {"base": colour_distance(generate_all(pipe, word)).mean().item(),
            "ti": colour_distance(generate_all(pipe, embedding)).mean().item()}
