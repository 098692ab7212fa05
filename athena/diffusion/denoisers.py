"""Parameterisations: how a network's output becomes an x0 estimate, and how sigma maps to its timestep input.

Everything here works in k-diffusion's sigma space, `x = x0 + sigma * noise` (for flow models,
`x = (1 - sigma) * x0 + sigma * noise`). A `ModelSampling` turns a network `net(x_in, t, cond)` into
`model(x, sigma, cond) -> x0`; with the conditioning bound (see `guidance`) that is the samplers'
`Denoiser` contract. The same object defines the training `loss`, so sampling and training share one
definition of the maths (Karras et al. 2022, Table 1; ComfyUI `model_sampling.py` for the conventions).

| prediction | c_skip | c_out | c_in | timestep |
|---|---|---|---|---|
| eps (DDPM) | 1 | -sigma | 1/sqrt(sigma^2+1) | nearest of the 1000 discrete steps |
| v | 1/(sigma^2+1) | sigma/sqrt(sigma^2+1) | 1/sqrt(sigma^2+1) | same |
| x0 | 0 | 1 | 1/sqrt(sigma^2+1) | same |
| flow (rectified flow) | 1 | -sigma | 1 | sigma * multiplier |
| edm | sd^2/(sigma^2+sd^2) | sigma*sd/sqrt(sigma^2+sd^2) | 1/sqrt(sigma^2+sd^2) | log(sigma)/4 |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from athena.errors import ConfigError

Prediction = Literal["eps", "v", "x0", "flow", "edm"]
Net = Callable[[Tensor, Tensor, Any], Tensor]  # (x_in (B,C,H,W), t (B,), cond) -> raw network output
CondModel = Callable[[Tensor, Tensor, Any], Tensor]  # (x, sigma (B,), cond) -> x0


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """`v` (B,) viewed as (B, 1, ..., 1) with `ndim` dimensions, to broadcast against x."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


# ---------------------------------------------------------------- discrete DDPM schedules

