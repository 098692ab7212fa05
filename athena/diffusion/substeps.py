"""Sub-steps shared by the samplers (STYLE rule 16: each exists once)."""

from __future__ import annotations

import torch
from torch import Tensor

from athena.diffusion.denoisers import ModelSampling
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
    if torch.isinf(sigma):
        # From pure noise (a flow model's sigma / alpha at sigma = 1): all fresh noise whatever eta, as ComfyUI's
        # CFG++ steps end up doing (there the split's NaN loses to sigma_next in Python's min).
        return torch.zeros_like(sigma_next), sigma_next
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


# ---------------------------------------------------------------- the noise process (ComfyUI's CONST dispatch)
#
# Most models are variance-exploding in k-diffusion's variable: x = x0 + sigma n, signal scale alpha = 1. Rectified
# flow (SD3, Flux, Wan; ComfyUI's CONST model sampling) is x = (1 - sigma) x0 + sigma n. The ODE samplers need no
# change, since (x - x0) / sigma is the flow's velocity, but ancestral and SDE steps add noise, and their
# exponential-integrator forms live in the half log-SNR lambda = log(alpha / sigma). Samplers that differ take
# `sampling` (None means variance-exploding) and use these.


def is_flow(sampling: ModelSampling | None) -> bool:
    return sampling is not None and sampling.prediction == "flow"


def alpha(sigma: Tensor, sampling: ModelSampling | None) -> Tensor:
    """The signal scale at `sigma`."""
    return 1 - sigma if is_flow(sampling) else torch.ones_like(sigma)


def half_log_snr(sigma: Tensor, sampling: ModelSampling | None) -> Tensor:
    """lambda = log(alpha / sigma)."""
    return sigma.logit().neg() if is_flow(sampling) else sigma.log().neg()


def sigma_at(lam: Tensor, sampling: ModelSampling | None) -> Tensor:
    """The sigma whose half log-SNR is `lam`."""
    return lam.neg().sigmoid() if is_flow(sampling) else lam.neg().exp()


def finite_snr(sigmas: Tensor, sampling: ModelSampling | None) -> Tensor:
    """A flow schedule that starts at sigma = 1 (pure noise, lambda = -inf) starts instead at the sigma 0.01% of
    the way into the model's schedule (ComfyUI's `offset_first_sigma_for_snr`)."""
    if not is_flow(sampling) or len(sigmas) < 2 or sigmas[0] < 1:
        return sigmas
    assert sampling is not None
    first = sampling.sigma(torch.tensor([(1 - 1e-4) * sampling.multiplier], dtype=sigmas.dtype))
    return torch.cat([first.to(sigmas.device), sigmas[1:]])


def ancestral_split(sigma: Tensor, sigma_next: Tensor, eta: float,
                    sampling: ModelSampling | None) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma_down, noise std, rescale): an ancestral step goes deterministically to sigma_down, multiplies by
    `rescale` and adds fresh noise of the given std, landing on the marginal at sigma_next. Variance-exploding:
    k-diffusion's `get_ancestral_step` and rescale 1. Flow (ComfyUI's `_RF` samplers): sigma_down =
    sigma_next (1 + (sigma_next / sigma - 1) eta), rescale alpha_next / alpha_down, and the noise that completes
    the variance, sigma_next^2 - (sigma_down alpha_next / alpha_down)^2."""
    if not is_flow(sampling):
        down, up = ancestral_step(sigma, sigma_next, eta)
        return down, up, torch.ones_like(sigma)
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    rescale = (1 - sigma_next) / (1 - down)
    return down, (sigma_next ** 2 - (down * rescale) ** 2).clamp(min=0) ** 0.5, rescale
