"""ComfyUI's classic SD1.x/SD2.x/SDXL templates, run end to end: converted from the UI format, given tiny random
models under the templates' own file names, shrunk to 64 pixels and a few steps, executed, and their images checked.

A template is skipped (with the reason) when Athena lacks one of its node types, or when it needs a kind of model
file this test cannot build (ControlNet, upscale models). docs/workflows.md lists what runs and what does not.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import athena
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.safetensors import save_file
from athena.graph.execute import Executor
from athena.graph.node import Registry
from athena.graph.validate import is_link
from athena.graph.workflow import convert
from athena.models.unet import TINY_SD1, TINY_SD2, TINY_SDXL
from athena.models.vae import TINY_VAE
from athena.nodes import registry
from athena.nodes.runtime import Folders, Runtime
from tests.adapters.test_apply import lora_file
from tests.graph.templates import CHECKPOINT_FAMILY, sd_templates

SIZE, STEPS = 64, 4  # the largest latent side in pixels after shrinking; sampler steps
VAE8 = replace(TINY_VAE, ch_mult=(1, 1, 1, 1))  # 8x down like the real VAEs, so that sizes follow ComfyUI's
FILE_INPUTS = {  # (class, input) -> the folder its file names live in
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras", ("VAELoader", "vae_name"): "vae",
    ("LoadImage", "image"): "input", ("LoadImageMask", "image"): "input",
}
TEMPLATES = sd_templates()
KNOWN_GAPS: dict[str, str] = {}  # template -> why it fails today (a strict xfail: a fix shows up as XPASS)


# ---- tiny stand-ins for the templates' files ------------------------------------------------------------------------

def build_family(family: str, path: Path) -> None:
    """A random checkpoint of `family` at tiny size (SDXL's context = clip_l + clip_g widths, as in conftest)."""
    f32 = torch.float32
    if family == "sd1":
        random_checkpoint(path, "sd1", TINY_SD1, VAE8, {"clip_l": (32, 2)}, dtype=f32)
    elif family in ("sd2", "sd2_inpaint"):
        cfg = replace(TINY_SD2, in_channels=9) if family == "sd2_inpaint" else TINY_SD2
        random_checkpoint(path, "sd2", cfg, VAE8, {"clip_h": (32, 2)}, dtype=f32)
    elif family == "sdxl":
        random_checkpoint(path, "sdxl", replace(TINY_SDXL, context_dim=96, adm_in_channels=64 + 6 * 256), VAE8,
                          {"clip_l": (32, 2), "clip_g": (64, 2)}, dtype=f32, seed=1)
    elif family == "sdxl_refiner":
        random_checkpoint(path, "sdxl_refiner", replace(TINY_SDXL, context_dim=96, adm_in_channels=96 + 5 * 256),
                          VAE8, {"clip_g": (96, 2)}, dtype=f32, seed=2, metadata=True)
    else:
        raise AssertionError(family)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """models/ with every checkpoint name of CHECKPOINT_FAMILY (one build per family, copied), plus the SD1 LoRA,
    VAE and embedding files the templates name."""
    root = tmp_path_factory.mktemp("template_models")
    for sub in ("checkpoints", "loras", "vae", "embeddings"):
        (root / sub).mkdir()
    built: dict[str, Path] = {}
    for name, family in CHECKPOINT_FAMILY.items():
        if family not in built:
            build_family(family, root / "checkpoints" / name)
            built[family] = root / "checkpoints" / name
        else:
            shutil.copy(built[family], root / "checkpoints" / name)
    sd1 = athena.load(built["sd1"])
    for i, name in enumerate(("MoXinV1.safetensors", "blindbox_v1_mix.safetensors")):
        lora_file(sd1, root / "loras" / name, i, alpha=1.0)
    g = torch.Generator().manual_seed(5)
    save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in sd1.vae.state_dict().items()}, root / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=g)}}, root / "embeddings" / "SDA768.pt")
    return root


def write_image(path: Path) -> None:
    """A 64x48 RGBA picture whose alpha is transparent in a square (LoadImage's mask: where to inpaint)."""
    g = torch.Generator().manual_seed(len(path.name))
    rgb = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8)
    alpha = torch.full((48, 64, 1), 255, dtype=torch.uint8)
    alpha[12:36, 16:48] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(rgb.numpy(), "RGB").save(path)
    else:
        Image.fromarray(torch.cat([rgb, alpha], 2).numpy(), "RGBA").save(path)


# ---- shrinking the prompt ------------------------------------------------------------------------------------

def shrink(prompt: dict[str, dict[str, Any]], reg: Registry) -> None:
    """Sizes scaled so the largest latent side is SIZE pixels (multiples of 8, at least the input's minimum), STEPS
    sampler steps with the step ranges of two-pass samplers scaled alike, and image rescales to about SIZE^2 pixels."""
    sides = [v for s in prompt.values() if s["class_type"] == "EmptyLatentImage"
             for k, v in s["inputs"].items() if k in ("width", "height") and isinstance(v, int)]
    factor = SIZE / max(sides or [512])
    for spec in prompt.values():
        inputs = spec["inputs"]
        for key in ("width", "height", "x", "y", "left", "top", "right", "bottom"):
            if isinstance(inputs.get(key), int) and not isinstance(inputs[key], bool) and inputs[key] > 0:
                low = reg[spec["class_type"]].schema.by_name[key].min if key in reg[spec["class_type"]].schema.by_name \
                    else None
                inputs[key] = max(8, int(low or 0), round(inputs[key] * factor / 8) * 8)
        old = inputs.get("steps")
        if isinstance(old, int) and old > STEPS:
            inputs["steps"] = STEPS
            for key in ("start_at_step", "end_at_step"):
                if isinstance(inputs.get(key), int) and inputs[key] <= old:
                    inputs[key] = round(inputs[key] * STEPS / old)
        if isinstance(inputs.get("megapixels"), (int, float)):
            low = reg[spec["class_type"]].schema.by_name["megapixels"].min or 0
            inputs["megapixels"] = max(low, SIZE * SIZE / (1024 * 1024))
        if isinstance(inputs.get("batch_size"), int):
            inputs["batch_size"] = 1


