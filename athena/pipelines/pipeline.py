"""`Pipeline`: the loaded models of one checkpoint, and `load`, the Python entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from athena.checkpoints.detect import Family
from athena.checkpoints.io import Weights
from athena.checkpoints.load import dtype_of, open_checkpoint, with_family
from athena.models.unet import UNet
from athena.models.vae import AutoencoderKL


@dataclass
class Pipeline:
    """A checkpoint's models, ready for inference. Text encoders' weights are kept for the text module."""

    family: Family
    unet: UNet
    vae: AutoencoderKL | None
    text_weights: dict[str, Weights] = field(default_factory=dict)
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def load(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
         family: str | None = None) -> Pipeline:
    """Load a single-file checkpoint or a diffusers folder; `family` (sd1, sd2, sdxl, ...) is checked if given."""
    ckpt = with_family(open_checkpoint(path), family)
    dt = dtype_of(dtype)
    unet = ckpt.load_unet(device, dt)
    vae = ckpt.load_vae(device, dt) if ckpt.vae is not None else None
    return Pipeline(ckpt.family, unet, vae, ckpt.text, ckpt.path)
