"""Watching a run: a progress line (loss, it/s, ETA), a CSV log, TensorBoard when installed, and sample grids."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from athena.media.images import to_images

FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s")


def image_grid(images: Tensor, columns: int = 8) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> one image, `columns` wide."""
    tiles = to_images(images)
    w, h = tiles[0].size
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (w * min(columns, len(tiles)), h * rows))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % columns) * w, (i // columns) * h))
    return grid


class Monitor:
    """Appends to `log.csv` (resuming a run continues the same file) and draws one stderr line per log step."""

    def __init__(self, out: Path, total: int, start: int, batch: int, *, tensorboard: bool, quiet: bool = False,
                 stream: Any = sys.stderr, clock: Callable[[], float] = time.perf_counter):
        self.out, self.total, self.batch, self.quiet, self.stream, self.clock = out, total, batch, quiet, stream, clock
        self.started = self.t_last = clock()
        self.step_last, self.rate = start, 0.0  # rate: steps/s, smoothed over the recent log intervals
        self.path = out / "log.csv"
        if start == 0 or not self.path.is_file():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(FIELDS)
        else:  # drop rows past the checkpoint we resumed from (logged after it, then lost with the kill)
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)]
            kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= start]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(kept)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start or None)

    def log(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        now = self.clock()
        # the rate of this interval, and a moving average of it for the ETA: a whole-run mean would carry a slow start
        # (the first step, a sample grid) for the rest of the run
        interval = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.rate = interval if self.rate == 0.0 else 0.7 * self.rate + 0.3 * interval
        self.step_last, self.t_last = step, now
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{grad_norm:.4g}", f"{interval * self.batch:.4g}",
                                    f"{now - self.started:.1f}"])
        if self.writer is not None:
            for k, v in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm)):
                self.writer.add_scalar(f"train/{k}", v, step)
        if not self.quiet:
            eta = (self.total - step) / self.rate if self.rate > 0 else 0.0
            self.stream.write(f"\rstep {step:6d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {self.rate:5.2f} it/s  "
                              f"ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d} ")
            self.stream.flush()

    def grid(self, images: Tensor, step: int) -> Path:
        folder = self.out / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{step:07d}.png"
        image_grid(images).save(path)
        return path

    def note(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(f"\n{text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if not self.quiet:
            self.stream.write("\n")
