"""Linear multistep samplers: one evaluation per step, earlier derivatives reused (LMS, iPNDM, DEIS, RES, UniPC).

All take and return sigma-space samples; `d = (x - x0) / sigma` is the probability-flow ODE derivative.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from athena.diffusion.noise import NoiseSampler, gaussian
from athena.diffusion.progress import Denoiser, StepCallback
from athena.diffusion.substeps import ancestral_step, batch, report, to_d


def _x0(denoise: Denoiser, x: Tensor, sigma: Tensor, i: int, callback: StepCallback | None) -> Tensor:
    x0 = denoise(x, batch(sigma, x))
    report(callback, i, sigma, x, x0)
    return x0


# ---------------------------------------------------------------- LMS (k-diffusion)

def lms_coefficients(order: int, sigmas: np.ndarray, i: int) -> list[float]:
    """Weights of the last `order` derivatives: the integral over [sigma_i, sigma_i+1] of each Lagrange basis
    polynomial through sigma_i, sigma_i-1, ... (exact, where k-diffusion integrates numerically)."""
    coeffs = []
    for j in range(order):
        others = [sigmas[i - k] for k in range(order) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = basis / np.prod([sigmas[i - j] - o for o in others])
        integral = basis.integ()
        coeffs.append(float(integral(sigmas[i + 1]) - integral(sigmas[i])))
    return coeffs


@torch.no_grad()
def lms(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
        callback: StepCallback | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth on a non-uniform sigma grid), up to `order` derivatives."""
    s = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        ds = (ds + [(x - _x0(denoise, x, sigmas[i], i, callback)) / sigmas[i]])[-order:]
        coeffs = lms_coefficients(min(i + 1, order), s, i)
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


# ---------------------------------------------------------------- iPNDM (Zhang & Chen 2023; Zhou et al. 2024)

AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def ipndm(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
          callback: StepCallback | None = None, max_order: int = 4) -> Tensor:
    """Improved PNDM: Adams-Bashforth with fixed coefficients, warming up from Euler."""
    ds: list[Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        x0 = _x0(denoise, x, sigmas[i], i, callback)
        if sigmas[i + 1] == 0:  # the last step lands on the estimate, as ComfyUI's does (not a multistep to 0)
            return x0
        ds = [(x - x0) / sigmas[i]] + ds[:max_order - 1]
        x = x + (sigmas[i + 1] - sigmas[i]) * sum(c * d for c, d in zip(AB[min(max_order, i + 1)], ds))
    return x


def ipndm_v_coefficients(h: list[Tensor]) -> list[Tensor]:
    """Variable-step Adams-Bashforth weights for steps h = [h_n, h_n-1, ...] (Zhou et al. 2024, diff-solvers)."""
    if len(h) == 1:
        return [torch.ones_like(h[0])]
    h0, h1 = h[0], h[1]
    c = [(2 + h0 / h1) / 2, -(h0 / h1) / 2]
    if len(h) == 2:
        return c
    h2 = h[2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if len(h) == 3:
        return [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    h3 = h[3]
    t2 = (((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
          * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [c[0] + t1 + t2,
            c[1] - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
            t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2]


@torch.no_grad()
def ipndm_v(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
            callback: StepCallback | None = None, max_order: int = 4) -> Tensor:
    """iPNDM with variable-step coefficients, exact on non-uniform schedules."""
    ds: list[Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        x0 = _x0(denoise, x, sigmas[i], i, callback)
        if sigmas[i + 1] == 0:  # as in `ipndm`
            return x0
        ds = [(x - x0) / sigmas[i]] + ds[:max_order - 1]
        order = min(max_order, i + 1)
        h = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(order)]
        x = x + h[0] * sum(c * d for c, d in zip(ipndm_v_coefficients(h), ds))
    return x


# ---------------------------------------------------------------- RES (Zhang et al. 2023, arXiv:2308.02157)

@torch.no_grad()
def res_multistep(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                  callback: StepCallback | None = None, eta: float = 0.0, noise: NoiseSampler | None = None) -> Tensor:
    """The second-order multistep exponential integrator of "RES" (refined exponential solver), in log sigma;
    `eta` > 0 makes it ancestral."""
    noise = noise or gaussian(x, generator)
    old_x0 = old_down = None
    for i in range(len(sigmas) - 1):
        x0 = _x0(denoise, x, sigmas[i], i, callback)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0 or old_x0 is None:
            x = x + to_d(x, sigmas[i], x0) * (down - sigmas[i])
        else:
            assert old_down is not None
            h = sigmas[i].log() - down.log()
            c2 = (old_down.log() - sigmas[i - 1].log()) / h  # (t_prev - t_old) / h with t = -log sigma
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = (-h).exp() * x + h * (b1 * x0 + b2 * old_x0)
        if sigmas[i + 1] > 0 and eta:
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
        old_x0, old_down = x0, down
    return x


# ---------------------------------------------------------------- UniPC (Zhao et al. 2023, arXiv:2302.04867)

def _unipc_coefficients(rks: Tensor, hh: Tensor, variant: str, order: int) -> tuple[Tensor, Tensor]:
    """(R, b) of UniPC's order conditions R rho = b, with B(h) = h (bh1) or e^h - 1 (bh2)."""
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k, factorial = torch.expm1(hh) / hh - 1, 1
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b)


def _unipc_update(x: Tensor, x0s: list[Tensor], lams: list[Tensor], lam_t: Tensor, order: int, variant: str,
                  x0_t: Tensor | None) -> Tensor:
    """One UniP predictor step from lams[-1] to lam_t (x0_t None), or the UniC corrector of that step, given the
    model's x0 at the predicted point. Data prediction in sigma space: x_t = (sigma_t / sigma_s) x + (1 - e^-h) x0 + ..."""
    h = lam_t - lams[-1]
    m0 = x0s[-1]
    rks = [(lams[-(k + 1)] - lams[-1]) / h for k in range(1, order)]
    d1s = [(x0s[-(k + 1)] - m0) / rk for k, rk in zip(range(1, order), rks)]
    R, b = _unipc_coefficients(torch.stack(rks + [torch.ones_like(h)]), -h, variant, order)
    b_h = -h if variant == "bh1" else torch.expm1(-h)
    x_t = (-h).exp() * x - torch.expm1(-h) * m0
    if x0_t is None:  # predictor
        if not d1s:
            return x_t
        rhos = torch.tensor([0.5], dtype=h.dtype) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        return x_t - b_h * sum(r * d for r, d in zip(rhos, d1s))
    rhos = torch.tensor([0.5], dtype=h.dtype) if order == 1 else torch.linalg.solve(R, b)
    res = sum((r * d for r, d in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return x_t - b_h * (res + rhos[-1] * (x0_t - m0))


@torch.no_grad()
def uni_pc(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, variant: str = "bh1", order: int = 3) -> Tensor:
    """UniPC multistep (data prediction, lower orders at the end): each evaluation both corrects the last step
    (UniC) and feeds the next prediction (UniP). Like ComfyUI, a final sigma of 0 becomes 0.001 and the order
    is at most len(sigmas) - 2."""
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    n = len(sigmas) - 1
    order = max(1, min(order, n - 1))
    lam = -sigmas.double().log()
    x0s: list[Tensor] = []
    lams: list[Tensor] = []
    x_prev, prev_order = x, 1
    for i in range(n):
        x0 = _x0(denoise, x, sigmas[i], i, callback)
        if i > 0:
            x = _unipc_update(x_prev, x0s, lams, lam[i], prev_order, variant, x0)
        x0s, lams = (x0s + [x0])[-order:], (lams + [lam[i]])[-order:]
        prev_order = min(order, n - i, i + 1)
        x_prev = x
        x = _unipc_update(x, x0s, lams, lam[i + 1], prev_order, variant, None)
    return x


@torch.no_grad()
def uni_pc_bh2(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
               callback: StepCallback | None = None) -> Tensor:
    """UniPC with B(h) = e^h - 1, better at few steps with guidance."""
    return uni_pc(denoise, x, sigmas, generator=generator, callback=callback, variant="bh2")


# ---------------------------------------------------------------- DEIS (Zhang & Chen 2023, arXiv:2204.13902)

def deis_coefficients(sigmas: Tensor, max_order: int, n: int = 10_000) -> list[list[Tensor]]:
    """"t-AB" DEIS weights. Sigmas are mapped to the time t of the VP SDE whose endpoints match EDM's
    (sigma 0.002 at t = 1e-3, sigma 80 at t = 1), and the exponential-integrator weights of each Lagrange basis
    polynomial through the last `order` times are integrated with `n` points (as ComfyUI's port of diff-solvers)."""
    eps_s, s_min, s_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(s_min ** 2 + 1) / eps_s - math.log(s_max ** 2 + 1)) / (eps_s - 1)
    beta_0 = math.log(s_max ** 2 + 1) - 0.5 * beta_d
    beta_1 = beta_d + beta_0
    s = sigmas.double().cpu()
    t = ((beta_0 ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_0) / beta_d
    coeffs: list[list[Tensor]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), n, dtype=torch.float64)
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        integrand = 0.5 * (beta_0 + taus * (beta_1 - beta_0)) / torch.sqrt(alpha * (1 - alpha))
        prev = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - prev[k]) / (prev[j] - prev[k])
            row.append((integrand * basis).sum() * (t[i + 1] - t[i]) / n)
        coeffs.append(row)
    return coeffs


@torch.no_grad()
def deis(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
         callback: StepCallback | None = None, max_order: int = 3) -> Tensor:
    """Diffusion exponential integrator sampler, multistep with up to `max_order` derivatives."""
    coeffs = deis_coefficients(sigmas, max_order)
    ds: list[Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        ds = [(x - _x0(denoise, x, sigmas[i], i, callback)) / sigmas[i]] + ds[:max_order - 1]
        if min(max_order, i + 1) == 1 or sigmas[i + 1] <= 0:
            x = x + (sigmas[i + 1] - sigmas[i]) * ds[0]
        else:
            x = x + sum(c.to(x.dtype) * d for c, d in zip(coeffs[i], ds))
    return x
