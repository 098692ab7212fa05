"""Samplers that k-diffusion lacks follow diffusers' schedulers of the same name on an eps model: the same
trajectory, step by step, within 1e-4. The eps model is the exact one for a Gaussian mixture."""

import pytest
import torch
from mixture import mixture

from athena.diffusion.denoisers import discrete_schedule
from athena.diffusion.samplers import SAMPLERS

MS = discrete_schedule()
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def sigma_of(t) -> torch.Tensor:
    return MS.sigmas[int(t)] if int(t) >= 0 else torch.tensor(0.0)


def run_diffusers(scheduler, steps, x_hat, generator=None):
    """diffusers' loop on the VP sample x_hat with the exact eps; returns the samples before each step and the end."""
    mix = mixture()
    scheduler.set_timesteps(steps)
    path = []
    for t in scheduler.timesteps:
        path.append(x_hat)
        sigma = sigma_of(t)
        x = x_hat * (1 + sigma ** 2) ** 0.5
        eps = (x - mix.denoise(x, sigma.expand(len(x)))) / sigma
        kwargs = {"generator": generator} if generator is not None else {}
        x_hat = scheduler.step(eps, t, x_hat, **kwargs).prev_sample
    return path, x_hat


def run_ours(name, sigmas, x_hat, generator=None):
    path = []
    x = x_hat * (1 + sigmas[0] ** 2) ** 0.5
    out = SAMPLERS[name](mixture().denoise, x, sigmas, generator=generator,
                         callback=lambda s: path.append(s.x / (1 + s.sigma ** 2) ** 0.5))
    return path, out / (1 + sigmas[-1] ** 2) ** 0.5


def start(n=128):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def assert_same_path(ours, ref):
    assert len(ours[0]) == len(ref[0])
    for i, (a, b) in enumerate(zip(ours[0], ref[0])):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {i}")
    torch.testing.assert_close(ours[1], ref[1], atol=1e-4, rtol=1e-4)


def test_ddim_matches_diffusers_ddim():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**BETAS, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    ref = run_diffusers(sched, 10, start())
    sigmas = torch.stack([sigma_of(t) for t in sched.timesteps] + [MS.sigmas[0]])
    assert_same_path(run_ours("ddim", sigmas, start()), ref)


@pytest.mark.parametrize("name,variant", [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("steps", [4, 10])
def test_uni_pc_matches_diffusers_unipc(name, variant, steps):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(**BETAS, solver_order=3, solver_type=variant, predict_x0=True,
                                    lower_order_final=True, final_sigmas_type="sigma_min")
    ref = run_diffusers(sched, steps, start())
    assert_same_path(run_ours(name, sched.sigmas.float(), start()), ref)


def test_ddpm_matches_diffusers_ddpm():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**BETAS, variance_type="fixed_small", clip_sample=False)
    ref = run_diffusers(sched, 10, start(), torch.Generator().manual_seed(5))
    sigmas = torch.stack([sigma_of(t) for t in sched.timesteps] + [torch.tensor(0.0)])
    assert_same_path(run_ours("ddpm", sigmas, start(), torch.Generator().manual_seed(5)), ref)


def test_lcm_matches_diffusers_lcm():
    from diffusers import LCMScheduler

    sched = LCMScheduler(**BETAS, clip_sample=False)
    ref = run_diffusers(sched, 4, start(), torch.Generator().manual_seed(5))
    sigmas = torch.stack([sigma_of(t) for t in sched.timesteps] + [torch.tensor(0.0)])
    assert_same_path(run_ours("lcm", sigmas, start(), torch.Generator().manual_seed(5)), ref)


def test_dpmpp_2m_matches_diffusers_dpmsolver_multistep():
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                        lower_order_final=False, final_sigmas_type="zero")
    ref = run_diffusers(sched, 10, start())
    assert_same_path(run_ours("dpmpp_2m", sched.sigmas.float(), start()), ref)
