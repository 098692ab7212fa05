"""Samplers: pure functions `sampler(denoise, x, sigmas, *, generator=None, callback=None) -> x`.

`denoise(x, sigma) -> x0` with sigma of shape (B,); `sigmas` runs from high to low and usually ends in 0.
The names and the mathematics are ComfyUI's (its `comfy/k_diffusion/sampling.py`, which extends Katherine
Crowson's k-diffusion). Samplers know nothing about the model, the conditioning or guidance. Stochastic ones
draw noise only from `generator` (ancestral noise) or from a Brownian tree seeded from it (SDE samplers).
`SAMPLERS` at the bottom is the registry.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Protocol

import torch
from torch import Tensor

from athena.diffusion import multistep, solvers
from athena.diffusion.denoisers import ModelSampling
from athena.diffusion.guidance import unconditional_pair
from athena.diffusion.noise import NoiseSampler, brownian, gaussian, seed_of
from athena.diffusion.progress import Denoiser, StepCallback
from athena.diffusion.substeps import (
    alpha,
    ancestral_split,
    ancestral_step,
    batch,
    churn,
    finite_snr,
    half_log_snr,
    is_flow,
    report,
    sigma_at,
    to_d,
)


class Sampler(Protocol):
    def __call__(self, denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 callback: StepCallback | None = None) -> Tensor: ...


# ---------------------------------------------------------------- Karras et al. (2022)

@torch.no_grad()
def euler(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
          callback: StepCallback | None = None, s_churn: float = 0.0) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Alg. 2)."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas[i], len(sigmas) - 1, s_churn, noise)
        x0 = denoise(x, batch(sigma_hat, x))
        report(callback, i, sigmas[i], x, x0)
        x = x + to_d(x, sigma_hat, x0) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def euler_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                    callback: StepCallback | None = None, eta: float = 1.0,
                    sampling: ModelSampling | None = None) -> Tensor:
    """Ancestral sampling with Euler steps (on a flow model, ComfyUI's `euler_ancestral_RF`)."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        down, up, rescale = ancestral_split(sigmas[i], sigmas[i + 1], eta, sampling)
        x = x + to_d(x, sigmas[i], x0) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


@torch.no_grad()
def heun(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
         callback: StepCallback | None = None, s_churn: float = 0.0) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 2); the last step to 0 is Euler."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas[i], len(sigmas) - 1, s_churn, noise)
        x0 = denoise(x, batch(sigma_hat, x))
        report(callback, i, sigmas[i], x, x0)
        d, dt = to_d(x, sigma_hat, x0), sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoise(x_2, batch(sigmas[i + 1], x)))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def heunpp2(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
            callback: StepCallback | None = None, s_churn: float = 0.0) -> Tensor:
    """Heun++ (ComfyUI): up to three derivative evaluations per step, weighted by sigma / (k * sigma_max)."""
    noise = gaussian(x, generator)
    end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas[i], len(sigmas) - 1, s_churn, noise)
        x0 = denoise(x, batch(sigma_hat, x))
        report(callback, i, sigmas[i], x, x0)
        d, dt = to_d(x, sigma_hat, x0), sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], denoise(x_2, batch(sigmas[i + 1], x)))
        if sigmas[i + 2] == end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        d_3 = to_d(x_3, sigmas[i + 2], denoise(x_3, batch(sigmas[i + 2], x)))
        w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def dpm_2(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
          callback: StepCallback | None = None, s_churn: float = 0.0) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022) in Karras's sigma form: a midpoint step in log sigma."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas[i], len(sigmas) - 1, s_churn, noise)
        x0 = denoise(x, batch(sigma_hat, x))
        report(callback, i, sigmas[i], x, x0)
        d = to_d(x, sigma_hat, x0)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _dpm_2_step(denoise, x, d, sigma_hat, sigmas[i + 1])
    return x


def _dpm_2_step(denoise: Denoiser, x: Tensor, d: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoise(x_2, batch(sigma_mid, x)))
    return x + d_2 * (sigma_next - sigma)


@torch.no_grad()
def dpm_2_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                    callback: StepCallback | None = None, eta: float = 1.0,
                    sampling: ModelSampling | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps (on a flow model, ComfyUI's `dpm_2_ancestral_RF`)."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        down, up, rescale = ancestral_split(sigmas[i], sigmas[i + 1], eta, sampling)
        d = to_d(x, sigmas[i], x0)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            x = _dpm_2_step(denoise, x, d, sigmas[i], down)
            x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


# ---------------------------------------------------------------- DPM-Solver++ (Lu et al. 2022), in t = -log sigma

@torch.no_grad()
def dpmpp_2s_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                       callback: StepCallback | None = None, eta: float = 1.0,
                       sampling: ModelSampling | None = None) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) second-order single steps: a data-prediction step to the midpoint
    in half log-SNR, then from x to sigma_down with the midpoint's estimate (on a flow model, ComfyUI's
    `dpmpp_2s_ancestral_RF`, which also takes 0.9999 as the midpoint of a step from sigma = 1)."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        down, up, rescale = ancestral_split(sigmas[i], sigmas[i + 1], eta, sampling)
        if sigmas[i + 1] == 0 or down == 0:
            x = x + to_d(x, sigmas[i], x0) * (down - sigmas[i])
        else:
            if is_flow(sampling) and sigmas[i] == 1:
                mid = torch.full_like(sigmas[i], 0.9999)
            else:
                mid = sigma_at(half_log_snr(sigmas[i], sampling).lerp(half_log_snr(down, sampling), 0.5), sampling)
            x_2 = (mid / sigmas[i]) * x + (1 - mid / sigmas[i]) * x0
            x0_2 = denoise(x_2, batch(mid, x))
            x = (down / sigmas[i]) * x + (1 - down / sigmas[i]) * x0_2
        if sigmas[i + 1] > 0 and eta:
            x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


@torch.no_grad()
def dpmpp_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
              callback: StepCallback | None = None, eta: float = 1.0, r: float = 0.5,
              noise: NoiseSampler | None = None, sampling: ModelSampling | None = None) -> Tensor:
    """DPM-Solver++ (stochastic), two evaluations per step in half log-SNR, Brownian-tree noise."""
    noise = noise or brownian(x, sigmas, seed_of(generator))
    sigmas = finite_snr(sigmas, sampling)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], sampling), half_log_snr(sigmas[i + 1], sampling)
        lam_mid = lam_s + r * (lam_t - lam_s)
        sigma_mid = sigma_at(lam_mid, sampling)
        a_s, a_mid, a_t = (alpha(v, sampling) for v in (sigmas[i], sigma_mid, sigmas[i + 1]))
        # the tree is queried where the references query it: k-diffusion at exp(-lambda), ComfyUI's flow at sigma
        q_s, q_t = (sigmas[i], sigmas[i + 1]) if is_flow(sampling) else (sigma_at(lam_s, None), sigma_at(lam_t, None))
        # each sub-step is an ancestral one in the variance-exploding variable sigma / alpha = exp(-lambda)
        down, up = ancestral_step(lam_s.neg().exp(), lam_mid.neg().exp(), eta)
        h = -down.log() - lam_s
        x_2 = (a_mid / a_s) * (-h).exp() * x - a_mid * (-h).expm1() * x0
        x_2 = x_2 + a_mid * noise(q_s, sigma_mid) * up
        x0_2 = denoise(x_2, batch(sigma_mid, x))
        down, up = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h = -down.log() - lam_s
        x0_d = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * x0_2
        x = (a_t / a_s) * (-h).exp() * x - a_t * (-h).expm1() * x0_d
        x = x + a_t * noise(q_s, q_t) * up
    return x


