"""Convert between the original single-file layout and diffusers folders, tensor for tensor.

Tensors are copied bit-exactly (no dtype change), streamed one at a time from the lazy source.
Text encoders go to the Hugging Face CLIP layout in folders and to each family's layout in single files
(HF CLIP-L for SD1 and SDXL's first encoder, OpenCLIP for SD2's ViT-H and SDXL's bigG).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from torch import Tensor

from athena.checkpoints import text
from athena.checkpoints.build import ddpm_buffers
from athena.checkpoints.detect import (
    META_FAMILY,
    META_UNET,
    META_VAE,
    UNET_PREFIX,
    VAE_PREFIX,
)
from athena.checkpoints.diffusers_config import unet_to_diffusers, vae_to_diffusers
from athena.checkpoints.io import Weights
from athena.checkpoints.keymaps import open_clip, sd_unet, sd_vae
from athena.checkpoints.load import Checkpoint
from athena.checkpoints.safetensors import Pending, save_file
from athena.models.clip import CLIPTextConfig


def _hf_text(weights: Weights) -> dict[str, Pending]:
    """A text encoder under Hugging Face CLIP names (`text_model.*`), whichever layout it is stored in."""
    hf = text.hf_names(weights)
    return {k: hf.pending(k) for k in hf}


def _single_file_text(prefix: str, weights: Weights) -> dict[str, Pending]:
    """A text encoder under the names its family's single files use: HF CLIP-L, or OpenCLIP (`...model.`)."""
    if prefix.endswith(".model."):
        return {k: weights.pending(k) for k in weights} if open_clip.is_open_clip(weights) \
            else open_clip.from_hf(text.hf_names(weights))
    return _hf_text(weights)


def _text_config(family: str, cfg: CLIPTextConfig) -> dict[str, object]:
    projection = cfg.projection_dim is not None and family.startswith("sdxl")
    return {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.width, "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.mlp_dim, "max_position_embeddings": cfg.max_positions,
        # SD2 conditions on the penultimate layer; diffusers expresses that by declaring one layer fewer. The last
        # layer's tensors stay in the file (transformers ignores them) so that converting back is exact.
        "num_hidden_layers": cfg.layers - 1 if family == "sd2" else cfg.layers,
        "hidden_act": cfg.act, "layer_norm_eps": cfg.eps, "projection_dim": cfg.projection_dim or cfg.width,
        "bos_token_id": cfg.eos_token_id - 1, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.eos_token_id if family == "sd1" else 0,
    }


def _text_configs(ckpt: Checkpoint) -> dict[str, CLIPTextConfig]:
    """Each text encoder's full config (the whole tower, even where a diffusers config declares one layer less)."""
    out = {}
    for name, w in ckpt.text.items():
        hf = text.hf_names(w)
        cfg = text.text_config(hf, name, ckpt.text_hf_configs.get(name))
        out[name] = replace(cfg, layers=max(cfg.layers, text.stored_layers(hf)))
    return out


def to_single_file(ckpt: Checkpoint, dst: Path) -> None:
    """Write `ckpt` as one original-layout `.safetensors` file."""
    items: dict[str, Tensor | Pending] = {}
    assert ckpt.unet is not None and ckpt.unet_config is not None
    for k in ckpt.unet:
        items[UNET_PREFIX + k] = ckpt.unet.pending(k)
    if ckpt.vae is not None:
        for k in ckpt.vae:
            shape = ckpt.vae[k].shape
            items[VAE_PREFIX + k] = ckpt.vae.pending(k, shape + (1, 1) if k in sd_vae.CONV_AS_LINEAR and len(shape) == 2 else None)
    prefixes = dict(ckpt.family.text_encoders)
    for name, weights in ckpt.text.items():
        items.update({prefixes[name] + k: t for k, t in _single_file_text(prefixes[name], weights).items()})
    items.update(_schedule_buffers(ckpt))
    meta = {META_FAMILY: ckpt.family.name, META_UNET: ckpt.unet_config.to_json()}
    if ckpt.text:
        meta[text.META_TEXT] = json.dumps({n: asdict(c) for n, c in _text_configs(ckpt).items()})
    if ckpt.vae_config is not None:
        meta[META_VAE] = json.dumps(ckpt.vae_config.__dict__)
    save_file(items, dst, meta)


def _schedule_buffers(ckpt: Checkpoint) -> dict[str, Tensor | Pending]:
    """Keys outside the models: carried from a single file, or the 12 DDPM buffers SD1/SD2 files hold, rebuilt
    from a diffusers folder's scheduler config so that single -> diffusers -> single is exact."""
    if ckpt.layout != "diffusers":
        return {k: ckpt.sources[0].pending(k) for k in ckpt.other}
    sched = ckpt.path / "scheduler" / "scheduler_config.json"
    if ckpt.family.name not in ("sd1", "sd2") or not sched.is_file():
        return {}
    cfg = json.loads(sched.read_text())
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        return {}
    return dict(ddpm_buffers(cfg.get("num_train_timesteps", 1000), cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012)))


def to_diffusers(ckpt: Checkpoint, dst: Path) -> None:
    """Write `ckpt` as a diffusers folder (model_index.json, unet/, vae/, scheduler/, text_encoder*/)."""
    assert ckpt.unet is not None and ckpt.unet_config is not None
    cfg = ckpt.unet_config
    dst.mkdir(parents=True, exist_ok=True)
    index: dict[str, object] = {"_class_name": "StableDiffusionXLPipeline" if cfg.adm_in_channels else "StableDiffusionPipeline"}

    def write(folder: str, config: dict[str, object], tensors: dict[str, Pending], stem: str) -> None:
        (dst / folder).mkdir(exist_ok=True)
        (dst / folder / "config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, dst / folder / f"{stem}.safetensors")

    unet_table = sd_unet.diffusers_to_ldm(cfg)
    write("unet", unet_to_diffusers(cfg), {d: ckpt.unet.pending(ldm) for d, ldm in unet_table.items()}, "diffusion_pytorch_model")
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    if ckpt.vae is not None and ckpt.vae_config is not None:
        vae = ckpt.vae
        tensors = {d: vae.pending(ldm, vae[ldm].shape[:2] if ldm in sd_vae.CONV_AS_LINEAR else None)
                   for d, ldm in sd_vae.diffusers_to_ldm(ckpt.vae_config).items()}
        write("vae", vae_to_diffusers(ckpt.vae_config, ckpt.family.latent_scale, ckpt.family.latent_shift or None),
              tensors, "diffusion_pytorch_model")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    configs = _text_configs(ckpt)
    for (name, weights), folder in zip(ckpt.text.items(), ("text_encoder", "text_encoder_2")):
        hf = _hf_text(weights)
        config = _text_config(ckpt.family.name, configs[name])
        write(folder, config, hf, "model")
        index[folder] = ["transformers", config["architectures"][0]]  # type: ignore[index]
    (dst / "scheduler").mkdir(exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[cfg.prediction]}, indent=2))
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
