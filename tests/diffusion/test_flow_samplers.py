"""Samplers on a rectified-flow model (x = (1 - sigma) x0 + sigma n, ComfyUI's CONST model sampling).

A flow model at sigma is a variance-exploding model at s = sigma / (1 - sigma) in the variable y = x / (1 - sigma).
Samplers written in half log-SNR (DPM-Solver++ SDE, ER-SDE, CFG++) must therefore give, on the flow model, exactly
k-diffusion's variance-exploding trajectory of the transformed problem, scaled back. The ancestral `_RF` samplers
split their noise differently; with eta = 0 they must reduce to the plain ODE steps, and with noise they must still
sample the data distribution."""

import pytest
import torch
from kdiffusion import load_sampling
from mixture import mixture

from athena.diffusion.denoisers import flow_sampling, flow_shift
from athena.diffusion.guidance import cfg
from athena.diffusion.samplers import SAMPLERS, for_model
from athena.diffusion.schedules import SCHEDULERS

K = load_sampling()
FLOW = flow_sampling(shift=3.0)
FLOW_AWARE = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_3m_sde", "er_sde", "lcm", "euler_cfg_pp", "euler_ancestral_cfg_pp"]


def flow_denoiser(mix):
    """The exact flow denoiser of the mixture, E[x0 | a x0 + sigma n = x] with a = 1 - sigma, defined at sigma = 1
    too: component k gives x ~ N(a mu_k, a^2 s_k^2 + sigma^2) and the posterior mean
    mu_k + a s_k^2 / (a^2 s_k^2 + sigma^2) (x - a mu_k)."""
    def denoise(x, sigma):
        s, a = sigma[:, None].to(x.dtype), (1 - sigma)[:, None].to(x.dtype)
        var = a ** 2 * mix.stds[None] ** 2 + s ** 2  # (B, K)
        sq = ((x[:, None, :] - a[..., None] * mix.means[None]) ** 2).sum(-1)
        w = (mix.weights.log()[None] - 0.5 * sq / var - 0.5 * x.shape[1] * var.log()).softmax(dim=1)
        gain = a * mix.stds[None] ** 2 / var
        per = mix.means[None] + gain[..., None] * (x[:, None, :] - a[..., None] * mix.means[None])
        return (w[..., None] * per).sum(1)
    return denoise


def as_variance_exploding(denoise):
    """The same model seen in y = x / alpha at s = sigma / alpha: D(y, s) = D_flow(y alpha, sigma)."""
    def ve(y, s):
        sigma = s / (1 + s)
        return denoise(y * (1 - sigma)[:, None].to(y.dtype), sigma)
    return ve


class Recorded:
    """A noise sampler that replays pre-drawn unit noise in call order, so two samplers that draw at the same steps
    see the same noise whatever sigmas they pass."""

    def __init__(self, shape, n=64, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.draws, self.i, self.asked = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)], 0, []

    def __call__(self, sigma, sigma_next):
        self.asked.append((float(sigma), float(sigma_next)))
        self.i += 1
        return self.draws[self.i - 1]


def flow_sigmas(steps=12, dtype=torch.float64):
    return SCHEDULERS["simple"](FLOW, steps).to(dtype)  # starts at sigma = 1: pure noise, infinite half log-SNR


def snr_sigmas(sigmas):
    """The schedule with its first sigma moved off 1, as ComfyUI's offset_first_sigma_for_snr does."""
    out = sigmas.clone()
    out[0] = flow_shift(torch.tensor(1 - 1e-4, dtype=torch.float64), 3.0)
    return out


@pytest.mark.parametrize("name, kwargs", [("dpmpp_sde", {}), ("dpmpp_2m_sde", {}),
                                          ("dpmpp_2m_sde", {"solver_type": "heun"}), ("dpmpp_3m_sde", {})])
def test_sde_samplers_are_k_diffusion_in_the_variance_exploding_variable(name, kwargs):
    mix = mixture(torch.float64)
    denoise = flow_denoiser(mix)
    sigmas = flow_sigmas()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours_kwargs = {"solver": kwargs["solver_type"]} if kwargs else {}
    noise = Recorded(x.shape)
    ours = SAMPLERS[name](denoise, x.clone(), sigmas, noise=noise, sampling=FLOW, **ours_kwargs)

    start = snr_sigmas(sigmas)
    if name != "dpmpp_sde":  # the multistep SDEs draw once a step, over the step (a Brownian increment)
        assert noise.asked == [(float(start[i]), float(start[i + 1])) for i in range(len(start) - 2)]
    s = start / (1 - start)
    y = x / (1 - start[0])
    model = lambda y_, s_, **kw: as_variance_exploding(denoise)(y_, s_)
    ref = getattr(K, f"sample_{name}")(model, y, s, disable=True, noise_sampler=Recorded(x.shape), **kwargs)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-7)