@torch.no_grad()
def dpmpp_2m(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
             callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M): multistep, one evaluation per step, second order in log sigma."""
    old_x0 = None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_x0 is not None and sigmas[i + 1] != 0:
            r = (t + sigmas[i - 1].log()) / h
            x0_d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        else:
            x0_d = x0
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * x0_d
        old_x0 = x0
    return x


@torch.no_grad()
def dpmpp_2m_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 callback: StepCallback | None = None, eta: float = 1.0, solver: str = "midpoint",
                 noise: NoiseSampler | None = None, sampling: ModelSampling | None = None) -> Tensor:
    """DPM-Solver++(2M) SDE (midpoint or heun correction) in half log-SNR, Brownian-tree noise."""
    noise = noise or brownian(x, sigmas, seed_of(generator))
    sigmas = finite_snr(sigmas, sampling)
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = half_log_snr(sigmas[i + 1], sampling) - half_log_snr(sigmas[i], sampling)
            h_eta = h * (eta + 1)
            a_t = alpha(sigmas[i + 1], sampling)
            phi = (-h_eta).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + a_t * phi * x0
            if old_x0 is not None:
                assert h_last is not None
                scale = (phi / (-h_eta) + 1) if solver == "heun" else 0.5 * phi
                x = x + a_t * scale * (1 / (h_last / h)) * (x0 - old_x0)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
            h_last = h
        old_x0 = x0
    return x


@torch.no_grad()
def dpmpp_3m_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 callback: StepCallback | None = None, eta: float = 1.0, noise: NoiseSampler | None = None,
                 sampling: ModelSampling | None = None) -> Tensor:
    """DPM-Solver++(3M) SDE in half log-SNR, Brownian-tree noise."""
    noise = noise or brownian(x, sigmas, seed_of(generator))
    sigmas = finite_snr(sigmas, sampling)
    x0_1 = x0_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = half_log_snr(sigmas[i + 1], sampling) - half_log_snr(sigmas[i], sampling)
            h_eta = h * (eta + 1)
            a_t = alpha(sigmas[i + 1], sampling)
            # sigma_t / sigma_s e^(-h eta), written as k-diffusion writes it for alpha = 1
            x = a_t / alpha(sigmas[i], sampling) * (-h_eta).exp() * x + a_t * (-h_eta).expm1().neg() * x0
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                assert h_1 is not None and x0_1 is not None and x0_2 is not None
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + a_t * phi_2 * d1 - a_t * (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                assert x0_1 is not None
                x = x + a_t * phi_2 * (x0 - x0_1) / (h_1 / h)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
            h_1, h_2 = h, h_1
        x0_1, x0_2 = x0, x0_1
    return x


# ---------------------------------------------------------------- DDPM / LCM (variance-preserving steps)

@torch.no_grad()
def ddpm(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
         callback: StepCallback | None = None) -> Tensor:
    """Ancestral DDPM (Ho et al. 2020): the posterior mean plus its variance, in the unscaled VP variable."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, batch(sigma, x))
        report(callback, i, sigma, x, x0)
        a_bar, a_bar_next = 1 / (sigma ** 2 + 1), 1 / (sigma_next ** 2 + 1)
        alpha = a_bar / a_bar_next
        eps = (x - x0) / sigma
        z = x / (1 + sigma ** 2).sqrt()
        z = (1 / alpha).sqrt() * (z - (1 - alpha) * eps / (1 - a_bar).sqrt())
        if sigma_next > 0:
            z = z + ((1 - alpha) * (1 - a_bar_next) / (1 - a_bar)).sqrt() * noise(sigma, sigma_next)
            z = z * (1 + sigma_next ** 2).sqrt()
        x = z
    return x


@torch.no_grad()
def lcm(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
        callback: StepCallback | None = None, sampling: ModelSampling | None = None) -> Tensor:
    """Latent Consistency Model sampling (Luo et al. 2023): jump to x0, then re-noise to the next sigma."""
    noise = gaussian(x, generator)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        x = x0
        if sigmas[i + 1] > 0:
            x = alpha(sigmas[i + 1], sampling) * x0 + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


# ---------------------------------------------------------------- CFG++ (Chung et al. 2024)

@torch.no_grad()
def euler_cfg_pp(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 callback: StepCallback | None = None, sampling: ModelSampling | None = None) -> Tensor:
    """Euler with CFG++: step from the guided x0 along the unconditional noise direction."""
    return euler_ancestral_cfg_pp(denoise, x, sigmas, generator=generator, callback=callback, eta=0.0,
                                  sampling=sampling)


