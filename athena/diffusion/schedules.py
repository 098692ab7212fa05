"""Noise schedules: `steps` sigmas from high to low, then a final 0 (ComfyUI's `SCHEDULER_NAMES`).

`SCHEDULERS[name](model_sampling, steps)` gives the same sigmas as ComfyUI's scheduler of that name for the same
model sampling. The continuous schedules are also plain functions of (n, sigma_min, sigma_max).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from athena.diffusion.denoisers import ModelSampling
from athena.errors import ConfigError

Scheduler = Callable[[ModelSampling, int], Tensor]


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# ---------------------------------------------------------------- continuous schedules

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: uniform steps in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform steps in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform steps in arctan(sigma) (Sabour et al. 2024, "Align Your Steps", eq. for the KL-optimal schedule)."""
    w = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return append_zero((w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan())


# ---------------------------------------------------------------- schedules over the model's sigma table

def normal(ms: ModelSampling, steps: int, *, sgm: bool = False) -> Tensor:
    """Uniform in timestep from the first to the last trained step (interpolating in log sigma). `sgm` spaces
    steps + 1 points and drops the last, as SGM's (SDXL's reference) uniform discretisation does."""
    start = float(ms.timestep(torch.tensor([ms.sigma_max]))[0])
    end = float(ms.timestep(torch.tensor([ms.sigma_min]))[0])
    append = True
    if sgm:
        ts = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(torch.tensor([end]))[0]), 0, abs_tol=1e-5):
            steps, append = steps + 1, False  # the table already ends at 0
        ts = torch.linspace(start, end, steps)
    sigmas = torch.stack([ms.sigma(t.reshape(1))[0] for t in ts])
    return append_zero(sigmas) if append else sigmas


def sgm_uniform(ms: ModelSampling, steps: int) -> Tensor:
    return normal(ms, steps, sgm=True)


def simple(ms: ModelSampling, steps: int) -> Tensor:
    """Every (N/steps)-th sigma of the table, from the top ("trailing" spacing in diffusers)."""
    stride = len(ms.sigmas) / steps
    return append_zero(torch.stack([ms.sigmas[-(1 + int(i * stride))] for i in range(steps)]).float())


def ddim_uniform(ms: ModelSampling, steps: int) -> Tensor:
    """The original DDIM's uniform timesteps: every (N // steps)-th table sigma from index 1 upwards."""
    if math.isclose(float(ms.sigmas[1]), 0, abs_tol=1e-5):
        steps, sigmas = steps + 1, []
    else:
        sigmas = [0.0]
    sigmas += [float(s) for s in ms.sigmas[1::max(len(ms.sigmas) // steps, 1)]]
    return torch.tensor(sigmas[::-1], dtype=torch.float32)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """Timesteps at Beta(alpha, beta) quantiles, denser at both ends (Lee et al. 2024, "Beta Sampling is All
    You Need"); repeated timesteps are dropped."""
    from scipy.stats import (
        beta as beta_dist,  # scipy is heavy to import; only this schedule needs it
    )

    last = len(ms.sigmas) - 1
    ts = np.rint(beta_dist.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * last)
    picked = [int(t) for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    return append_zero(ms.sigmas[picked].float())


def linear_quadratic(ms: ModelSampling, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> Tensor:
    """Linear in sigma/sigma_max for the first half, then quadratic (Mochi's schedule, in ComfyUI's form)."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        lin = steps // 2 if linear_steps is None else linear_steps
        quad = steps - lin
        diff = lin - threshold_noise * steps
        q_coef = diff / (lin * quad ** 2)
        l_coef = threshold_noise / lin - 2 * diff / quad ** 2
        const = q_coef * lin ** 2
        rising = [i * threshold_noise / lin for i in range(lin)]
        rising += [q_coef * i ** 2 + l_coef * i + const for i in range(lin, steps)]
        fractions = [1.0 - f for f in rising + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * ms.sigma_max


def _continuous(fn: Callable[[int, float, float], Tensor]) -> Scheduler:
    def scheduler(ms: ModelSampling, steps: int) -> Tensor:
        return fn(steps, ms.sigma_min, ms.sigma_max)
    scheduler.__doc__ = fn.__doc__
    return scheduler


SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": _continuous(karras),
    "exponential": _continuous(exponential),
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": _continuous(kl_optimal),
}


def sigmas_for(scheduler: str, ms: ModelSampling, steps: int, *, denoise: float = 1.0,
               discard_penultimate: bool = False) -> Tensor:
    """The sigmas of `steps` steps, as ComfyUI's KSampler computes them. `denoise` < 1 (img2img strength) runs the
    same scheduler over int(steps / denoise) steps and keeps the last steps + 1 sigmas. `discard_penultimate`
    schedules one step more and drops the second-to-last sigma (ComfyUI does this for DPM-2 and UniPC)."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if not 0 < denoise <= 1:
        raise ConfigError(f"denoise (strength) must be in (0, 1], got {denoise}")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    sigmas = SCHEDULERS[scheduler](ms, total + int(discard_penultimate))
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas[-(steps + 1):]
