"""Every sampler that k-diffusion also has gives its trajectory, within 1e-5 (float64; 1e-4 in float32, see
TOLERANCE), on the exact denoiser of a Gaussian mixture, with the same noise: ancestral noise from identically seeded generators, SDE noise from the same seed's
Brownian tree."""

import pytest
import torch
from kdiffusion import SHARED, load_sampling, run_reference
from mixture import mixture

from athena.diffusion import schedules
from athena.diffusion.denoisers import discrete_schedule
from athena.diffusion.samplers import SAMPLERS

K = load_sampling()
SEED = 1234


def sigma_sets():
    ms = discrete_schedule()
    return {"k_karras": K.get_sigmas_karras(12, 0.0292, 14.6146),
            "normal": schedules.SCHEDULERS["normal"](ms, 12),
            "exponential": schedules.SCHEDULERS["exponential"](ms, 9),
            "beta": schedules.SCHEDULERS["beta"](ms, 10)}


# In float64 the trajectories agree to 1e-13 (dpm_adaptive, whose accept/reject decisions amplify rounding, to 3e-6):
# the same mathematics. In float32 the two codes round in a different order (e.g. sigma_next / sigma against
# exp(-t_next) / exp(-t)), and the mixture's sharp posteriors at low sigma amplify that to 2e-5 in a few of 512
# coordinates on some schedules, so float32 is held to 1e-4.
TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("schedule", ["k_karras", "normal", "exponential", "beta"])
@pytest.mark.parametrize("name", SHARED)
def test_same_trajectory_as_k_diffusion(name, schedule, dtype):
    mix = mixture(dtype)
    sigmas = sigma_sets()[schedule].to(dtype)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 2, generator=g) * float(sigmas[0])).to(dtype)
    steps_ours = []
    ours = SAMPLERS[name](mix.denoise, x.clone(), sigmas, generator=torch.Generator().manual_seed(SEED),
                          callback=lambda s: steps_ours.append(s.x0))
    ref = run_reference(K, name, mix.denoise, x.clone(), sigmas, SEED)
    assert ours.shape == ref.shape and ours.dtype == dtype and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    assert len(steps_ours) >= 1


def test_every_name_is_registered():
    comfy = ["euler", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "er_sde", "ddim", "uni_pc", "uni_pc_bh2", "euler_ancestral", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"]
    assert set(comfy) <= set(SAMPLERS)
