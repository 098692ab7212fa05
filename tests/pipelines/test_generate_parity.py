"""End to end against diffusers: the same tiny random checkpoint, prompt, seed and cfg, with diffusers' Euler
scheduler given Athena's sigmas, give the same image within 2e-3 in [0, 1] pixels (fp32, before 8-bit rounding).

The diffusers pipelines are built from tiny random models with the real CLIP vocabulary, saved, and converted by
Athena to the original single-file layout, which is what Athena loads.
"""

import pytest
import torch

import athena
from athena.checkpoints.convert import to_single_file
from athena.checkpoints.load import open_checkpoint
from athena.diffusion.denoisers import discrete_schedule
from athena.diffusion.schedules import sigmas_for
from athena.media.images import to_images
from athena.pipelines.generate import GenerateRequest, encode, generate_pixels
from athena.text import clip_tokenizer
from tests.models.test_parity_diffusers import PLAIN, XATTN, randomize, unet_config
from tests.pipelines.test_sdxl_conditioning import text_model
from tests.text.corpus import write_hf_files

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
TOL = 2e-3
# No weight syntax: diffusers reads "(x)" as literal brackets, Athena (like ComfyUI) as a weight.
PROMPT, NEGATIVE, SEED, CFG = "a red fox in the snow, detailed fur, 8k", "blurry, lowres", 42, 7.5
SIZE = 32  # pixels; the 2-level VAE makes a 16 x 16 latent


def tiny_vae(seed, scaling_factor=0.18215):
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, scaling_factor=scaling_factor,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    return randomize(vae, seed)


def scheduler():
    # "leading" only sets the start scale to sqrt(sigma_max^2 + 1), as ComfyUI's full-denoise start; the sigmas are passed
    return diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            timestep_spacing="leading")


def saved(ref, tmp):
    ref.save_pretrained(tmp / "folder")
    single = tmp / "model.safetensors"
    to_single_file(open_checkpoint(tmp / "folder"), single)
    return single


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd1")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(write_hf_files(clip_tokenizer(), tmp / "tok"), model_max_length=77)
    unet = randomize(diffusers.UNet2DConditionModel(**unet_config((XATTN, PLAIN), (32, 64), heads=8, ctx=32)), 1)
    ref = diffusers.StableDiffusionPipeline(vae=tiny_vae(2), text_encoder=text_model(32, False, "quick_gelu", 3),
                                            tokenizer=tokenizer, unet=unet, scheduler=scheduler(), safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
    return ref, athena.load(saved(ref, tmp))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    tok_dir = write_hf_files(clip_tokenizer(), tmp / "tok")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token="!")
    unet = randomize(diffusers.UNet2DConditionModel(**unet_config(
        (PLAIN, XATTN), (32, 64), heads=(2, 4), linear=True, depth=(1, 2), ctx=64 + 64, adm=64 + 1536)), 1)
    ref = diffusers.StableDiffusionXLPipeline(
        vae=tiny_vae(2, scaling_factor=0.13025), text_encoder=text_model(64, False, "quick_gelu", 3),
        text_encoder_2=text_model(64, True, "gelu", 4), tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=scheduler())
    return ref, athena.load(saved(ref, tmp))


def sigmas(steps, denoise=1.0):
    return sigmas_for("normal", discrete_schedule(), steps, denoise=denoise).tolist()


def timesteps(steps):
    """The "normal" schedule's timesteps: whole numbers at full denoise, so diffusers' U-Net sees exactly Athena's t
    (given sigmas, diffusers would feed it t recovered by interpolation, off by float rounding)."""
    ms = discrete_schedule()
    return [int(t) for t in ms.timestep(sigmas_for("normal", ms, steps)[:-1])]


def ours(pipe, **options):
    req = GenerateRequest(PROMPT, negative=NEGATIVE, steps=10, sampler="euler", scheduler="normal", cfg=CFG,
                          seed=SEED, width=SIZE, height=SIZE, **options)
    return (generate_pixels(pipe, req) + 1) / 2


def assert_close_pixels(a, b):
    assert a.shape == b.shape
    err = (a.clamp(0, 1) - b).abs().max().item()
    assert err <= TOL, err
    assert b.std() > 0.01  # a real image, not a constant


def test_txt2img_matches_diffusers(sd1):
    ref, pipe = sd1
    want = ref(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, guidance_scale=CFG, timesteps=timesteps(10),
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert_close_pixels(ours(pipe), want)


def test_img2img_matches_diffusers(sd1, tmp_path):
    ref, pipe = sd1
    init = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    path = tmp_path / "init.png"
    to_images(init)[0].save(path)
    from athena.media.images import open_image, to_tensor

    pixels = to_tensor(open_image(path))
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**ref.components)
    want = img2img(PROMPT, negative_prompt=NEGATIVE, image=encode(pipe, pixels), strength=1.0, guidance_scale=CFG,
                   sigmas=sigmas(10, denoise=0.6), generator=torch.Generator("cpu").manual_seed(SEED),
                   output_type="pt").images  # a 4-channel image is taken as the (scaled) latent as it is
    assert_close_pixels(ours(pipe, init_image=str(path), strength=0.6), want)


def test_sdxl_txt2img_matches_diffusers(sdxl):
    ref, pipe = sdxl
    want = ref(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, guidance_scale=CFG, timesteps=timesteps(10),
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert_close_pixels(ours(pipe), want)
