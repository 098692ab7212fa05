"""Parameterisations: each wrapper turns its network's target back into x0, its loss is zero for the perfect
network, and the discrete schedules match diffusers' tables."""

import math

import pytest
import torch

from athena.diffusion.denoisers import (
    discrete_sampling,
    discrete_schedule,
    edm_sampling,
    flow_sampling,
)
from athena.diffusion.guidance import cfg

SAMPLINGS = {"eps": discrete_sampling("eps"), "v": discrete_sampling("v"), "x0": discrete_sampling("x0"),
             "flow": flow_sampling(shift=3.0), "edm": edm_sampling()}


def perfect_net(ms, x0, noise, sigma):
    """The network output that makes the wrapper return exactly x0 (its training target)."""
    x = ms.noise(x0, noise, sigma)
    c_skip, c_out, _ = (c[:, None] for c in ms.scalings(sigma))
    target = (x0 - c_skip * x) / c_out
    return lambda x_in, t, cond: target


@pytest.mark.parametrize("kind", sorted(SAMPLINGS))
def test_wrapper_recovers_x0_and_loss_is_zero_for_the_perfect_network(kind):
    ms = SAMPLINGS[kind]
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    sigma = ms.sigmas[torch.tensor([3, 100, 400, 700, 900, 999])]
    net = perfect_net(ms, x0, noise, sigma)
    torch.testing.assert_close(ms.model(net)(ms.noise(x0, noise, sigma), sigma, None), x0, atol=1e-4, rtol=1e-4)
    assert ms.loss(net, x0, noise, sigma, None).abs().max() < 1e-6
    wrong = lambda x_in, t, cond: torch.zeros_like(x_in)
    assert (ms.loss(wrong, x0, noise, sigma, None) > 1e-3).all()


def test_eps_target_is_the_noise_and_v_target_is_velocity():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    ms = discrete_sampling("eps")
    sigma = ms.sigmas[torch.tensor([10, 500])]
    torch.testing.assert_close(perfect_net(ms, x0, noise, sigma)(None, None, None), noise)
    mv = discrete_sampling("v")
    a = (1 / (1 + sigma ** 2)).sqrt()[:, None]
    s = (sigma ** 2 / (1 + sigma ** 2)).sqrt()[:, None]
    torch.testing.assert_close(perfect_net(mv, x0, noise, sigma)(None, None, None), a * noise - s * x0)
    mf = flow_sampling()
    torch.testing.assert_close(perfect_net(mf, x0, noise, mf.sigmas[[10, 500]])(None, None, None), noise - x0)


def test_discrete_schedule_matches_diffusers_and_timesteps_round_trip():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sigmas = ((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5
    ms = discrete_schedule()
    torch.testing.assert_close(ms.sigmas, sigmas.float())
    t = torch.tensor([0.0, 17.0, 500.0, 999.0])
    torch.testing.assert_close(ms.timestep(ms.sigma(t)), t)
    assert ms.timestep(torch.tensor([ms.sigma_max * 1.5]))[0] == 999  # beyond the table: the nearest end


def test_zero_terminal_snr_matches_diffusers():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    a_bar = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    ours = discrete_sampling("v", zero_snr=True).sigmas.double()
    ref = ((1 - a_bar) / a_bar) ** 0.5
    torch.testing.assert_close(ours[:-1], ref[:-1], rtol=1e-4, atol=1e-6)
    assert ours[-1] > 4000  # pure noise in practice (ComfyUI caps alpha_bar at 2^-24)


def test_flow_shift_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ms = flow_sampling(shift=3.0)
    torch.testing.assert_close(ms.sigmas.flip(0), ref.sigmas[:1000].float(), atol=1e-6, rtol=1e-5)
    assert ms.timestep(torch.tensor([0.5]))[0] == pytest.approx(500.0)


def test_edm_timestep_is_quarter_log_sigma():
    ms = edm_sampling()
    assert ms.timestep(torch.tensor([math.e ** 2]))[0] == pytest.approx(0.5)
    assert ms.sigma_min == pytest.approx(0.002) and ms.sigma_max == pytest.approx(80.0, rel=1e-5)


class Shift:
    def __init__(self, v):
        self.v = v

    def cat(self, other):
        return Shift(torch.cat([self.v, other.v]))


def test_cfg_is_one_batched_forward_and_skips_uncond_at_scale_one():
    calls = []

    def model(x, sigma, cond):
        calls.append(x.shape[0])
        return x * 0 + cond.v[:, None]

    x, sigma = torch.zeros(2, 3), torch.ones(2)
    out = cfg(model, Shift(torch.full((2,), 1.0)), Shift(torch.full((2,), 0.5)), 7.0)(x, sigma)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5 + 7.0 * 0.5))
    assert calls == [4]
    cfg(model, Shift(torch.ones(2)), Shift(torch.zeros(2)), 1.0)(x, sigma)
    assert calls == [4, 2]


def test_cfg_rescale_matches_conditional_std_in_v_space():
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 4, 8, 8, generator=g) * 3, torch.tensor([3.0, 3.0])
    cond, uncond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    model = lambda x_, s, c: torch.cat([uncond, cond])
    plain = cfg(model, Shift(torch.zeros(2)), Shift(torch.zeros(2)), 7.0)(x, sigma)
    full = cfg(model, Shift(torch.zeros(2)), Shift(torch.zeros(2)), 7.0, rescale=1.0)(x, sigma)
    a, s = (1 / 10) ** 0.5, (9 / 10) ** 0.5
    v = lambda x0: (a * a * x - x0) / s
    torch.testing.assert_close(v(full).std(dim=(1, 2, 3)), v(cond).std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, full)
