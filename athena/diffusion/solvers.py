"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in its fixed-step ("fast") and adaptive forms.

The solver works in t = -log sigma on the noise prediction eps = (x - x0) / sigma. Like ComfyUI, both samplers
integrate from sigmas[0] down to the smallest positive sigma and ignore the rest of the schedule: dpm_fast
spends len(sigmas) - 1 evaluations, dpm_adaptive chooses its own steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from athena.diffusion.noise import NoiseSampler, gaussian
from athena.diffusion.progress import Denoiser, Step, StepCallback
from athena.diffusion.substeps import ancestral_step


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _eps(denoise: Denoiser, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(eps, x0) at time t."""
    x0 = denoise(x, _sigma(t) * x.new_ones([x.shape[0]]))
    return (x - x0) / _sigma(t), x0


def _step_1(x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor) -> Tensor:
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def _step_2(denoise: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, r1: float = 0.5,
            eps_r1: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2; returns (x_next, eps at the intermediate point) so a third-order step can reuse it."""
    h = t_next - t
    if eps_r1 is None:
        s1 = t + r1 * h
        eps_r1 = _eps(denoise, x - _sigma(s1) * (r1 * h).expm1() * eps, s1)[0]
    x_next = x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    return x_next, eps_r1


def _step_3(denoise: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor,
            eps_r1: Tensor | None = None) -> Tensor:
    """DPM-Solver-3 with r1 = 1/3, r2 = 2/3."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
        eps_r1 = _eps(denoise, x - _sigma(s1) * (r1 * h).expm1() * eps, s1)[0]
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = _eps(denoise, u2, s2)[0]
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _ends(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(t_start, t_end): from sigmas[0] to the smallest positive sigma."""
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    return -sigmas[0].float().log(), -sigma_min.float().log()


@torch.no_grad()
def dpm_fast(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
             callback: StepCallback | None = None, eta: float = 0.0, noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-fast: len(sigmas) - 1 evaluations spread over uniform steps in t, mostly third order."""
    nfe = len(sigmas) - 1
    if nfe < 1:
        return x
    noise = noise or gaussian(x, generator)
    t_start, t_end = _ends(sigmas)
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, up = _ancestral(t, t_next, t_end, eta)
        eps, x0 = _eps(denoise, x, t)
        if callback is not None:
            callback(Step(i, float(_sigma(t)), x, x0))
        if order == 1:
            x = _step_1(x, t, t_down, eps)
        elif order == 2:
            x = _step_2(denoise, x, t, t_down, eps)[0]
        else:
            x = _step_3(denoise, x, t, t_down, eps)
        if eta:
            x = x + up * noise(_sigma(t), _sigma(t_next))
    return x


def _ancestral(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(t to step down to, noise std to add) for an ancestral step from t to t_next."""
    if not eta:
        return t_next, torch.zeros(())
    s_next = _sigma(t_next)
    down, _ = ancestral_step(_sigma(t), s_next, eta)
    t_down = torch.minimum(t_end, -down.log())  # the step down may not pass the end; the noise makes up the rest
    return t_down, (s_next ** 2 - _sigma(t_down) ** 2) ** 0.5


@torch.no_grad()
def dpm_adaptive(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 callback: StepCallback | None = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                 h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                 accept_safety: float = 0.81, eta: float = 0.0, noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-12/23 with embedded error estimates and a PID step-size controller."""
    if len(sigmas) <= 1:
        return x
    noise = noise or gaussian(x, generator)
    s, t_end = _ends(sigmas)
    pid = _PID(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    x_prev, steps = x, 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + pid.h)
        t_down, up = _ancestral(s, t, t_end, eta)
        eps, x0 = _eps(denoise, x, s)
        if order == 2:
            x_low = _step_1(x, s, t_down, eps)
            x_high = _step_2(denoise, x, s, t_down, eps)[0]
        else:
            x_low, eps_r1 = _step_2(denoise, x, s, t_down, eps, r1=1 / 3)
            x_high = _step_3(denoise, x, s, t_down, eps, eps_r1)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high + up * noise(_sigma(s), _sigma(t)) if eta else x_high
            s = t
        if callback is not None:
            callback(Step(steps, float(_sigma(s)), x, x0))
        steps += 1
    return x


class _PID:
    """PID step-size control for the adaptive solver (Söderlind 2003), with k-diffusion's arctan limiter."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b[0] * self.errs[1] ** self.b[1] * self.errs[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept
