"""The graph's samplers (ComfyUI's KSampler, KSamplerAdvanced, SamplerCustom): raw VAE latents in and out, regional
conditioning entries, noise from the seed per batch index, the latent's noise mask, LoRAs patched in while sampling.

With one plain entry per side this is `sample.sample_latent` exactly (same noise, sigmas, batched CFG forward).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from athena.diffusion.areas import RegionalCFG
from athena.diffusion.denoisers import ModelSampling
from athena.diffusion.progress import Step
from athena.diffusion.samplers import DISCARD_PENULTIMATE, SAMPLERS, Sampler
from athena.diffusion.schedules import SCHEDULERS
from athena.errors import ConfigError
from athena.pipelines.entries import CondEntry, Lora, loras_applied, regions
from athena.pipelines.pipeline import Pipeline
from athena.pipelines.sample import model_sampling, run_sampler, unet_net

# ComfyUI's SAMPLER_NAMES, in its order (the order a UI lists them in).
COMFY_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
# ComfyUI's `_gpu` variants draw the same SDE noise on the GPU; here noise is always drawn on the CPU from the seed.
ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "dpmpp_sde_gpu": ("dpmpp_sde", {}), "dpmpp_2m_sde_gpu": ("dpmpp_2m_sde", {}),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", {"solver": "heun"}),
    "dpmpp_2m_sde_heun_gpu": ("dpmpp_2m_sde", {"solver": "heun"}), "dpmpp_3m_sde_gpu": ("dpmpp_3m_sde", {}),
}


def sampler_names() -> list[str]:
    """The sampler names the graph offers: ComfyUI's that Athena implements, in ComfyUI's order."""
    return [n for n in COMFY_SAMPLERS if n in SAMPLERS or n in ALIASES]


def sampler_fn(name: str) -> Sampler:
    if name in ALIASES:
        base, options = ALIASES[name]
        fn: Sampler = functools.partial(SAMPLERS[base], **options) if options else SAMPLERS[base]  # type: ignore[arg-type]
        return fn
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    return SAMPLERS[name]


def ksampler_sigmas(ms: ModelSampling, sampler: str, scheduler: str, steps: int, *, denoise: float = 1.0,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> Tensor:
    """KSampler's sigmas: the scheduler over `steps` (int(steps / denoise) when denoise < 1, keeping the last
    steps + 1), then KSamplerAdvanced's window [start_step, last_step]; `force_full_denoise` ends it at 0.
    An empty tensor means nothing to do (denoise 0, or a start at or after the end)."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if denoise <= 0:
        return torch.zeros(0)
    base = ALIASES.get(sampler, (sampler, {}))[0]
    discard = base in DISCARD_PENULTIMATE
    total = steps if denoise > 0.9999 else int(steps / denoise)
    sigmas = SCHEDULERS[scheduler](ms, total + int(discard))
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigmas = sigmas[-(steps + 1):]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else torch.zeros(0)
    return sigmas


def prepare_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """ComfyUI's initial noise: one CPU draw for the batch, or with `batch_index` (a batch cut from a bigger one)
    the noise each index had in the full batch, so image 3 of a batch is reproducible alone."""
    g = torch.Generator("cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(tuple(shape), generator=g)
    draws = [torch.randn((1, *shape[1:]), generator=g) for _ in range(max(batch_index) + 1)]
    return torch.cat([draws[i] for i in batch_index])


def latent_noise_mask(mask: Tensor, latent: Tensor) -> Tensor:
    """A LATENT's "noise_mask" (pixel or latent size, any batch) as (B, 1, h, w) at the latent's size (bilinear)."""
    m = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=latent.shape[-2:], mode="bilinear")
    reps = -(-latent.shape[0] // m.shape[0])
    return m.repeat(reps, 1, 1, 1)[:latent.shape[0]].to(latent.device)


def sample_entries(pipe: Pipeline, positive: Sequence[CondEntry], negative: Sequence[CondEntry], latent: Tensor,
                   sigmas: Tensor, *, sampler: str, cfg: float, seed: int, add_noise: bool = True,
                   batch_index: Sequence[int] | None = None, noise_mask: Tensor | None = None,
                   sampling: ModelSampling | None = None, cfg_rescale: float = 0.0, loras: Sequence[Lora] = (),
                   callback: Callable[[Step], None] | None = None) -> tuple[Tensor, Tensor | None]:
    """Sample a raw VAE latent (B, C, h, w) along `sigmas`; returns (samples, the last step's x0 or None), both raw."""
    if len(sigmas) < 2:
        return latent, None
    fam, fn = pipe.family, sampler_fn(sampler)
    ms = sampling or model_sampling(pipe.unet)
    device = pipe.device
    z = latent.float().to(device)
    if bool(z.any()):  # ComfyUI shifts only non-empty latents (the empty latent stays 0)
        z = (z - fam.latent_shift) * fam.latent_scale
    noise = prepare_noise(z.shape, seed, batch_index) if add_noise else torch.zeros(z.shape)
    mask = None if noise_mask is None else latent_noise_mask(noise_mask, z)
    last: list[Tensor] = []

    def step(s: Step) -> None:
        last[:] = [s.x0]
        if callback is not None:
            callback(s)

    with loras_applied(pipe, unet=loras), torch.no_grad():
        guided = RegionalCFG(ms.model(unet_net(pipe.unet)), regions(pipe, positive, ms, z, denoise_mask=mask),
                             regions(pipe, negative, ms, z, negative=True, denoise_mask=mask), cfg,
                             rescale=cfg_rescale)
        out = run_sampler(fn, guided, ms, z, noise.to(device), sigmas.to(device), seed=seed, mask=mask, callback=step)

    def raw(t: Tensor) -> Tensor:
        return (t.float() / fam.latent_scale + fam.latent_shift).cpu()
    return raw(out), (raw(last[0]) if last else None)


def turbo_sigmas(ms: ModelSampling, steps: int, denoise: float = 1.0) -> Tensor:
    """SDTurboScheduler: `steps` of the 10 timesteps 999, 899, ..., 99 that SD-Turbo was distilled on, starting
    later for denoise < 1, then 0."""
    start = 10 - int(10 * denoise)
    timesteps = (torch.arange(10, 0, -1) * 100 - 1)[start:start + steps].float()
    return torch.cat([ms.sigma(timesteps), torch.zeros(1)])
