"""Sub-steps shared by the samplers (STYLE rule 16: each exists once)."""

from __future__ import annotations

import torch
from torch import Tensor

from athena.diffusion.noise import NoiseSampler
from athena.diffusion.progress import Step, StepCallback


def to_d(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma."""
    return (x - x0) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step to `sigma_next` into a deterministic step down to sigma_down and fresh noise of std
    sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2 (k-diffusion's `get_ancestral_step`)."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


def churn(x: Tensor, sigma: Tensor, n: int, s_churn: float, noise: NoiseSampler) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022) Alg. 2 "churn": raise the noise to sigma_hat = sigma (1 + gamma) by adding noise."""
    gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_churn > 0 else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


def batch(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar sigma as the (B,) the denoiser takes."""
    return sigma * x.new_ones([x.shape[0]])


def report(callback: StepCallback | None, i: int, sigma: Tensor, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback(Step(i, float(sigma), x, x0))
