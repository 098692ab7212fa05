"""An inpainting (9-channel) U-Net without InpaintModelConditioning: ComfyUI feeds it the latent's noise mask and the
latent itself, or "repaint everything" over a blank image."""

from dataclasses import replace

import numpy as np
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


def test_generate_feeds_an_inpainting_unet_the_mask_and_the_masked_image(pipe, tmp_path):
    """`athena.generate`'s path for a 9-channel U-Net: each forward gets the latent, then the mask at latent size,
    then the latent of the image with the masked pixels grey; pixels outside the mask come back unchanged."""
    from PIL import Image

    from athena.media.images import to_images, to_tensor
    from athena.pipelines.generate import GenerateRequest, encode, generate_pixels

    size = 32
    init = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    to_images(init)[0].save(tmp_path / "init.png")
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    inputs = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    try:
        out = generate_pixels(pipe, GenerateRequest("a cat", steps=3, width=size, height=size, seed=1,
                                                    init_image=str(tmp_path / "init.png"),
                                                    mask=str(tmp_path / "mask.png")))
    finally:
        hook.remove()
    pixels = to_tensor(Image.open(tmp_path / "init.png"))
    f = pipe.vae.cfg.downscale
    pmask = torch.zeros(1, 1, size, size)
    pmask[..., size // 2:] = 1
    small = torch.nn.functional.interpolate(pmask, size=(size // f, size // f), mode="bilinear")
    masked = encode(pipe, pixels * (1 - pmask))
    assert len(inputs) == 3 and all(x.shape[1] == 9 for x in inputs)
    for x in inputs:  # cond and uncond in one batch: both halves carry the same concat
        torch.testing.assert_close(x[:, 4:5], small.expand(x.shape[0], -1, -1, -1))
        torch.testing.assert_close(x[:, 5:], masked.expand(x.shape[0], -1, -1, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., :size // 2], pixels[..., :size // 2], atol=1e-6, rtol=0)


def test_generate_refuses_an_inpainting_unet_without_a_mask(pipe):
    from athena.errors import ConfigError
    from athena.pipelines.generate import GenerateRequest, generate_pixels

    with pytest.raises(ConfigError, match="inpainting model"):
        generate_pixels(pipe, GenerateRequest("a cat", steps=2, width=32, height=32))
