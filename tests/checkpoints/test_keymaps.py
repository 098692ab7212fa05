"""Key maps are bijective tables whose images are exactly our models' keys, and match diffusers' real names."""

import pytest
import torch

from athena.checkpoints.diffusers_config import unet_from_diffusers, unet_to_diffusers, vae_to_diffusers
from athena.checkpoints.keymaps import sd_unet, sd_vae
from athena.models.unet import UNET_PRESETS, UNet
from athena.models.vae import VAE_PRESETS, AutoencoderKL

diffusers = pytest.importorskip("diffusers")


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_unet_keymap_is_bijection_onto_model_keys(name):
    cfg = UNET_PRESETS[name]
    table = sd_unet.diffusers_to_ldm(cfg)
    assert len(set(table.values())) == len(table)  # injective
    assert set(table.values()) == set(UNet(cfg, device="meta").state_dict())  # onto our keys


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_unet_preset_matches_diffusers_keys_and_shapes(name):
    """Full-size presets too, built on `meta`: diffusers' model mapped through our table == our model."""
    cfg = UNET_PRESETS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**{k: v for k, v in unet_to_diffusers(cfg).items() if k != "_class_name"})
    table = sd_unet.diffusers_to_ldm(cfg)
    ref_shapes = shapes(ref)
    assert set(ref_shapes) == set(table)
    assert {table[k]: s for k, s in ref_shapes.items()} == shapes(UNet(cfg, device="meta"))
    assert unet_from_diffusers(dict(ref.config), cfg.prediction) == cfg  # config round trip


@pytest.mark.parametrize("name", sorted(VAE_PRESETS))
def test_vae_keymap_matches_diffusers(name):
    cfg = VAE_PRESETS[name]
    table = sd_vae.diffusers_to_ldm(cfg)
    assert len(set(table.values())) == len(table)
    ours = shapes(AutoencoderKL(cfg, device="meta"))
    assert set(table.values()) == set(ours)
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(**{k: v for k, v in vae_to_diffusers(cfg, 0.18215, None).items() if k != "_class_name"})
    ref_shapes = shapes(ref)
    assert set(ref_shapes) == set(table)
    for k, s in ref_shapes.items():
        expect = ours[table[k]]
        assert s == (expect[:2] if table[k] in sd_vae.CONV_AS_LINEAR else expect), k