def test_er_sde_is_its_variance_exploding_form_in_the_transformed_variable():
    mix = mixture(torch.float64)
    denoise = flow_denoiser(mix)
    sigmas = flow_sigmas()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = SAMPLERS["er_sde"](denoise, x.clone(), sigmas, noise=Recorded(x.shape), sampling=FLOW)
    start = snr_sigmas(sigmas)
    s = start / (1 - start)
    ref = SAMPLERS["er_sde"](as_variance_exploding(denoise), x / (1 - start[0]), s, noise=Recorded(x.shape))
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-7)


def test_euler_ancestral_cfg_pp_without_guidance_is_k_diffusion_euler_ancestral_transformed():
    mix = mixture(torch.float64)
    denoise = flow_denoiser(mix)
    sigmas = flow_sigmas()[1:]  # below 1: the transformed problem starts at a finite sigma
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = SAMPLERS["euler_ancestral_cfg_pp"](denoise, x.clone(), sigmas, sampling=FLOW,
                                              generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = lambda a, b: torch.randn(x.shape, generator=g, dtype=x.dtype)
    s = sigmas / (1 - sigmas)
    model = lambda y_, s_, **kw: as_variance_exploding(denoise)(y_, s_)
    ref = K.sample_euler_ancestral(model, x / (1 - sigmas[0]), s, disable=True, noise_sampler=noise)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("name, plain", [("euler_ancestral", "euler"), ("dpm_2_ancestral", "dpm_2"),
                                         ("euler_cfg_pp", "euler")])
def test_rf_steps_without_noise_are_the_ode_steps(name, plain):
    """Euler and DPM-2 on the flow sigmas integrate the flow ODE, whose velocity is (x - x0) / sigma."""
    mix = mixture(torch.float64)
    denoise = flow_denoiser(mix)
    sigmas = flow_sigmas()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kwargs = {} if name == "euler_cfg_pp" else {"eta": 0.0}
    ours = SAMPLERS[name](denoise, x.clone(), sigmas, sampling=FLOW, **kwargs)
    ref = getattr(K, f"sample_{plain}")(lambda y_, s_, **kw: denoise(y_, s_), x.clone(), sigmas, disable=True)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-7)


def test_dpmpp_2s_without_noise_is_k_diffusion_in_the_variance_exploding_variable():
    mix = mixture(torch.float64)
    denoise = flow_denoiser(mix)
    sigmas = flow_sigmas()[1:]
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = SAMPLERS["dpmpp_2s_ancestral"](denoise, x.clone(), sigmas, sampling=FLOW, eta=0.0)
    s = sigmas / (1 - sigmas)
    model = lambda y_, s_, **kw: as_variance_exploding(denoise)(y_, s_)
    ref = K.sample_dpmpp_2s_ancestral(model, x / (1 - sigmas[0]), s, disable=True, eta=0.0)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-7)


S = 0.5  # data ~ N(0, S^2)


def gaussian_flow_denoiser(x, sigma):
    a = (1 - sigma)[:, None].to(x.dtype)
    return a * S ** 2 * x / (a ** 2 * S ** 2 + sigma[:, None].to(x.dtype) ** 2)


# First-order steps keep a bias of a few percent at 80 steps on this schedule (plain euler gives 0.484); LCM's
# consistency jump is biased on a model not distilled for it, as in the variance-exploding test.
STD_TOLERANCE = {"euler_ancestral": 0.1, "euler_ancestral_cfg_pp": 0.1, "lcm": 0.35}


@pytest.mark.parametrize("name", FLOW_AWARE)
def test_flow_samplers_recover_gaussian_data(name):
    x = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))  # the flow's prior at sigma = 1
    out = SAMPLERS[name](gaussian_flow_denoiser, x, flow_sigmas(80, torch.float32),
                         generator=torch.Generator().manual_seed(1), sampling=FLOW)
    assert out.std().item() == pytest.approx(S, rel=STD_TOLERANCE.get(name, 0.04))
    assert abs(out.mean().item()) < 0.02


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                                  "dpmpp_3m_sde", "lcm"])
def test_variance_exploding_noise_on_a_flow_model_is_wrong(name):
    """The control: without `sampling` these samplers add noise for x0 + sigma n and miss the data's spread, so the
    test above can tell a flow step from a variance-exploding one."""
    x = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[name](gaussian_flow_denoiser, x, flow_sigmas(80, torch.float32),
                         generator=torch.Generator().manual_seed(1))
    assert abs(out.std().item() / S - 1) > 0.1


