"""The values that flow between nodes, with ComfyUI's conventions where workflows can see them.

| socket | value |
|---|---|
| MODEL | `Model`: a pipeline's U-Net plus the patches that nodes stacked on it (LoRAs, sampling, CFG rescale) |
| CLIP | `Clip`: a pipeline's (or standalone files') text encoders plus LoRAs and the CLIPSetLastLayer choice |
| VAE | `Vae` |
| LATENT | dict: "samples" (B, C, h, w), the raw VAE latent as in ComfyUI; optional "noise_mask", "batch_index" |
| IMAGE | (B, H, W, 3) float32 in [0, 1], channels last, as in ComfyUI |
| MASK | (B, H, W) float32 in [0, 1], 1 = repaint |
| CONDITIONING | tuple of `athena.nodes.conditioning.CondEntry` (= `athena.pipelines.entries.CondEntry`) |
| SIGMAS | 1-D float tensor, high to low, usually ending at 0 |
| SAMPLER | `SamplerRef` |
| NOISE | `NoiseSource` |
| GUIDER | `Guider` |

Values are never changed in place: a cached result may feed several nodes and later runs. Patches are recorded on
a new `Model`/`Clip` and applied only while a sampler or encoder uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from athena.models.vae import AutoencoderKL
from athena.pipelines.pipeline import Pipeline, TextModels


@dataclass(frozen=True)
class LoraUse:
    path: Path
    strength: float


@dataclass(frozen=True)
class Model:
    pipe: Pipeline
    loras: tuple[LoraUse, ...] = ()
    sampling: Any = None  # a ModelSampling that replaces the checkpoint's (ModelSamplingDiscrete)
    cfg_rescale: float = 0.0  # RescaleCFG's multiplier
    options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Clip:
    pipe: Pipeline | TextModels  # a checkpoint's pipeline, or text encoders loaded on their own (CLIPLoader)
    loras: tuple[LoraUse, ...] = ()
    clip_skip: int | None = None  # CLIPSetLastLayer: -1 last layer, -2 penultimate, ...


@dataclass(frozen=True)
class Vae:
    """A VAE and the latent scale/shift of the family it belongs to."""

    vae: AutoencoderKL
    scale: float
    shift: float = 0.0


@dataclass(frozen=True)
class SamplerRef:
    """A sampler by its ComfyUI name (KSamplerSelect)."""

    name: str


@dataclass(frozen=True)
class NoiseSource:
    """The initial noise: drawn from `seed` (RandomNoise), or none at all (DisableNoise)."""

    seed: int = 0
    add: bool = True


@dataclass(frozen=True, eq=False)
class Guider:
    """A model with its conditioning and CFG scale (CFGGuider; BasicGuider has no negative and scale 1)."""

    model: Model
    positive: tuple[Any, ...]
    negative: tuple[Any, ...] = ()
    cfg: float = 1.0
