"""What a sampler reports after each model evaluation, and the token that stops it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from athena.errors import Cancelled

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B,C,H,W), sigma (B,)) -> x0 estimate


@dataclass(frozen=True)
class Step:
    """Step `i` of a sampler: the current sample `x` at noise level `sigma` and the model's `x0` for it."""

    i: int
    sigma: float
    x: Tensor
    x0: Tensor


StepCallback = Callable[[Step], None]


class CancelToken:
    """Set from any thread; the sampling loop checks it at every step and stops with `Cancelled`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")
