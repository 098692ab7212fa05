"""Loader nodes: one load per file through the shared cache, LoRAs that match `athena generate --lora` and leave the
cached pipeline untouched, standalone VAEs and text encoders, and clear errors for what is not supported."""

import json
import shutil
import warnings
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from PIL import Image

from athena.cancel import CancelToken
from athena.checkpoints import text
from athena.checkpoints.build import text_config
from athena.checkpoints.io import DictWeights
from athena.checkpoints.keymaps import open_clip
from athena.checkpoints.load import TEXT_FILE_PREFIXES, open_checkpoint
from athena.checkpoints.safetensors import save_file
from athena.checkpoints.text import META_TEXT
from athena.cli import main
from athena.errors import CheckpointError, ConfigError
from athena.graph.execute import Executor
from athena.graph.node import Context
from athena.graph.validate import check_node
from athena.models.clip import CLIPTextModel
from athena.nodes import conditioning as C
from athena.nodes import loaders as L
from athena.nodes import registry
from athena.nodes.runtime import Folders, Runtime
from athena.nodes.types import LoraUse
from athena.pipelines.conditioning import FAMILY_TEXT


def test_two_checkpoint_loaders_share_one_load(ctx, runtime):
    a = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    b = L.CheckpointLoaderSimple.run(ctx, "tiny_sd1.safetensors")
    assert a[0].pipe is b[0].pipe and runtime.models.loads == 1
    assert a[2].vae is a[0].pipe.vae and a[2].scale == 0.18215
    assert L.CheckpointLoaderSimple.schema.by_name["ckpt_name"].choices(runtime) == [
        "athena-tiny.safetensors", "tiny_sd1.safetensors", "tiny_sdxl.safetensors"]  # the bundled model is always there
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


def test_vae_loader(ctx, runtime):
    vae, = L.VAELoader.run(ctx, "tiny_vae.safetensors")
    assert vae.scale == 0.18215 and L.VAELoader.run(ctx, "tiny_vae.safetensors")[0].vae is vae.vae


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


# ---------------------------------------------------------------- standalone text encoders (CLIPLoader, DualCLIPLoader)


@pytest.fixture(scope="module")
def te_models(models_dir, tmp_path_factory):
    """A models folder with the tiny checkpoints, the fox LoRA and their text encoders as standalone files:
    text_encoders/{sd1_clip_l (HF), sdxl_clip_l (HF), sdxl_clip_g (OpenCLIP), sdxl_clip_g_hf (HF)}.safetensors,
    clip/sd1_clip_l_prefixed.safetensors (the checkpoint's own prefix kept), and files Athena must refuse."""
    root = tmp_path_factory.mktemp("te_models")
    for sub in ("checkpoints", "loras"):
        (root / sub).mkdir()
        for f in (models_dir / sub).iterdir():
            shutil.copy(f, root / sub / f.name)
    te, legacy = root / "text_encoders", root / "clip"
    te.mkdir(), legacy.mkdir()

    def write(w, path, prefix="", metadata=True):
        meta = {META_TEXT: w.metadata[META_TEXT]} if metadata else {}
        save_file({prefix + k: w.get(k) for k in w}, path, meta)

    sd1, sdxl = (open_checkpoint(root / "checkpoints" / f"tiny_{n}.safetensors") for n in ("sd1", "sdxl"))
    write(sd1.text["clip_l"], te / "sd1_clip_l.safetensors")
    write(sd1.text["clip_l"], legacy / "sd1_clip_l_prefixed.safetensors", "cond_stage_model.transformer.")
    write(sdxl.text["clip_l"], te / "sdxl_clip_l.safetensors")
    assert open_clip.is_open_clip(sdxl.text["clip_g"])
    write(sdxl.text["clip_g"], te / "sdxl_clip_g.safetensors")
    write(text.hf_names(sdxl.text["clip_g"]), te / "sdxl_clip_g_hf.safetensors")
    write(sd1.text["clip_l"], te / "width32_no_metadata.safetensors", metadata=False)
    save_file({"shared.weight": torch.zeros(8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)},
              te / "t5_like.safetensors")
    sd1.close(), sdxl.close()
    return root


