"""Loader nodes: checkpoints, diffusers folders, standalone U-Nets, VAEs and text encoders, LoRAs.

Files load through the runtime's shared `ModelCache`, so two loaders of one file (or one loader in many jobs) give
one object. LoRA loaders only record the LoRA on a new MODEL/CLIP value; the weights are patched while a sampler or
text encoder runs and restored afterwards, so the cached pipeline is never changed for other branches.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from athena.errors import ConfigError
from athena.graph.node import Context, ExecutionBlocker, Node
from athena.graph.schema import Combo, Float, Link, Output, Schema
from athena.nodes.runtime import Runtime
from athena.nodes.types import Clip, LoraUse, Model, Vae
from athena.pipelines.pipeline import Pipeline, TextModels, load, load_text, load_vae

UNET_FOLDERS = ("diffusion_models", "unet")  # ComfyUI's "diffusion_models" kind reads both
TEXT_FOLDERS = ("text_encoders", "clip")


def names(*kinds: str, folders_only: bool = False) -> Any:
    """Combo options: the files (or, with `folders_only`, the diffusers folders) under models/<kind>/."""
    def options(services: Any) -> list[str]:
        if not isinstance(services, Runtime):
            return []
        found = [n for k in kinds for n in services.folders.model_names(k)
                 if not folders_only or (services.folders.models / k / n).is_dir()]
        return sorted(set(found))
    return options


def find(rt: Runtime, kinds: tuple[str, ...], name: str) -> Path:
    """`name` under the first of models/<kinds>/ that has it; the error lists the first folder's files."""
    for kind in kinds[1:]:
        if (rt.folders.models / kind / name).exists():
            return rt.folders.model(kind, name)
    return rt.folders.model(kinds[0], name)


def cached_pipeline(rt: Runtime, path: Path) -> Pipeline:
    embeddings = rt.folders.models / "embeddings"
    return rt.models.get("pipeline", path, (str(rt.device), str(rt.dtype)), lambda: load(
        path, device=rt.device, dtype=rt.dtype, embeddings=embeddings if embeddings.is_dir() else None))


def outputs(pipe: Pipeline) -> tuple[Any, ...]:
    """MODEL, CLIP, VAE of a pipeline; a part the file lacks blocks its consumers with a message saying so."""
    name = pipe.path.name if pipe.path else "this checkpoint"
    clip = Clip(pipe) if pipe.text is not None else ExecutionBlocker(
        f"{name} has no text encoders; load them with a CLIPLoader or DualCLIPLoader node")
    vae = Vae(pipe.vae, pipe.family.latent_scale, pipe.family.latent_shift) if pipe.vae is not None else \
        ExecutionBlocker(f"{name} has no VAE; add a VAELoader node")
    return Model(pipe), clip, vae


class CheckpointLoaderSimple(Node):
    schema = Schema("CheckpointLoaderSimple", "loaders", inputs=(Combo("ckpt_name", names("checkpoints")),),
                    outputs=(Output("MODEL"), Output("CLIP"), Output("VAE")),
                    description="Loads a checkpoint: the diffusion model, its text encoders and its VAE.")

    @classmethod
    def run(cls, ctx: Context, ckpt_name: str) -> tuple[Any, ...]:
        return outputs(cached_pipeline(ctx.services, ctx.services.folders.model("checkpoints", ckpt_name)))


class DiffusersLoader(Node):
    schema = Schema("DiffusersLoader", "advanced/loaders/deprecated",
                    inputs=(Combo("model_path", names("diffusers", "checkpoints", folders_only=True)),),
                    outputs=(Output("MODEL"), Output("CLIP"), Output("VAE")))

    @classmethod
    def run(cls, ctx: Context, model_path: str) -> tuple[Any, ...]:
        return outputs(cached_pipeline(ctx.services, find(ctx.services, ("diffusers", "checkpoints"), model_path)))


class UNETLoader(Node):
    schema = Schema("UNETLoader", "advanced/loaders",
                    inputs=(Combo("unet_name", names(*UNET_FOLDERS)),
                            Combo("weight_dtype", ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"))),
                    outputs=(Output("MODEL"),))

    @classmethod
    def run(cls, ctx: Context, unet_name: str, weight_dtype: str) -> tuple[Any, ...]:
        if weight_dtype != "default":
            warnings.warn(f"UNETLoader weight_dtype={weight_dtype!r}: fp8 weights are not supported; loading "
                          f"{unet_name} in the runtime's dtype ({ctx.services.dtype})", stacklevel=2)
        return (Model(cached_pipeline(ctx.services, find(ctx.services, UNET_FOLDERS, unet_name))),)


class VAELoader(Node):
    schema = Schema("VAELoader", "loaders", inputs=(Combo("vae_name", names("vae")),), outputs=(Output("VAE"),))

    @classmethod
    def run(cls, ctx: Context, vae_name: str) -> tuple[Any, ...]:
        rt: Runtime = ctx.services
        path = rt.folders.model("vae", vae_name)
        def load() -> Vae:
            vae, family = load_vae(path, device=rt.device, dtype=rt.dtype)
            return Vae(vae, family.latent_scale, family.latent_shift)
        return (rt.models.get("vae", path, (str(rt.device), str(rt.dtype)), load),)


# ComfyUI's type options (nodes.py); Athena runs the SD-family ones, the others fail validation with the supported list
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
              "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage", "mage",
              "minimax")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
                   "kandinsky5_image", "ltxv", "newbie", "ace")
SUPPORTED_TYPES = {"CLIPLoader": {"stable_diffusion": "a clip_l (SD1.x), clip_h (SD2.x) or clip_g (SDXL refiner) file"},
                   "DualCLIPLoader": {"sdxl": "a clip_l and a clip_g file, in either order"}}
