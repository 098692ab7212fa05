"""End to end: a tiny SDXL single file -> athena.load -> encode_prompt, against diffusers' StableDiffusionXLPipeline
(`encode_prompt` plus `_get_add_time_ids`) on the same weights. Tolerance: max abs error <= 1e-4 (fp32).

The diffusers pipeline is built from tiny random models with the real 49,408-token vocabulary, saved as a folder,
and converted to the original single-file layout by Athena; both layouts are loaded.
"""

import pytest
import torch

import athena
from athena.checkpoints.convert import to_single_file
from athena.checkpoints.load import open_checkpoint
from athena.text import clip_tokenizer
from tests.models.test_parity_diffusers import PLAIN, XATTN, randomize, unet_config
from tests.text.corpus import write_hf_files

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
TOL = 1e-4
WIDTH_L, WIDTH_G = 64, 96  # head size 32: the heads come from the files' configs, not the 64 convention
# No weight syntax (diffusers reads none) and no "!": SDXL's second diffusers tokenizer declares "!" its pad token, so a
# typed "!" becomes id 0 there; ComfyUI and Athena keep it as the word "!" (id 256).
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, 8k, masterpiece.", ""]


def text_model(width: int, projection: bool, act: str, seed: int):
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=width, num_attention_heads=width // 32,
                                      num_hidden_layers=3, intermediate_size=2 * width, hidden_act=act,
                                      max_position_embeddings=77, projection_dim=width, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407)
    model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(cfg)
    return randomize(model, seed)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    tok_dir = write_hf_files(clip_tokenizer(), tmp / "tok")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token="!")  # SDXL's bigG pads with id 0
    unet = randomize(diffusers.UNet2DConditionModel(**unet_config(
        (PLAIN, XATTN), (32, 64), heads=(2, 4), linear=True, depth=(1, 2), ctx=WIDTH_L + WIDTH_G, adm=WIDTH_G + 1536)), 1)
    vae = randomize(diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1,
                                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2), 2)
    ref = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_model(WIDTH_L, False, "quick_gelu", 3), text_encoder_2=text_model(WIDTH_G, True, "gelu", 4),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=diffusers.EulerDiscreteScheduler())
    folder = tmp / "folder"
    ref.save_pretrained(folder)
    single = tmp / "sdxl.safetensors"
    to_single_file(open_checkpoint(folder), single)
    return ref, folder, single


def reference(ref, prompt: str, size=(1024, 1024), crop=(0, 0), original=None):
    with torch.no_grad():
        context, _, pooled, _ = ref.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    time_ids = ref._get_add_time_ids(original or size, crop, size, dtype=torch.float32,
                                     text_encoder_projection_dim=ref.text_encoder_2.config.projection_dim)
    fourier = diffusers.models.embeddings.Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    y = torch.cat([pooled, fourier(time_ids.flatten()).reshape(1, -1)], dim=1)  # what diffusers' U-Net builds
    return context, y


@pytest.mark.parametrize("layout", ["single", "diffusers"])
def test_sdxl_context_and_y_match_diffusers(sdxl, layout):
    ref, folder, single = sdxl
    pipe = athena.load(single if layout == "single" else folder)
    assert pipe.family.name == "sdxl"
    for prompt in PROMPTS:
        want_context, want_y = reference(ref, prompt)
        got = pipe.encode_prompt(prompt)
        assert got.context.shape == (1, 77, WIDTH_L + WIDTH_G) and got.y is not None
        assert got.y.shape == (1, WIDTH_G + 1536) == (1, pipe.unet.cfg.adm_in_channels)
        assert (got.context - want_context).abs().max() <= TOL, prompt
        assert (got.y - want_y).abs().max() <= TOL, prompt


def test_sdxl_size_conditioning_matches_diffusers(sdxl):
    ref, _, single = sdxl
    pipe = athena.load(single)
    _, want_y = reference(ref, "a cat", size=(768, 1344), crop=(16, 32), original=(512, 512))
    got = pipe.encode_prompt("a cat", height=768, width=1344, crop=(16, 32), original_size=(512, 512))
    assert (got.y - want_y).abs().max() <= TOL
    assert (got.y - pipe.encode_prompt("a cat").y).abs().max() > 0.1  # the sizes really enter `y`


def test_refiner_conditions_on_bigg_with_aesthetic_score(tmp_path):
    """The refiner: bigG's penultimate layer alone, and `y` = pooled + (original h, w, crop, aesthetic score)."""
    from dataclasses import replace

    from athena.checkpoints.build import random_checkpoint
    from athena.models.unet import TINY_SDXL, adm_vector
    unet_cfg = replace(TINY_SDXL, context_dim=96, adm_in_channels=96 + 5 * 256)
    path = random_checkpoint(tmp_path / "refiner.safetensors", "sdxl_refiner", unet_cfg, None, {"clip_g": (96, 2)},
                             dtype=torch.float32, metadata=True)
    pipe = athena.load(path)
    assert pipe.family.name == "sdxl_refiner"
    cond = pipe.encode_prompt("a cat", width=768, height=512, aesthetic_score=2.5)
    assert cond.context.shape == (1, 77, 96) and cond.y.shape == (1, unet_cfg.adm_in_channels)
    assert torch.equal(cond.y, adm_vector(cond.pooled, torch.tensor([[512.0, 768.0, 0.0, 0.0, 2.5]])))
    with torch.no_grad():
        out = pipe.unet(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), cond.context, cond.y)
    assert out.shape == (1, 4, 8, 8)


def test_single_file_has_the_real_text_layout(sdxl):
    """transformers 5 saves CLIPTextModel without `text_model.`; the converted file still has the real SDXL names."""
    from athena.checkpoints.safetensors import SafetensorsFile
    _, _, single = sdxl
    with SafetensorsFile(single) as f:
        keys = set(f)
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("conditioner.embedders.0.transformer.embeddings.") for k in keys)