@torch.no_grad()
def euler_ancestral_cfg_pp(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                           callback: StepCallback | None = None, eta: float = 1.0,
                           sampling: ModelSampling | None = None) -> Tensor:
    """Ancestral Euler with CFG++, the ancestral split taken in sigma / alpha (DDIM's stochastic step)."""
    noise = gaussian(x, generator)
    pair = unconditional_pair(denoise)
    for i in range(len(sigmas) - 1):
        x0, x0_u = pair(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        if sigmas[i + 1] == 0:
            x = x0
            continue
        a_s, a_t = alpha(sigmas[i], sampling), alpha(sigmas[i + 1], sampling)
        down, up = ancestral_step(sigmas[i] / a_s, sigmas[i + 1] / a_t, eta)
        x = a_t * x0 + a_t * down * to_d(x, sigmas[i], a_s * x0_u)
        if eta:
            x = x + a_t * noise(sigmas[i], sigmas[i + 1]) * up
    return x


@torch.no_grad()
def dpmpp_2m_cfg_pp(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                    callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M) with CFG++: the exponential step is taken from the unconditional x0."""
    pair = unconditional_pair(denoise)
    old_x0_u = None
    for i in range(len(sigmas) - 1):
        x0, x0_u = pair(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        exp_h = sigmas[i + 1] / sigmas[i]  # e^-h, h = log(sigma / sigma_next)
        if old_x0_u is None or sigmas[i + 1] == 0:
            mix = -exp_h * x0_u
        else:
            h, h_last = (sigmas[i] / sigmas[i + 1]).log(), (sigmas[i - 1] / sigmas[i]).log()
            mix = -exp_h * x0_u - (-h).expm1() * h / (2 * h_last) * (x0 - old_x0_u)
        x = x0 + mix + exp_h * x
        old_x0_u = x0_u
    return x


# ---------------------------------------------------------------- ER-SDE (Cui et al. 2023, arXiv:2309.06169)

@torch.no_grad()
def er_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, max_stage: int = 3, noise: NoiseSampler | None = None,
           sampling: ModelSampling | None = None) -> Tensor:
    """Extended reverse-time SDE solver, up to third order, with ComfyUI's default noise scale function
    f(l) = l (e^(l^0.3) + 10); the integrals of 1/f are taken with 200 rectangle points as in the reference."""
    noise = noise or gaussian(x, generator)
    sigmas = finite_snr(sigmas, sampling)
    alphas = alpha(sigmas, sampling)
    lams = sigmas / alphas  # ER-SDE's lambda, exp(-half log-SNR)
    points = torch.arange(0, 200, dtype=torch.float32, device=x.device)

    def scale(v: Tensor) -> Tensor:
        return v * ((v ** 0.3).exp() + 10.0)

    old_x0 = old_x0_d = None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, batch(sigmas[i], x))
        report(callback, i, sigmas[i], x, x0)
        if sigmas[i + 1] == 0:
            x = x0
        else:
            lam_s, lam_t = lams[i], lams[i + 1]
            a_t = alphas[i + 1]
            r = scale(lam_t) / scale(lam_s)
            x = a_t / alphas[i] * r * x + a_t * (1 - r) * x0
            stage = min(max_stage, i + 1)
            if stage >= 2:
                assert old_x0 is not None
                dt = lam_t - lam_s
                step = -dt / 200
                pos = lam_t + points * step
                x0_d = (x0 - old_x0) / (lam_s - lams[i - 1])
                x = x + a_t * (dt + (1 / scale(pos)).sum() * step * scale(lam_t)) * x0_d
                if stage >= 3:
                    assert old_x0_d is not None
                    s_u = ((pos - lam_s) / scale(pos)).sum() * step
                    x0_u = (x0_d - old_x0_d) / ((lam_s - lams[i - 2]) / 2)
                    x = x + a_t * (dt ** 2 / 2 + s_u * scale(lam_t)) * x0_u
                old_x0_d = x0_d
            x = x + a_t * noise(sigmas[i], sigmas[i + 1]) * (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_x0 = x0
    return x


# ---------------------------------------------------------------- registry (ComfyUI's names)

SAMPLERS: dict[str, Sampler] = {
    "euler": euler,
    "euler_cfg_pp": euler_cfg_pp,
    "euler_ancestral": euler_ancestral,
    "euler_ancestral_cfg_pp": euler_ancestral_cfg_pp,
    "heun": heun,
    "heunpp2": heunpp2,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": multistep.lms,
    "dpm_fast": solvers.dpm_fast,
    "dpm_adaptive": solvers.dpm_adaptive,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_cfg_pp": dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "ddpm": ddpm,
    "lcm": lcm,
    "ipndm": multistep.ipndm,
    "ipndm_v": multistep.ipndm_v,
    "deis": multistep.deis,
    "res_multistep": multistep.res_multistep,
    "er_sde": er_sde,
    # DDIM (eta 0) is exactly Euler in sigma space: x_next = x0 + sigma_next * eps. ComfyUI maps it the same way.
    "ddim": euler,
    "uni_pc": multistep.uni_pc,
    "uni_pc_bh2": multistep.uni_pc_bh2,
}

# Samplers whose schedule is computed for steps + 1 and loses its second-to-last sigma (as in ComfyUI), because
# their last steps would otherwise be wasted on a tiny interval.
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def for_model(sampler: Sampler, sampling: ModelSampling) -> Sampler:
    """`sampler` told the model's noise process when it takes it (the ancestral, SDE, CFG++ and LCM samplers, whose
    steps differ on a flow model; ComfyUI switches them on CONST model sampling)."""
    if "sampling" in inspect.signature(sampler).parameters:
        fn: Any = sampler  # the Sampler protocol does not name the keyword
        return functools.partial(fn, sampling=sampling)
    return sampler
