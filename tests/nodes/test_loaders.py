"""Loader nodes: one load per file through the shared cache, LoRAs that match `athena generate --lora` and leave the
cached pipeline untouched, standalone VAEs, and clear errors for what is not supported."""

import numpy as np
import pytest
import torch
from PIL import Image

from athena.cli import main
from athena.errors import ConfigError
from athena.graph.execute import Executor
from athena.nodes import conditioning as C
from athena.nodes import loaders as L
from athena.nodes import registry
from athena.nodes.types import LoraUse


def test_two_checkpoint_loaders_share_one_load(ctx, runtime):
    a = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    b = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    assert a[0].pipe is b[0].pipe and runtime.models.loads == 1
    assert a[2].vae is a[0].pipe.vae and a[2].scale == 0.18215
    assert L.CheckpointLoaderSimple.schema.by_name["ckpt_name"].choices(runtime) == ["tiny_sd1.safetensors",
                                                                                     "tiny_sdxl.safetensors"]
    with pytest.raises(ConfigError, match="not in the models/checkpoints folder"):
        L.CheckpointLoaderSimple.run(ctx, "nope.safetensors")


def test_lora_loader_records_loras_without_patching(ctx):
    model, clip, _ = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    m2, c2 = L.LoraLoader.run(ctx, model, clip, "fox.safetensors", 0.8, 0.5)
    path = ctx.services.folders.models / "loras" / "fox.safetensors"
    assert m2.loras == (LoraUse(path, 0.8),) and c2.loras == (LoraUse(path, 0.5),) and model.loras == ()
    assert L.LoraLoader.run(ctx, model, clip, "fox.safetensors", 0.0, 0.0) == (model, clip)
    m3, = L.LoraLoaderModelOnly.run(ctx, m2, "fox.safetensors", 0.3)
    assert [u.strength for u in m3.loras] == [0.8, 0.3]
    # encoding with a CLIP LoRA patches the text encoder only while encoding
    text_before = {k: v.clone() for k, v in clip.pipe.text.encoders[0].model.state_dict().items()}
    styled, = C.CLIPTextEncode.run("a fox", c2)
    plain, = C.CLIPTextEncode.run("a fox", clip)
    assert not torch.equal(styled[0].cond.context, plain[0].cond.context)
    after = clip.pipe.text.encoders[0].model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in text_before.items())
    assert all(torch.equal(v, model.pipe.unet.state_dict()[k]) for k, v in before.items())


def workflow(lora_strength=None):
    """txt2img at 32x32 pixels: the tiny VAE downsamples by 2, so EmptyLatentImage's 128 // 8 = 16 latent pixels."""
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}}}
    model, clip = ["1", 0], ["1", 1]
    if lora_strength is not None:
        g["2"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": "fox.safetensors",
                                                         "strength_model": lora_strength, "strength_clip": lora_strength}}
        model, clip = ["2", 0], ["2", 1]
    g |= {"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": clip}},
          "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
          "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
          "6": {"class_type": "KSampler", "inputs": {"model": model, "seed": 5, "steps": 3, "cfg": 7.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0],
                                                     "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
          "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
          "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "t"}}}
    return g


def saved(runtime, result):
    assert result.status == "success", result.error or result.errors
    info = result.outputs["8"]["images"][0]
    return np.asarray(Image.open(runtime.folders.output / info["subfolder"] / info["filename"])).astype(int)


def test_lora_workflow_matches_athena_generate_and_leaves_the_pipeline_unchanged(runtime, models_dir, tmp_path):
    ex = Executor(registry(), runtime)
    base = saved(runtime, ex.run(workflow()))
    pipe = runtime.models.get("pipeline", models_dir / "checkpoints" / "tiny_sd1.safetensors",
                              (str(runtime.device), str(runtime.dtype)), lambda: None)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    styled = saved(runtime, ex.run(workflow(0.8)))
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())  # LoRA removed after use
    assert np.abs(styled - base).mean() > 1.0
    assert np.array_equal(saved(runtime, ex.run(workflow())), base)  # the cached pipeline is still the base model
    for strength, image in ((None, base), (0.8, styled)):
        out = tmp_path / f"cli-{strength}.png"
        extra = ["--lora", f"fox:{strength}"] if strength is not None else []
        assert main(["generate", "a fox", "--models-dir", str(models_dir), "--model", "tiny_sd1", "--steps", "3",
                     "--width", "32", "--height", "32", "--seed", "5", "--cfg", "7", "-o", str(out), *extra]) == 0
        cli = np.asarray(Image.open(out).convert("RGB")).astype(int)
        assert np.abs(cli - image[..., :3]).max() <= 1  # the same sampling; VAE scale round trip may move a level


def test_vae_loader_and_unsupported_loaders(ctx, runtime):
    vae, = L.VAELoader.run(ctx, "tiny_vae.safetensors")
    assert vae.scale == 0.18215 and L.VAELoader.run(ctx, "tiny_vae.safetensors")[0].vae is vae.vae
    with pytest.raises(ConfigError, match="standalone text-encoder files are not supported"):
        L.CLIPLoader.run("x.safetensors", "stable_diffusion")
    with pytest.raises(ConfigError, match="DualCLIPLoader"):
        L.DualCLIPLoader.run("a", "b", "sdxl")


def test_inpaint_model_conditioning(ctx):
    _, clip, vae = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    pos, = C.CLIPTextEncode.run("a fox", clip)
    pixels = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 32, 32)
    mask[:, :, 16:] = 1
    p, _n, latent = C.InpaintModelConditioning.run(pos, pos, vae, pixels, mask, True)
    assert latent["samples"].shape == (1, 4, 16, 16) and latent["noise_mask"].shape == (1, 1, 32, 32)
    assert p[0].concat_latent.shape == (1, 4, 16, 16) and torch.equal(p[0].concat_mask, mask)
    assert not torch.equal(p[0].concat_latent, latent["samples"])  # the masked half is grey in the concat image
