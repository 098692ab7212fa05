"""What a training run keeps between steps: the EMA of the weights, the LR schedule, and atomic checkpoints."""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from athena.errors import CheckpointError


class EMA:
    """An exponential moving average of parameters, kept in float32 beside the model."""

    def __init__(self, params: Iterable[nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Warm-up as in the LDM code base: the average starts short and lengthens, so early EMA weights are usable.
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: Iterable[nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> list[Tensor]:
        return self.shadow

    def load_state_dict(self, state: list[Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise CheckpointError(f"EMA state has {len(state)} tensors, the model {len(self.shadow)}")
        self.shadow = [t.float().clone() for t in state]


def warmup_cosine(warmup: int, total: int, lr: float, min_lr: float) -> Any:
    """The LR multiplier at a step: linear warm-up to `lr`, then a cosine down to `min_lr` at `total`."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


# --------------------------------------------------------------------------- RNG and checkpoints


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random source the loop draws from: its own generator (noise, timesteps, dropout) and torch's global
    one (layer init, dropout layers). Data order is a function of (seed, epoch) and needs no state."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`: a kill at any moment leaves
    either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint, through the weights-only unpickler (tensors, numbers, strings, containers)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # what torch raises on a torn file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({e.__class__.__name__}: {e}); delete it "
                              f"to start over, or point --out at another run") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not an Athena training checkpoint (no 'step')")
    return state
