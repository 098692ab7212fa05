"""What a sampler reports after each model evaluation, and the token that stops it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from athena.cancel import CancelToken as CancelToken  # re-exported: samplers and callers take it from here

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B,C,H,W), sigma (B,)) -> x0 estimate


@dataclass(frozen=True)
class Step:
    """Step `i` of a sampler: the current sample `x` at noise level `sigma` and the model's `x0` for it."""

    i: int
    sigma: float
    x: Tensor
    x0: Tensor


StepCallback = Callable[[Step], None]