def test_for_model_binds_the_noise_process_only_where_a_sampler_takes_it():
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(20, torch.float32)
    bound = for_model(SAMPLERS["euler_ancestral"], FLOW)
    a = bound(gaussian_flow_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
    b = SAMPLERS["euler_ancestral"](gaussian_flow_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1),
                                    sampling=FLOW)
    assert torch.equal(a, b)
    assert for_model(SAMPLERS["euler"], FLOW) is SAMPLERS["euler"]


def test_the_pipeline_gives_a_flow_model_the_flow_steps():
    from athena.pipelines.sample import run_sampler

    sigmas = flow_sigmas(20, torch.float32)
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    out = run_sampler(SAMPLERS["dpmpp_2m_sde"], gaussian_flow_denoiser, FLOW, torch.zeros(4000, 1), noise, sigmas,
                      seed=5)
    direct = SAMPLERS["dpmpp_2m_sde"](gaussian_flow_denoiser, noise.clone(), sigmas, sampling=FLOW,
                                      generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, direct, atol=1e-6, rtol=1e-6)


def test_the_rf_split_is_comfyuis_for_any_eta():
    """One euler_ancestral step on a flow model at eta 0.5, against ComfyUI's `sample_euler_ancestral_RF` written
    out: down to sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta), the flow Euler step there, then
    x alpha_next / alpha_down plus noise of std sqrt(sigma_next^2 - (sigma_down alpha_next / alpha_down)^2).
    (At eta 1 and 0 any valid split agrees with it, so only an eta in between pins the formula.)"""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = torch.tensor([0.8, 0.5, 0.0], dtype=torch.float64)
    denoise = flow_denoiser(mixture(torch.float64))
    out = []
    SAMPLERS["euler_ancestral"](denoise, x.clone(), sigmas, sampling=FLOW, eta=0.5,
                                generator=torch.Generator().manual_seed(3),
                                callback=lambda step: out.append(step.x) if step.i == 1 else None)
    s, sn, eta = 0.8, 0.5, 0.5
    down = sn * (1 + (sn / s - 1) * eta)
    x0 = denoise(x, torch.full((64,), s, dtype=torch.float64))
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = (1 - sn) / (1 - down) * ((down / s) * x + (1 - down / s) * x0)
    expected = expected + n * (sn ** 2 - (down * (1 - sn) / (1 - down)) ** 2) ** 0.5
    torch.testing.assert_close(out[0], expected, atol=1e-12, rtol=1e-12)


class Shift:
    """A toy conditioning: a per-sample offset of the estimate, concatenating along the batch."""

    def __init__(self, shift):
        self.shift = shift

    def cat(self, other):
        return Shift(torch.cat([self.shift, other.shift]))


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_guided_cfg_pp_is_the_variance_exploding_one_in_the_transformed_variable(eta):
    """With real guidance (x0 != x0_uncond), so the signal scales of the guided and the unconditional estimates
    are both pinned; from sigma = 1, whose split ComfyUI makes all noise."""
    mix = mixture(torch.float64)
    flow = flow_denoiser(mix)
    ve = as_variance_exploding(flow)
    cond, uncond = Shift(torch.ones(256, dtype=torch.float64)), Shift(-torch.ones(256, dtype=torch.float64))
    guided_flow = cfg(lambda x, s, c: flow(x, s) + 0.1 * c.shift[:, None], cond, uncond, 3.0)
    guided_ve = cfg(lambda y, s, c: ve(y, s) + 0.1 * c.shift[:, None], cond, uncond, 3.0)
    sigmas = flow_sigmas()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = SAMPLERS["euler_ancestral_cfg_pp"](guided_flow, x.clone(), sigmas, sampling=FLOW, eta=eta,
                                              generator=torch.Generator().manual_seed(3))
    # at sigma = 1 the VE variable is infinite: take the first step by hand (all fresh noise), then continue
    g = torch.Generator().manual_seed(3)
    x0 = guided_flow(x, torch.ones(256, dtype=torch.float64))
    s = sigmas / (1 - sigmas)
    y = x0 + torch.randn(x.shape, generator=g, dtype=torch.float64) * s[1]
    rest = SAMPLERS["euler_ancestral_cfg_pp"](guided_ve, y, s[1:], eta=eta, generator=g)
    torch.testing.assert_close(ours, rest, atol=1e-8, rtol=1e-7)