@pytest.fixture
def te_ctx(te_models, tmp_path):
    for sub in ("output", "input", "temp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    rt = Runtime(Folders(te_models, tmp_path / "output", tmp_path / "input", tmp_path / "temp"))
    return Context("1", rt, CancelToken(), lambda v, t, p: None)


def same_conditioning(a, b):
    """Two CLIPTextEncode results (one CONDITIONING output of one entry each) are bit for bit the same."""
    ((ea,),), ((eb,),) = a, b
    for x, y in ((ea.cond.context, eb.cond.context), (ea.cond.pooled, eb.cond.pooled), (ea.cond.y, eb.cond.y)):
        assert (x is None and y is None) or torch.equal(x, y)


PROMPTS = ("a red fox in the snow", "a (red:1.3) fox, [snow]", "")


def test_clip_loader_matches_the_checkpoint_clip(te_ctx):
    _, ckpt_clip, _ = L.CheckpointLoaderSimple.run(te_ctx, "tiny_sd1.safetensors")
    clip, = L.CLIPLoader.run(te_ctx, "sd1_clip_l.safetensors", "stable_diffusion")
    assert clip.pipe.family.name == "sd1"
    assert clip.pipe.text.encoders[0].model is not ckpt_clip.pipe.text.encoders[0].model  # its own file, its own load
    for prompt in PROMPTS:
        same_conditioning(C.CLIPTextEncode.run(prompt, clip), C.CLIPTextEncode.run(prompt, ckpt_clip))
    skip2, = C.CLIPSetLastLayer.run(clip, -2)
    ckpt_skip2 = replace(ckpt_clip, clip_skip=-2)
    same_conditioning(C.CLIPTextEncode.run("a fox", skip2), C.CLIPTextEncode.run("a fox", ckpt_skip2))
    # the legacy models/clip/ folder and a file that kept its checkpoint prefix; one load per file and device
    legacy, = L.CLIPLoader.run(te_ctx, "sd1_clip_l_prefixed.safetensors", "stable_diffusion", "cpu")
    same_conditioning(C.CLIPTextEncode.run("a fox", legacy), C.CLIPTextEncode.run("a fox", ckpt_clip))
    loads = te_ctx.services.models.loads
    assert L.CLIPLoader.run(te_ctx, "sd1_clip_l.safetensors", "stable_diffusion")[0].pipe is clip.pipe
    assert te_ctx.services.models.loads == loads
    options = L.CLIPLoader.schema.by_name["clip_name"].choices(te_ctx.services)
    assert "sd1_clip_l.safetensors" in options and "sd1_clip_l_prefixed.safetensors" in options  # both folders


def test_dual_clip_loader_sdxl_in_either_order(te_ctx):
    _, ckpt_clip, _ = L.CheckpointLoaderSimple.run(te_ctx, "tiny_sdxl.safetensors")
    want = C.CLIPTextEncode.run("a red fox", ckpt_clip)
    want_sdxl = C.CLIPTextEncodeSDXL.run(ckpt_clip, 64, 64, 0, 0, 64, 64, "a fox", "snow")
    pairs = [("sdxl_clip_l.safetensors", "sdxl_clip_g.safetensors"),
             ("sdxl_clip_g.safetensors", "sdxl_clip_l.safetensors"),
             ("sdxl_clip_g_hf.safetensors", "sdxl_clip_l.safetensors")]  # bigG in OpenCLIP and in HF layout
    clips = [L.DualCLIPLoader.run(te_ctx, a, b, "sdxl")[0] for a, b in pairs]
    assert clips[0].pipe is clips[1].pipe  # one load for the pair, whichever slot holds which file
    for clip in clips:
        assert [e.spec.name for e in clip.pipe.text.encoders] == ["clip_l", "clip_g"]
        same_conditioning(C.CLIPTextEncode.run("a red fox", clip), want)
        same_conditioning(C.CLIPTextEncodeSDXL.run(clip, 64, 64, 0, 0, 64, 64, "a fox", "snow"), want_sdxl)
    # a lone clip_g is the SDXL refiner's text side, as in ComfyUI
    assert L.CLIPLoader.run(te_ctx, "sdxl_clip_g.safetensors", "stable_diffusion")[0].pipe.family.name == "sdxl_refiner"


def test_text_encoder_files_and_types_that_are_not_supported(te_ctx):
    with pytest.raises(CheckpointError, match=r"width32_no_metadata.safetensors: a CLIP text encoder of width 32.*"
                                              r"CLIP-L \(width 768.*ViT-H \(1024.*bigG \(1280"):
        L.CLIPLoader.run(te_ctx, "width32_no_metadata.safetensors", "stable_diffusion")
    with pytest.raises(CheckpointError, match=r"t5_like.safetensors: not a CLIP text encoder.*HF or OpenCLIP"):
        L.CLIPLoader.run(te_ctx, "t5_like.safetensors", "stable_diffusion")
    with pytest.raises(ConfigError, match="sdxl_clip_l.safetensors and sd1_clip_l.safetensors are both clip_l"):
        L.DualCLIPLoader.run(te_ctx, "sdxl_clip_l.safetensors", "sd1_clip_l.safetensors", "sdxl")
    with pytest.raises(ConfigError, match=r"CLIPLoader: type 'wan' is not supported.*'stable_diffusion'"):
        L.CLIPLoader.run(te_ctx, "sd1_clip_l.safetensors", "wan")
    with pytest.raises(ConfigError, match=r"DualCLIPLoader: type 'flux' is not supported.*'sdxl' with a clip_l and"):
        L.DualCLIPLoader.run(te_ctx, "sdxl_clip_l.safetensors", "sdxl_clip_g.safetensors", "flux")
    with pytest.raises(ConfigError, match="'nope.safetensors' is not in the models/text_encoders folder"):
        L.CLIPLoader.run(te_ctx, "nope.safetensors", "stable_diffusion")
    # the same messages at validation, before anything loads (any type name, not only ComfyUI's list)
    sd1 = "sd1_clip_l.safetensors"
    graph = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": sd1, "type": "sd3"}},
             "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "sdxl_clip_l.safetensors",
                                                              "clip_name2": "nope.safetensors", "type": "sdxl"}},
             "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": sd1, "type": "some_future_type"}},
             "4": {"class_type": "CLIPLoader",
                   "inputs": {"clip_name": sd1, "type": "stable_diffusion", "device": "cpu"}}}
    errors = {nid: e for nid, spec in graph.items()
              for e in check_node(nid, spec, graph, registry(), te_ctx.services, {})}
    assert errors["1"].code == "custom_validation_failed" and "type 'sd3' is not supported" in errors["1"].message
    assert "'nope.safetensors' is not in the models/text_encoders folder" in errors["2"].message
    assert "type 'some_future_type' is not supported" in errors["3"].message and "4" not in errors
    assert te_ctx.services.models.loads == 0


