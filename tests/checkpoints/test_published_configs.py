"""Full-size presets against the published diffusers configs (as shipped in the real model folders).

The diffusers models are built on the `meta` device from those literal configs, mapped through our key
tables, and compared key-for-key and shape-for-shape with our presets; the configs also parse to the presets.
"""

import pytest
import torch

from athena.checkpoints.diffusers_config import unet_from_diffusers, vae_from_diffusers
from athena.checkpoints.keymaps import sd_unet, sd_vae
from athena.models.unet import SD15, SD21, SDXL, SDXL_REFINER, UNet
from athena.models.vae import SD_VAE, AutoencoderKL

diffusers = pytest.importorskip("diffusers")

X, D = "CrossAttnDownBlock2D", "DownBlock2D"
XU, U = "CrossAttnUpBlock2D", "UpBlock2D"
PUBLISHED_UNETS = {  # unet/config.json of the released pipelines (architecture fields)
    "sd15": (SD15, {"attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
                    "down_block_types": [X, X, X, D], "up_block_types": [U, XU, XU, XU], "layers_per_block": 2,
                    "in_channels": 4, "out_channels": 4, "sample_size": 64}),
    "sd21": (SD21, {"attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
                    "cross_attention_dim": 1024, "down_block_types": [X, X, X, D], "up_block_types": [U, XU, XU, XU],
                    "layers_per_block": 2, "use_linear_projection": True, "upcast_attention": True, "sample_size": 96}),
    "sdxl": (SDXL, {"addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
                    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
                    "down_block_types": [D, X, X], "up_block_types": [XU, XU, U], "layers_per_block": 2,
                    "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [1, 2, 10],
                    "use_linear_projection": True, "sample_size": 128}),
    "sdxl_refiner": (SDXL_REFINER, {"addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                                    "attention_head_dim": [6, 12, 24, 24], "block_out_channels": [384, 768, 1536, 1536],
                                    "cross_attention_dim": 1280, "down_block_types": [D, X, X, D],
                                    "up_block_types": [U, XU, XU, U], "layers_per_block": 2,
                                    "projection_class_embeddings_input_dim": 2560, "transformer_layers_per_block": 4,
                                    "use_linear_projection": True, "sample_size": 128}),
}
PUBLISHED_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
                 "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                 "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512}


def shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", sorted(PUBLISHED_UNETS))
def test_preset_equals_published_unet(name):
    preset, config = PUBLISHED_UNETS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**config)
    assert unet_from_diffusers(config, preset.prediction) == preset
    table = sd_unet.diffusers_to_ldm(preset)
    ref_shapes = shapes(ref)
    assert set(ref_shapes) == set(table)
    assert {table[k]: s for k, s in ref_shapes.items()} == shapes(UNet(preset, device="meta"))


def test_sd_vae_equals_published():
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(**PUBLISHED_VAE)
    assert vae_from_diffusers(PUBLISHED_VAE) == SD_VAE
    ours = shapes(AutoencoderKL(SD_VAE, device="meta"))
    table = sd_vae.diffusers_to_ldm(SD_VAE)
    for k, s in shapes(ref).items():
        assert s == ours[table[k]][: len(s)], k
    assert set(table) == set(shapes(ref))
