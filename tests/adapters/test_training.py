"""LoRA and textual-inversion training from the bundled athena-tiny, small and fast (the full runs and their figures
are benchmarks/adapters.py): the trained adapters show the new concept, and the files they write load in Athena
and, for the LoRA, in diffusers, with the same outputs as the model that trained them."""

import pytest
import torch
from safetensors.torch import load_file

import athena
from athena.checkpoints.convert import to_diffusers
from athena.checkpoints.load import open_checkpoint
from athena.errors import ConfigError
from athena.pipelines.pipeline import bundled_model
from athena.training.config import TrainConfig
from athena.training.loop import train
from tests.adapters.concepts import colour_figures, star_figures, write_colour_folder, write_star_folder

FAST = dict(batch_size=16, lr=1e-3, warmup_steps=20, ema_decay=0.95, log_every=50, device="cpu", tensorboard=False)


@pytest.fixture(scope="module")
def star_lora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("star")
    cfg = TrainConfig(task="lora", dataset=str(write_star_folder(tmp / "data", 128)), out=str(tmp / "run"), steps=200,
                      sample_every=200, save_every=200, lora_targets="attn,ff,proj,conv", **FAST)
    return train(cfg, quiet=True)


def test_lora_learns_the_star(star_lora):
    figures = star_figures(athena.load("athena-tiny"), star_lora, n=8)
    assert figures["lora"] > figures["base"] + 0.08, figures


def test_lora_file_is_kohya_and_loads_in_diffusers(star_lora, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    keys = load_file(star_lora)
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    pipe = athena.load("athena-tiny")
    to_diffusers(open_checkpoint(bundled_model()), tmp_path / "d")
    unet = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "d" / "unet").float()
    ref = diffusers.StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=None,
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.load_lora_weights(str(star_lora), adapter_name="star")
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0]), torch.randn(2, 77, 64, generator=g)
    handle = pipe.load_lora(star_lora)
    assert not handle.unmatched
    with torch.no_grad():
        want, got = ref.unet(x, t, ctx).sample, pipe.unet(x, t, ctx)
        handle.remove()
        base = pipe.unet(x, t, ctx)
    assert (want - base).abs().max() > 1e-2  # the LoRA is on in diffusers
    assert (got - want).abs().max() <= 1e-4


def test_textual_inversion_learns_a_colour_word(tmp_path, real_fashion_dir):
    data = write_colour_folder(tmp_path / "data", 128, "<teal>", data_dir=real_fashion_dir)
    cfg = TrainConfig(task="ti", dataset=str(data), out=str(tmp_path / "run"), steps=150, sample_every=150,
                      save_every=150, ti_token="<teal>", **{**FAST, "lr": 5e-3})
    path = train(cfg, quiet=True)
    assert set(load_file(path)) == {"emb_params"}  # A1111's safetensors layout
    (tmp_path / "embeddings").mkdir()
    path.rename(tmp_path / "embeddings" / "teal.safetensors")
    figures = colour_figures(athena.load("athena-tiny", embeddings=tmp_path / "embeddings"), n=8)
    assert figures["ti"] < figures["base"] - 0.1, figures


def test_text_encoder_lora_and_a_small_folder(tmp_path):
    """--lora-text adds the CLIP layers (lora_te_*), and a folder smaller than a sample grid trains."""
    cfg = TrainConfig(task="lora", dataset=str(write_star_folder(tmp_path / "data", 6)), out=str(tmp_path / "run"),
                      steps=2, sample_every=2, save_every=2, lora_text=True, **{**FAST, "warmup_steps": 1})
    path = train(cfg, quiet=True)
    keys = load_file(path)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    pipe = athena.load("athena-tiny")
    before = pipe.encode_prompt("a red star on a blue background").context
    handle = pipe.load_lora(path, 1.0, 1.0)
    assert not handle.unmatched
    assert (pipe.encode_prompt("a red star on a blue background").context - before).abs().max() > 0


def test_textual_inversion_needs_the_token_in_the_captions(tmp_path):
    cfg = TrainConfig(task="ti", dataset=str(write_star_folder(tmp_path / "data", 4)), out=str(tmp_path / "run"),
                      steps=2, ti_token="<teal>", **FAST)
    with pytest.raises(ConfigError, match="appears in none of the dataset's captions"):
        train(cfg, quiet=True)
