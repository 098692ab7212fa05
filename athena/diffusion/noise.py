"""Noise for stochastic samplers, drawn only from an explicit generator or seed (never the global RNG)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # (sigma, sigma_next) -> unit Gaussian noise shaped like x


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """`generator`, or a CPU generator seeded with 0 so that a call without one is still reproducible."""
    return generator if generator is not None else torch.Generator("cpu").manual_seed(0)


def gaussian(x: Tensor, generator: torch.Generator | None) -> NoiseSampler:
    """Independent N(0, 1) draws shaped like `x`, on the generator's device (CPU noise reproduces on any GPU)."""
    g = default_generator(generator)

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device).to(x.device)
    return sample


def brownian(x: Tensor, sigmas: Tensor, seed: int) -> NoiseSampler:
    """Brownian-tree noise over [min positive sigma, max sigma] (the "brownian" noise of ComfyUI/k-diffusion
    SDE samplers): the increment between two sigmas does not depend on the step sizes chosen, so an SDE
    sampler converges as its steps shrink. Built on the CPU from `seed`, so results do not depend on the device."""
    import torchsde  # imported here: only SDE samplers need it, and it loads scipy

    lo, hi = sigmas[sigmas > 0].min().cpu(), sigmas.max().cpu()
    tree = torchsde.BrownianTree(lo, torch.zeros(x.shape, dtype=x.dtype), hi, entropy=seed)

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        a, b = torch.as_tensor(sigma).cpu(), torch.as_tensor(sigma_next).cpu()
        sign = 1 if a < b else -1
        with warnings.catch_warnings():  # sigmas recomputed as exp(-t) land a rounding error outside the tree
            warnings.simplefilter("ignore", UserWarning)
            w = tree(min(a, b), max(a, b)) * sign
        return (w / (b - a).abs().sqrt()).to(x.device)
    return sample


def seed_of(generator: torch.Generator | None) -> int:
    """The seed that SDE samplers give their Brownian tree: the generator's, so one job seed drives all noise."""
    return default_generator(generator).initial_seed()