def scaled_linear_betas(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """SD's "linear" betas: linear in sqrt(beta), in float64 as the original LDM code builds them."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2


def zero_terminal_snr(sigmas: Tensor) -> Tensor:
    """Rescale a discrete schedule so the last step is pure noise (Lin et al. 2023, Alg. 1), in sigma form.
    The final sigma becomes infinite in exact arithmetic; like ComfyUI it is capped at 2^-24 of alpha_bar."""
    alphas_bar_sqrt = (1 / (1 + sigmas.double() ** 2)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


@dataclass(frozen=True)
class ModelSampling:
    """A network's parameterisation and its table of training sigmas (ascending, one per discrete timestep)."""

    prediction: Prediction
    sigmas: Tensor = field(repr=False)  # (N,) float32, ascending
    sigma_data: float = 1.0
    multiplier: float = 1000.0  # flow: t = sigma * multiplier
    shift: float = 1.0  # flow: the timestep shift the table was built with

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or len(self.sigmas) < 2:
            raise ConfigError(f"ModelSampling.sigmas must be a 1-D table of at least 2 sigmas, got shape "
                              f"{tuple(self.sigmas.shape)}")

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def log_sigmas(self) -> Tensor:
        return self.sigmas.log()

    def timestep(self, sigma: Tensor) -> Tensor:
        """The network's timestep input for `sigma` (B,). Discrete models get the nearest trained step
        (in log sigma, as ComfyUI does), so fractional sigmas never reach a timestep the model never saw."""
        if self.prediction == "flow":
            return sigma * self.multiplier
        if self.prediction == "edm":
            return sigma.log() / 4
        log_sigmas = self.log_sigmas.to(sigma.device)
        dists = sigma.float().log()[None] - log_sigmas.reshape(-1, *([1] * sigma.ndim))
        return dists.abs().argmin(dim=0).reshape(sigma.shape).float()

    def sigma(self, t: Tensor) -> Tensor:
        """The sigma of timestep `t`; fractional discrete timesteps interpolate in log sigma."""
        if self.prediction == "flow":
            return flow_shift(t / self.multiplier, self.shift)
        if self.prediction == "edm":
            return (t * 4).exp()
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.float().clamp(0, len(log_sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()

    # ------------------------------------------------------------ parameterisation

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) for `sigma` (B,): x0 = c_skip * x + c_out * net(c_in * x, t)."""
        sd2 = self.sigma_data ** 2
        one = torch.ones_like(sigma)
        if self.prediction == "eps":
            return one, -sigma, (sigma ** 2 + sd2) ** -0.5
        if self.prediction == "x0":
            return torch.zeros_like(sigma), one, (sigma ** 2 + sd2) ** -0.5
        if self.prediction == "flow":
            return one, -sigma, one
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
        # ComfyUI's V_PREDICTION subtracts the output; EDM networks (and k-diffusion) add it.
        return c_skip, (-c_out if self.prediction == "v" else c_out), (sigma ** 2 + sd2) ** -0.5

    def model(self, net: Net) -> CondModel:
        """`net` as `model(x, sigma, cond) -> x0`."""
        def model(x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
            c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.scalings(sigma.to(x.device, torch.float32)))
            out = net((x * c_in).to(x.dtype), self.timestep(sigma), cond)
            return (c_skip * x + c_out * out).to(x.dtype)
        return model

    def noise(self, x0: Tensor, noise: Tensor, sigma: Tensor, *, max_denoise: bool = False) -> Tensor:
        """The noised sample at `sigma` (B,) that sampling starts from or training denoises. For variance-
        preserving models a start at sigma_max uses sqrt(1 + sigma^2), the exact marginal, as ComfyUI does."""
        s = append_dims(sigma.to(x0.device, torch.float32), x0.ndim)
        if self.prediction == "flow":
            return (s * noise + (1 - s) * x0).to(x0.dtype)
        if max_denoise:
            return (noise * (s ** 2 + self.sigma_data ** 2) ** 0.5 + x0).to(x0.dtype)
        return (noise * s + x0).to(x0.dtype)

    def inverse_noise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Undo the start scaling at the end of sampling (flow latents live at scale 1 - sigma)."""
        if self.prediction == "flow":
            return x / (1 - append_dims(sigma.to(x.device, torch.float32), x.ndim)).to(x.dtype)
        return x

    def loss(self, net: Net, x0: Tensor, noise: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """Per-sample MSE in the network's own target space (eps, v, x0, velocity, or EDM's F), shape (B,).
        The target is (x0 - c_skip * x) / c_out, so every parameterisation trains what it predicts."""
        x = self.noise(x0, noise, sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.scalings(sigma.to(x.device, torch.float32)))
        target = (x0 - c_skip * x) / c_out  # flow: the velocity noise - x0
        out = net((x * c_in).to(x.dtype), self.timestep(sigma), cond)
        return ((out.float() - target.float()) ** 2).flatten(1).mean(1)


# ---------------------------------------------------------------- constructors

def discrete_sampling(prediction: Literal["eps", "v", "x0"] = "eps", *, steps: int = 1000,
                      beta_start: float = 0.00085, beta_end: float = 0.012,
                      zero_snr: bool = False) -> ModelSampling:
    """A DDPM model's sampling: SD's scaled-linear betas (SD1.x/2.x/XL use the defaults) over `steps` steps,
    optionally rescaled to zero terminal SNR."""
    # alpha_bar is accumulated in float64 and stored in float32 before sigma is taken, as ComfyUI's
    # ModelSamplingDiscrete does: its table (and so every scheduler's sigmas) then matches to float32 rounding,
    # where sigma from the float64 product differs by 1.3e-5 (relative) at the low end
    alphas_bar = torch.cumprod(1 - scaled_linear_betas(steps, beta_start, beta_end), dim=0).float()
    sigmas = ((1 - alphas_bar) / alphas_bar) ** 0.5
    if zero_snr:
        sigmas = zero_terminal_snr(sigmas)
    return ModelSampling(prediction, sigmas.float())


def discrete_schedule() -> ModelSampling:
    """The SD1.x eps schedule: scaled-linear betas 0.00085 to 0.012 over 1000 steps."""
    return discrete_sampling("eps")


def flow_shift(t: Tensor, shift: float) -> Tensor:
    """SD3's time shift of a flow timestep t in [0, 1]: shift * t / (1 + (shift - 1) * t)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sampling(shift: float = 1.0, multiplier: float = 1000.0, steps: int = 1000) -> ModelSampling:
    """Rectified flow (SD3, Wan use shift 3.0, 5.0...): sigma = shifted t, on `steps` points of (0, 1]."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return ModelSampling("flow", flow_shift(t, shift).float(), multiplier=multiplier, shift=shift)


def edm_sampling(sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 steps: int = 1000) -> ModelSampling:
    """EDM preconditioning (Karras et al. 2022) over continuous sigmas in [sigma_min, sigma_max]."""
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"edm_sampling needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), steps, dtype=torch.float64).exp()
    return ModelSampling("edm", sigmas.float(), sigma_data=sigma_data)