def expected_size(prompt: dict[str, dict[str, Any]], link: Any, folders: Folders) -> tuple[int, int] | None:
    """The (width, height) in pixels an IMAGE or LATENT link carries, traced back through the node types these
    templates use; None when a node on the way is not one of them."""
    if not is_link(link):
        return None
    spec = prompt[str(link[0])]
    kind, inputs = spec["class_type"], spec["inputs"]
    up = lambda name: expected_size(prompt, inputs.get(name), folders)  # noqa: E731
    if kind in ("EmptyLatentImage", "ImageScale"):
        return inputs["width"], inputs["height"]
    if kind == "LatentUpscale" and inputs.get("width") and inputs.get("height"):
        return max(64, inputs["width"]), max(64, inputs["height"])  # ComfyUI's node never goes below 64
    if kind == "LoadImage":
        return Image.open(folders.input_file(inputs["image"])).size
    if kind in ("VAEDecode", "VAEDecodeTiled"):
        return up("samples")
    if kind in ("KSampler", "KSamplerAdvanced", "SamplerCustom"):
        return up("latent_image")
    if kind in ("VAEEncode", "VAEEncodeForInpaint"):
        size = up("pixels")
        return None if size is None else (size[0] // 8 * 8, size[1] // 8 * 8)
    if kind in ("LatentUpscaleBy", "ImageScaleBy"):
        size, s = up("samples" if kind == "LatentUpscaleBy" else "image"), inputs.get("scale_by")
        if size is None or not isinstance(s, (int, float)):
            return None
        return (round(size[0] / 8 * s) * 8, round(size[1] / 8 * s) * 8) if kind == "LatentUpscaleBy" else \
            (round(size[0] * s), round(size[1] * s))
    if kind == "ImageScaleToTotalPixels":
        size = up("image")
        if size is None:
            return None
        scale = math.sqrt(int(inputs["megapixels"] * 1024 * 1024) / (size[0] * size[1]))
        return round(size[0] * scale), round(size[1] * scale)
    if kind == "ImagePadForOutpaint":
        size = up("image")
        return None if size is None else (size[0] + inputs["left"] + inputs["right"],
                                          size[1] + inputs["top"] + inputs["bottom"])
    return None


# ---- the test ---------------------------------------------------------------------------------------------------

def prepare(name: str, models: Path, tmp_path: Path) -> tuple[dict[str, Any], Runtime]:
    """The template's shrunk API prompt and a Runtime whose folders hold every file it names; skips when it cannot."""
    reg = registry()
    conv = convert(TEMPLATES[name], reg)
    if conv.missing:
        pytest.skip(f"Athena lacks node types: {', '.join(conv.missing)}")
    folders = Folders(models, tmp_path / "output", tmp_path / "input", tmp_path / "temp")
    for sub in ("output", "input", "temp"):
        (tmp_path / sub).mkdir()
    for spec in conv.prompt.values():
        for key, value in spec["inputs"].items():
            inp = reg[spec["class_type"]].schema.by_name.get(key)
            if inp is None or not callable(inp.options) or is_link(value):
                continue
            folder = FILE_INPUTS.get((spec["class_type"], key))
            if folder is None:
                pytest.skip(f"needs a {spec['class_type']}.{key} file ({value}) this test cannot build")
            if folder == "input":
                write_image(folders.input / value)
            elif not (models / folder / value).exists():
                pytest.skip(f"needs models/{folder}/{value}, which this test does not build")
    shrink(conv.prompt, reg)
    return conv.prompt, Runtime(folders)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_GAPS[n], strict=True))
                                  if n in KNOWN_GAPS else n for n in sorted(TEMPLATES)])
def test_template_runs_end_to_end(name, models, tmp_path):
    prompt, runtime = prepare(name, models, tmp_path)
    result = Executor(registry(), runtime).run(prompt, extra={"extra_pnginfo": {"workflow": TEMPLATES[name]}})
    assert result.status == "success", (result.errors, result.error)
    outputs = [nid for nid, s in prompt.items() if s["class_type"] in ("SaveImage", "PreviewImage")]
    assert outputs and set(outputs) <= set(result.outputs)
    for nid in outputs:
        want = expected_size(prompt, prompt[nid]["inputs"]["images"], runtime.folders)
        assert want is not None, f"expected_size does not follow node {nid}'s image back to its source; extend it"
        images = result.outputs[nid]["images"]
        assert images, nid
        for ref in images:
            root = runtime.folders.output if ref["type"] == "output" else runtime.folders.temp
            with Image.open(root / ref.get("subfolder", "") / ref["filename"]) as img:
                assert img.size == want, (nid, img.size, want)
                if prompt[nid]["class_type"] == "SaveImage":
                    assert "prompt" in img.info and "workflow" in img.info, nid


def test_the_classic_templates_are_installed_and_runnable():
    """Guards the parametrised test above against silently shrinking (a missing package, a renamed template)."""
    reg = registry()
    runnable = {n for n, wf in TEMPLATES.items() if not convert(wf, reg).missing}
    for name in ("default.json", "image2image.json", "lora.json", "lora_multiple.json", "hiresfix_latent_workflow.json",
                 "area_composition.json", "inpaint_example.json", "inpaint_model_outpainting.json",
                 "embedding_example.json", "sdxl_simple_example.json", "sdxl_refiner_prompt_example.json"):
        assert name in runnable, name
