"""The training run's config: one dataclass, saved as JSON beside the checkpoint, every field a CLI flag."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from athena.errors import ConfigError

Task = Literal["ddpm", "vae", "t2i", "lora", "ti"]
TASKS: tuple[str, ...] = typing.get_args(Task)


@dataclass(frozen=True)
class TrainConfig:
    task: Task = "t2i"  # ddpm: pixel U-Net; vae: KL autoencoder; t2i: latent U-Net + CLIP; lora, ti: adapters of --base
    dataset: str = "fashion-colors"  # fashion-mnist, fashion-colors, or a folder of images with captions
    data_dir: str | None = None  # where Fashion-MNIST's IDX files are (default: Debian's dataset-fashion-mnist)
    limit: int | None = None  # use only the first N items
    out: str = "runs/train"
    resolution: int = 64
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast on a GPU that has it, else fp32
    # optimisation
    steps: int = 4000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # diffusion objective (ddpm, t2i)
    prediction: Literal["eps", "v", "flow"] = "eps"
    min_snr_gamma: float | None = None  # min-SNR-gamma loss weighting (5.0 is the paper's); None = plain MSE
    cond_dropout: float = 0.1  # drop the label/caption this often, for classifier-free guidance
    class_conditional: bool = True  # ddpm on a labelled dataset
    # models
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention: tuple[int, ...] = (1, 1)  # transformer depth per level
    text_width: int = 128
    text_layers: int = 2
    vae: str | None = None  # t2i: the autoencoder (a `athena train --task vae` output .safetensors); vae: start from it
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2)
    vae_res_blocks: int = 1
    kl_weight: float = 1e-6
    cache_latents: bool = True  # t2i, lora, ti: encode the dataset once, then train on the cached latents
    # adapters (lora, ti) of a frozen SD1.x base
    base: str = "athena-tiny"  # the base checkpoint: a path, or the bundled athena-tiny
    lora_rank: int = 8
    lora_alpha: float = 8.0  # the update is scaled by lora_alpha / lora_rank
    lora_targets: str = "attn,ff"  # comma list of attn, ff, proj, conv (U-Net layers to adapt)
    lora_text: bool = False  # also adapt the text encoder's attention and MLP layers
    ti_token: str = "<concept>"  # the placeholder word the captions use for the new token
    ti_vectors: int = 1  # vectors the new token is made of
    ti_init: str | None = None  # a word whose token embedding starts the vectors (default: the mean embedding)
    # monitoring
    log_every: int = 10
    sample_every: int = 500
    save_every: int = 500
    tensorboard: bool = True  # also log to TensorBoard when the package is installed

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {list(TASKS)}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "sample_every", "log_every", "resolution"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.lora_rank < 1 or self.ti_vectors < 1:
            raise ConfigError(f"lora_rank={self.lora_rank} and ti_vectors={self.ti_vectors} must be >= 1")
        if len(self.attention) != len(self.channel_mult):
            raise ConfigError(f"attention={self.attention} needs one depth per level of channel_mult={self.channel_mult}")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the training config {path} ({e})") from None
        return from_mapping(data)


def from_mapping(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown training options {unknown}; the options are {sorted(known)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return replace(base or TrainConfig(), **values)


# --------------------------------------------------------------------------- CLI flags from the fields


def _parse_optional(kind: Any) -> tuple[Any, bool]:
    """(the inner type, whether None is allowed) of `X | None`."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return kind, False


def _converter(name: str, kind: Any) -> Any:
    inner, optional = _parse_optional(kind)

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        origin = typing.get_origin(inner)
        try:
            if inner is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("1", "true", "yes")
            if origin is tuple:
                return tuple(int(v) for v in text.replace(" ", "").strip("()[]").split(",") if v)
            if origin is Literal:
                if text not in typing.get_args(inner):
                    raise ValueError(f"not one of {list(typing.get_args(inner))}")
                return text
            return inner(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')}={text!r}: {e}") from None
    return convert


def add_flags(ap: argparse.ArgumentParser) -> None:
    """One `--name=value` flag per field (underscores or dashes); a flag not given leaves no attribute."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flags = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})
        ap.add_argument(*flags, dest=f.name, type=_converter(f.name, hints[f.name]), default=argparse.SUPPRESS,
                        metavar="VALUE", help=f"default {getattr(TrainConfig(), f.name)!r}")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}


