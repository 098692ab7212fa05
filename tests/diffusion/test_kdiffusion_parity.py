"""Every sampler that k-diffusion also has gives its trajectory, within 1e-5, on the exact denoiser of a Gaussian
mixture, with the same noise: ancestral noise from identically seeded generators, SDE noise from the same seed's
Brownian tree."""

import pytest
import torch
from kdiffusion import load_sampling
from mixture import mixture

from athena.diffusion import schedules
from athena.diffusion.denoisers import discrete_schedule
from athena.diffusion.samplers import SAMPLERS

K = load_sampling()
SHARED = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
          "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]
BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}
SEED = 1234


def sigma_sets():
    ms = discrete_schedule()
    return {"k_karras": K.get_sigmas_karras(12, 0.0292, 14.6146),
            "normal": schedules.SCHEDULERS["normal"](ms, 12),
            "exponential": schedules.SCHEDULERS["exponential"](ms, 9),
            "beta": schedules.SCHEDULERS["beta"](ms, 10)}


def reference(name, model, x, sigmas):
    """k-diffusion's sampler, called the way ComfyUI calls it."""
    fn = getattr(K, f"sample_{name}")
    if name in BROWNIAN:
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        return fn(model, x, sigmas, disable=True, noise_sampler=K.BrownianTreeNoiseSampler(x, lo, hi, seed=SEED))
    g = torch.Generator().manual_seed(SEED)
    noise = lambda s, sn: torch.randn(x.shape, generator=g, dtype=x.dtype)
    if name in ("dpm_fast", "dpm_adaptive"):
        sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
        args = (sigma_min, sigmas[0]) + ((len(sigmas) - 1,) if name == "dpm_fast" else ())
        return fn(model, x, *args, disable=True, noise_sampler=noise)
    if name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"):
        return fn(model, x, sigmas, disable=True, noise_sampler=noise)
    return fn(model, x, sigmas, disable=True)


@pytest.mark.parametrize("schedule", ["k_karras", "normal", "exponential", "beta"])
@pytest.mark.parametrize("name", SHARED)
def test_same_trajectory_as_k_diffusion(name, schedule):
    mix = mixture()
    sigmas = sigma_sets()[schedule]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g) * float(sigmas[0])
    steps_ours = []
    ours = SAMPLERS[name](mix.denoise, x.clone(), sigmas, generator=torch.Generator().manual_seed(SEED),
                          callback=lambda s: steps_ours.append(s.x0))
    ref = reference(name, lambda x_, s, **kw: mix.denoise(x_, s), x.clone(), sigmas)
    assert ours.shape == ref.shape and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert len(steps_ours) >= 1


def test_every_name_is_registered():
    comfy = ["euler", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "er_sde", "ddim", "uni_pc", "uni_pc_bh2", "euler_ancestral", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"]
    assert set(comfy) <= set(SAMPLERS)