DEVICES = ("default", "cpu")


def text_file(rt: Runtime, name: str) -> Path:
    """`name` under models/text_encoders/, else under the legacy models/clip/ (ComfyUI's search order)."""
    if not (rt.folders.models / "text_encoders" / name).exists() and (rt.folders.models / "clip" / name).exists():
        return rt.folders.model("clip", name)
    return rt.folders.model("text_encoders", name)


def check_type(node: str, type: str) -> None:
    supported = SUPPORTED_TYPES[node]
    if type not in supported:
        ways = "; ".join(f"type {t!r} with {what}" for t, what in supported.items())
        raise ConfigError(f"{node}: type {type!r} is not supported; Athena runs the SD1.x, SD2.x and SDXL text "
                          f"encoders only: use {ways}")


def check_text_inputs(node: str, services: Any, names: tuple[Any, ...], type: Any, device: Any) -> str | None:
    """The message for a bad constant type, device or file name (the node checks its own combos, as in ComfyUI)."""
    try:
        if type is not None:
            check_type(node, type)
        if device is not None and device not in DEVICES:
            raise ConfigError(f"{node}: device {device!r} is not one of {DEVICES}")
        for name in names:
            if name is not None and isinstance(services, Runtime):
                text_file(services, name)
    except ConfigError as e:
        return str(e)
    return None


def cached_text(rt: Runtime, paths: tuple[Path, ...], device: str) -> TextModels:
    """The text encoders of `paths`, loaded once per set of files (in any order) and device."""
    dev, dtype = (torch.device("cpu"), torch.float32) if device == "cpu" else (rt.device, rt.dtype)
    first, *rest = sorted(paths)
    others = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in rest)
    embeddings = rt.folders.models / "embeddings"
    return rt.models.get("text_encoders", first, (others, str(dev), str(dtype)), lambda: load_text(
        paths, device=dev, dtype=dtype, embeddings=embeddings if embeddings.is_dir() else None))


class CLIPLoader(Node):
    schema = Schema("CLIPLoader", "advanced/loaders",
                    inputs=(Combo("clip_name", names(*TEXT_FOLDERS)), Combo("type", CLIP_TYPES),
                            Combo("device", DEVICES, optional=True)),
                    outputs=(Output("CLIP"),),
                    description="Loads a standalone text encoder: type stable_diffusion takes a clip_l (SD1.x), "
                                "clip_h (SD2.x) or clip_g (SDXL refiner) file.")

    @classmethod
    def run(cls, ctx: Context, clip_name: str, type: str, device: str = "default") -> tuple[Any, ...]:
        check_type("CLIPLoader", type)
        return (Clip(cached_text(ctx.services, (text_file(ctx.services, clip_name),), device)),)

    @classmethod
    def validate_inputs(cls, services: Any, **inputs: Any) -> str | None:
        return check_text_inputs("CLIPLoader", services, (inputs.get("clip_name"),), inputs.get("type"),
                                 inputs.get("device"))


class DualCLIPLoader(Node):
    schema = Schema("DualCLIPLoader", "advanced/loaders",
                    inputs=(Combo("clip_name1", names(*TEXT_FOLDERS)), Combo("clip_name2", names(*TEXT_FOLDERS)),
                            Combo("type", DUAL_CLIP_TYPES), Combo("device", DEVICES, optional=True)),
                    outputs=(Output("CLIP"),),
                    description="Loads two standalone text encoders: type sdxl takes a clip_l and a clip_g file.")

    @classmethod
    def run(cls, ctx: Context, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple[Any, ...]:
        check_type("DualCLIPLoader", type)
        rt: Runtime = ctx.services
        return (Clip(cached_text(rt, (text_file(rt, clip_name1), text_file(rt, clip_name2)), device)),)

    @classmethod
    def validate_inputs(cls, services: Any, **inputs: Any) -> str | None:
        return check_text_inputs("DualCLIPLoader", services, (inputs.get("clip_name1"), inputs.get("clip_name2")),
                                 inputs.get("type"), inputs.get("device"))


STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


class LoraLoader(Node):
    schema = Schema("LoraLoader", "loaders",
                    inputs=(Link("model", "MODEL"), Link("clip", "CLIP"), Combo("lora_name", names("loras")),
                            Float("strength_model", **STRENGTH), Float("strength_clip", **STRENGTH)),
                    outputs=(Output("MODEL"), Output("CLIP")))

    @classmethod
    def run(cls, ctx: Context, model: Model, clip: Clip, lora_name: str, strength_model: float,
            strength_clip: float) -> tuple[Any, ...]:
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        path = ctx.services.folders.model("loras", lora_name)
        if strength_model != 0:
            model = replace(model, loras=model.loras + (LoraUse(path, strength_model),))
        if strength_clip != 0:
            clip = replace(clip, loras=clip.loras + (LoraUse(path, strength_clip),))
        return model, clip


class LoraLoaderModelOnly(Node):
    schema = Schema("LoraLoaderModelOnly", "loaders",
                    inputs=(Link("model", "MODEL"), Combo("lora_name", names("loras")),
                            Float("strength_model", **STRENGTH)),
                    outputs=(Output("MODEL"),))

    @classmethod
    def run(cls, ctx: Context, model: Model, lora_name: str, strength_model: float) -> tuple[Any, ...]:
        if strength_model == 0:
            return (model,)
        path = ctx.services.folders.model("loras", lora_name)
        return (replace(model, loras=model.loras + (LoraUse(path, strength_model),)),)


NODES = (CheckpointLoaderSimple, DiffusersLoader, UNETLoader, VAELoader, CLIPLoader, DualCLIPLoader, LoraLoader,
         LoraLoaderModelOnly)
