"""Inpainting by noise mask (ComfyUI's SetLatentNoiseMask) at the sampler level, where the final pixel paste cannot
hide a mistake: what the model sees outside the mask, what the estimate is there, and CFG++ inside a mask."""

import pytest
import torch

from athena.diffusion.denoisers import discrete_schedule
from athena.diffusion.guidance import cfg
from athena.diffusion.samplers import SAMPLERS
from athena.diffusion.schedules import SCHEDULERS
from athena.pipelines.sample import NoiseMasked, run_sampler

MS = discrete_schedule()
SHAPE = (2, 4, 6, 6)


class Shift:
    """A toy conditioning: a per-sample offset that concatenates along the batch."""

    def __init__(self, shift):
        self.shift = shift

    def cat(self, other):
        return Shift(torch.cat([self.shift, other.shift]))


def toy_model(x, sigma, cond):
    """An x0 model whose estimate depends on its input (also across space, like a U-Net's), sigma and the
    conditioning (so CFG and CFG++ differ)."""
    scale = (1 + sigma[:, None, None, None] ** 2) ** -0.5
    return (x * 0.7 + x.mean(dim=(-2, -1), keepdim=True) * 0.3) * scale + cond.shift[:, None, None, None] * 0.2


def setup():
    g = torch.Generator().manual_seed(0)
    latent, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    mask = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    mask[..., 3:] = 1  # repaint the right half
    guided = cfg(toy_model, Shift(torch.ones(SHAPE[0])), Shift(-torch.ones(SHAPE[0])), 4.0)
    return latent, noise, mask, guided


def test_the_model_sees_the_noised_original_outside_the_mask_and_the_estimate_is_the_original():
    latent, noise, mask, _ = setup()
    seen = []

    def recording(x, sigma):
        seen.append((x.clone(), sigma.clone()))
        return x * 0.5

    masked = NoiseMasked(recording, MS, latent, noise, mask)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 5
    sigma = torch.full((SHAPE[0],), 3.0)
    x0 = masked(x, sigma)
    model_in, _ = seen[0]
    keep = (mask == 0).expand(SHAPE)
    torch.testing.assert_close(model_in[keep], (latent + 3.0 * noise)[keep])  # re-noised original, not the state
    torch.testing.assert_close(model_in[~keep], x[~keep])  # the sampler's state inside the mask
    torch.testing.assert_close(x0[keep], latent[keep])
    torch.testing.assert_close(x0[~keep], (x * 0.5)[~keep])


def test_every_step_keeps_the_original_outside_the_mask():
    latent, noise, mask, guided = setup()
    steps = []
    sigmas = SCHEDULERS["karras"](MS, 6)
    out = run_sampler(SAMPLERS["dpmpp_2m"], guided, MS, latent, noise, sigmas, seed=0, mask=mask,
                      callback=steps.append)
    keep = (mask == 0).expand(SHAPE)
    assert len(steps) == 6
    for s in steps:
        torch.testing.assert_close(s.x0[keep], latent[keep])
    torch.testing.assert_close(out[keep], latent[keep])
    plain = run_sampler(SAMPLERS["dpmpp_2m"], guided, MS, latent, noise, sigmas, seed=0)
    assert (out[~keep] - plain[~keep]).abs().max() > 1e-3  # the kept half steers the repainted one


@pytest.mark.parametrize("name", ["euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"])
def test_cfg_pp_keeps_working_inside_a_mask(name):
    """A mask that repaints everything changes nothing, also for CFG++ samplers, which need the unconditional
    estimate through the mask wrapper."""
    latent, noise, _, guided = setup()
    sigmas = SCHEDULERS["karras"](MS, 6)
    everything = torch.ones(SHAPE[0], 1, *SHAPE[2:])
    plain = run_sampler(SAMPLERS[name], guided, MS, latent, noise, sigmas, seed=0)
    masked = run_sampler(SAMPLERS[name], guided, MS, latent, noise, sigmas, seed=0, mask=everything)
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=1e-5)
    without_pp = run_sampler(SAMPLERS[name.removesuffix("_cfg_pp")], guided, MS, latent, noise, sigmas, seed=0)
    assert (plain - without_pp).abs().max() > 1e-2  # CFG++ differs from plain CFG on this model
