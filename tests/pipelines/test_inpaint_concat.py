"""An inpainting (9-channel) U-Net without InpaintModelConditioning: ComfyUI feeds it the latent's noise mask and the
latent itself, or "repaint everything" over a blank image."""

from dataclasses import replace

import pytest
import torch

import athena
from athena.checkpoints.build import random_checkpoint
from athena.models.unet import TINY_SD1
from athena.models.vae import TINY_VAE
from athena.pipelines.conditioning import Conditioning
from athena.pipelines.entries import CondEntry, unet_cond


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    path = random_checkpoint(tmp_path_factory.mktemp("m") / "inpaint.safetensors", "sd1",
                             replace(TINY_SD1, in_channels=9), TINY_VAE, {"clip_l": (32, 2)}, dtype=torch.float32)
    return athena.load(path)


def test_the_noise_mask_and_the_latent_become_the_concat(pipe):
    latent = torch.randn(2, 4, 8, 8)
    mask = torch.rand(2, 1, 8, 8)
    entry = CondEntry(Conditioning(torch.zeros(1, 77, 32)))
    c = unet_cond(pipe, entry, latent, negative=False, denoise_mask=mask)
    assert torch.equal(c.concat, torch.cat([mask.round(), latent], dim=1))


def test_without_a_mask_everything_is_repainted_over_a_blank_image(pipe):
    latent = torch.randn(1, 4, 8, 8)
    c = unet_cond(pipe, CondEntry(Conditioning(torch.zeros(1, 77, 32))), latent, negative=False)
    assert torch.equal(c.concat[:, :1], torch.ones(1, 1, 8, 8))
    with torch.no_grad():
        grey = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).mode() * pipe.family.latent_scale
    blank = c.concat[:, 1:]
    assert torch.allclose(blank, grey.mean(dim=(2, 3), keepdim=True).expand_as(blank), atol=1e-6)
