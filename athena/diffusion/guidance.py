"""Guidance: combinators that turn a conditional model into the samplers' `Denoiser` (STYLE rule 8).

`model(x, sigma, cond) -> x0` is a `ModelSampling.model(...)`; conditioning objects concatenate along the batch
with `cond.cat(other)`. Samplers never see guidance: CFG++ samplers ask a denoiser for its unconditional
estimate through `unconditional_pair` (a denoiser's `pair` method), which for an unguided denoiser is the guided
estimate itself. A wrapper around a guided denoiser keeps CFG++ working by giving a `pair` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self

from athena.diffusion.denoisers import CondModel, append_dims
from athena.diffusion.progress import Denoiser

C = TypeVar("C", bound="Cond")


class Cond(Protocol):
    def cat(self, other: Self) -> Self: ...  # batch-concatenate self then other


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): x0_u + scale (x0_c - x0_u), with cond and uncond in one
    batched forward. `rescale` > 0 applies CFG rescale (Lin et al. 2023, eq. 15-16) in v space. At scale 1 the
    unconditional pass is skipped."""

    def __init__(self, model: CondModel, cond: Any, uncond: Any, scale: float, *, rescale: float = 0.0) -> None:
        self.model, self.cond, self.uncond, self.scale, self.rescale = model, cond, uncond, scale, rescale
        self._both: Any = None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.scale == 1.0 and not self.rescale:
            return self.model(x, sigma, self.cond)
        return self.pair(x, sigma)[0]

    def pair(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(guided x0, unconditional x0)."""
        if self._both is None:
            self._both = self.uncond.cat(self.cond)
        x0_u, x0_c = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), self._both).chunk(2)
        x0 = x0_u + self.scale * (x0_c - x0_u)
        if self.rescale:
            x0 = rescaled(x, sigma, x0, x0_c, self.rescale)
        return x0, x0_u


def rescaled(x: Tensor, sigma: Tensor, x0: Tensor, x0_c: Tensor, phi: float) -> Tensor:
    """CFG rescale: match the guided v prediction's std to the conditional one's, then blend by `phi`.
    With z = x / sqrt(1 + sigma^2) = a x0 + s eps, v = a eps - s x0 and x0 = a z - s v."""
    s2 = append_dims(sigma, x.ndim).float() ** 2
    a, s = (1 + s2) ** -0.5, (s2 / (1 + s2)) ** 0.5
    z = x.float() * a

    def v_of(x0_: Tensor) -> Tensor:
        return (a * z - x0_.float()) / s

    v, v_c = v_of(x0), v_of(x0_c)
    dims = list(range(1, x.ndim))
    v_r = v * (v_c.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True))
    v = phi * v_r + (1 - phi) * v
    return (a * z - s * v).to(x.dtype)


def cfg(model: CondModel, cond: Any, uncond: Any, scale: float, *, rescale: float = 0.0) -> CFGDenoiser:
    """The guided denoiser; see `CFGDenoiser`."""
    return CFGDenoiser(model, cond, uncond, scale, rescale=rescale)


def unconditional_pair(denoise: Denoiser) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(guided, unconditional) x0 for CFG++ samplers: the denoiser's own `pair` if it has one (a `CFGDenoiser`, or
    a wrapper such as the inpainting noise mask that passes its inner one on); else the same estimate twice."""
    pair = getattr(denoise, "pair", None)
    if callable(pair):
        return pair

    def same(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x0 = denoise(x, sigma)
        return x0, x0
    return same