def test_lora_on_a_text_only_clip(te_ctx):
    model, ckpt_clip, _ = L.CheckpointLoaderSimple.run(te_ctx, "tiny_sd1.safetensors")
    clip, = L.CLIPLoader.run(te_ctx, "sd1_clip_l.safetensors", "stable_diffusion")
    text_model = clip.pipe.text.encoders[0].model
    before = {k: v.clone() for k, v in text_model.state_dict().items()}
    plain = C.CLIPTextEncode.run("a fox", clip)
    _, styled_clip = L.LoraLoader.run(te_ctx, model, clip, "fox.safetensors", 0.8, 0.5)
    _, styled_ckpt = L.LoraLoader.run(te_ctx, model, ckpt_clip, "fox.safetensors", 0.8, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the LoRA's U-Net half has nothing to fit in a text-only CLIP: no warning
        styled = C.CLIPTextEncode.run("a fox", styled_clip)
    assert not torch.equal(styled[0][0].cond.context, plain[0][0].cond.context)
    same_conditioning(styled, C.CLIPTextEncode.run("a fox", styled_ckpt))  # the same LoRA on the checkpoint's CLIP
    after = text_model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the cached encoder is the base model again
    same_conditioning(C.CLIPTextEncode.run("a fox", clip), plain)
    xl = te_ctx.services.folders.models / "loras" / "xl_text.safetensors"  # SDXL's second text encoder only
    save_file({"lora_te2_text_model_x.lora_down.weight": torch.zeros(2, 4),
               "lora_te2_text_model_x.lora_up.weight": torch.zeros(4, 2)}, xl)
    with pytest.raises(CheckpointError, match="none of its 1 modules fit this SD1.x model"):
        C.CLIPTextEncode.run("a fox", replace(clip, loras=(LoraUse(xl, 1.0),)))


def test_text_encoders_are_told_by_width_in_either_layout_and_under_checkpoint_prefixes():
    def shapes(width, open_clip_names=False, prefix=""):  # meta tensors: only shapes are read
        key = "token_embedding.weight" if open_clip_names else "text_model.embeddings.token_embedding.weight"
        return DictWeights({prefix + key: torch.empty(49408, width, device="meta")})

    for width, name in ((768, "clip_l"), (1024, "clip_h"), (1280, "clip_g")):
        for w in (shapes(width), shapes(width, True), shapes(width, True, "conditioner.embedders.1.model."),
                  shapes(width, False, "cond_stage_model.transformer.")):
            assert text.encoder_name(text.standalone(w, TEXT_FILE_PREFIXES), "f.safetensors") == name
    with pytest.raises(CheckpointError, match="width 512"):
        text.encoder_name(shapes(512), "f.safetensors")


def test_clip_loader_with_an_openclip_h_file_is_sd2(te_ctx):
    cfg = text_config("clip_h", 32, 2)
    model = CLIPTextModel(cfg)
    openclip = {k: p.make() for k, p in open_clip.from_hf(DictWeights(model.state_dict())).items()}
    save_file(openclip, te_ctx.services.folders.models / "text_encoders" / "tiny_clip_h.safetensors",
              {META_TEXT: json.dumps({"clip_h": asdict(cfg)})})
    clip, = L.CLIPLoader.run(te_ctx, "tiny_clip_h.safetensors", "stable_diffusion")
    enc, = clip.pipe.text.encoders
    assert clip.pipe.family.name == "sd2" and enc.spec == FAMILY_TEXT["sd2"][0] and enc.layers_dropped == 0
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in model.state_dict().items())
    (entry,), = C.CLIPTextEncode.run("a fox", clip)
    assert entry.cond.context.shape == (1, 77, 32) and entry.cond.y is None
