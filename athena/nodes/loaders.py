"""Loader nodes: checkpoints, diffusers folders, standalone U-Nets and VAEs, LoRAs.

Files load through the runtime's shared `ModelCache`, so two loaders of one file (or one loader in many jobs) give
one object. LoRA loaders only record the LoRA on a new MODEL/CLIP value; the weights are patched while a sampler or
text encoder runs and restored afterwards, so the cached pipeline is never changed for other branches.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from athena.errors import ConfigError
from athena.graph.node import Context, ExecutionBlocker, Node
from athena.graph.schema import Combo, Float, Link, Output, Schema
from athena.nodes.runtime import Runtime
from athena.nodes.types import Clip, LoraUse, Model, Vae
from athena.pipelines.pipeline import Pipeline, load, load_vae

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
        f"{name} has no text encoders; load them with a checkpoint that includes them")
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


def _no_text_files(node: str) -> ConfigError:
    return ConfigError(f"{node}: standalone text-encoder files are not supported yet; use CheckpointLoaderSimple "
                       f"with a checkpoint that includes its text encoders (SD1.x, SD2.x, SDXL single files or "
                       f"diffusers folders)")


class CLIPLoader(Node):
    schema = Schema("CLIPLoader", "advanced/loaders",
                    inputs=(Combo("clip_name", names(*TEXT_FOLDERS)),
                            Combo("type", ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi",
                                           "ltxv", "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma", "ace",
                                           "omnigen2", "qwen_image", "hunyuan_image")),
                            Combo("device", ("default", "cpu"), optional=True)),
                    outputs=(Output("CLIP"),))

    @classmethod
    def run(cls, clip_name: str, type: str, device: str = "default") -> tuple[Any, ...]:
        raise _no_text_files("CLIPLoader")


class DualCLIPLoader(Node):
    schema = Schema("DualCLIPLoader", "advanced/loaders",
                    inputs=(Combo("clip_name1", names(*TEXT_FOLDERS)), Combo("clip_name2", names(*TEXT_FOLDERS)),
                            Combo("type", ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")),
                            Combo("device", ("default", "cpu"), optional=True)),
                    outputs=(Output("CLIP"),))

    @classmethod
    def run(cls, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple[Any, ...]:
        raise _no_text_files("DualCLIPLoader")


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
