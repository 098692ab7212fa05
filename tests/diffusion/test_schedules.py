"""Every scheduler gives ComfyUI's sigmas for the same model sampling: the table-driven ones against values recorded
from ComfyUI's own scheduler functions (`comfyui_sigmas.json`), karras and exponential against k-diffusion (which
ComfyUI calls for them), and the KSampler's img2img truncation and DPM-2/UniPC penultimate drop on top."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kdiffusion import load_sampling

from athena.diffusion.denoisers import discrete_sampling, discrete_schedule, flow_sampling
from athena.diffusion.schedules import SCHEDULERS, sigmas_for

COMFY = json.loads((Path(__file__).parent / "comfyui_sigmas.json").read_text())["sigmas"]
TOL = dict(rtol=1e-6, atol=0)  # float32 log/exp may differ in the last bit across CPUs


def test_the_sd_table_is_comfyuis():
    """ComfyUI's ModelSamplingDiscrete: alpha_bar accumulated in float64 (numpy), stored in float32, then sigma."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_bar = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    torch.testing.assert_close(discrete_schedule().sigmas, ((1 - alphas_bar) / alphas_bar) ** 0.5, rtol=2e-7, atol=0)


@pytest.mark.parametrize("name", sorted(COMFY))
@pytest.mark.parametrize("steps", [7, 10])
def test_table_schedulers_match_comfyui(name, steps):
    ref = torch.tensor(COMFY[name][str(steps)])
    ours = SCHEDULERS[name](discrete_schedule(), steps)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape  # ddim_uniform at 7 steps gives 8, as ComfyUI
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("name,reference", [("karras", "get_sigmas_karras"), ("exponential", "get_sigmas_exponential")])
def test_continuous_schedulers_are_k_diffusions(name, reference):
    k = load_sampling()
    for ms in (discrete_schedule(), discrete_sampling("v", zero_snr=True), flow_sampling(3.0)):
        for steps in (1, 6, 25):
            ref = getattr(k, reference)(steps, float(ms.sigma_min), float(ms.sigma_max))
            torch.testing.assert_close(SCHEDULERS[name](ms, steps), ref.float(), **TOL)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("sampling", ["sd", "zero_snr_v", "flow"])
def test_every_schedule_descends_to_zero(name, sampling):
    ms = {"sd": discrete_schedule(), "zero_snr_v": discrete_sampling("v", zero_snr=True),
          "flow": flow_sampling(3.0)}[sampling]
    for steps in (1, 2, 9, 30):
        sigmas = SCHEDULERS[name](ms, steps)
        assert sigmas[-1] == 0 and torch.isfinite(sigmas).all()
        assert (sigmas[1:] <= sigmas[:-1]).all(), sigmas
        assert len(sigmas) >= steps + 1 if name == "ddim_uniform" else len(sigmas) <= steps + 1
        assert float(sigmas[0]) <= ms.sigma_max * (1 + 1e-6)


def test_img2img_runs_the_longer_schedule_truncated():
    """ComfyUI's KSampler at denoise d: the scheduler over int(steps / d) steps, keeping the last steps + 1."""
    ms = discrete_schedule()
    sigmas = sigmas_for("normal", ms, 7, denoise=0.7)  # int(7 / 0.7) = 10
    torch.testing.assert_close(sigmas, torch.tensor(COMFY["normal"]["10"][-8:]), **TOL)
    assert float(sigmas[0]) < ms.sigma_max * 0.5  # starts part-way down


def test_dpm2_and_unipc_schedules_drop_the_penultimate_sigma():
    """ComfyUI schedules one step more for dpm_2 and uni_pc and drops the second-to-last sigma."""
    full = COMFY["simple"]["10"]
    sigmas = sigmas_for("simple", discrete_schedule(), 9, discard_penultimate=True)
    torch.testing.assert_close(sigmas, torch.tensor(full[:-2] + full[-1:]), **TOL)
