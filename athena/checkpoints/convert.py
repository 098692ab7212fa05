"""Convert between the original single-file layout and diffusers folders, tensor for tensor.

Tensors are copied bit-exactly (no dtype change), streamed one at a time from the lazy source.
Text encoders in the Hugging Face CLIP layout (SD1's and SDXL's CLIP-L) are carried with a prefix
change; OpenCLIP-layout encoders (SD2's ViT-H, SDXL's bigG) need the text key tables and are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from torch import Tensor

from athena.checkpoints.detect import META_FAMILY, META_UNET, META_VAE, UNET_PREFIX, VAE_PREFIX
from athena.checkpoints.diffusers_config import unet_to_diffusers, vae_to_diffusers
from athena.checkpoints.io import Weights
from athena.checkpoints.keymaps import sd_unet, sd_vae
from athena.checkpoints.load import Checkpoint
from athena.checkpoints.safetensors import save_file
from athena.errors import CheckpointError

HF_TEXT_PREFIX = "text_model."  # a Hugging Face CLIPTextModel's keys, as SD1/SDXL files store CLIP-L


class LazyTensors(Mapping[str, Tensor]):
    """name -> tensor, fetched from a source on access (zero-copy views where the source allows)."""

    def __init__(self, items: dict[str, Callable[[], Tensor]]):
        self.items_ = items

    def __getitem__(self, name: str) -> Tensor:
        return self.items_[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def _fetch(w: Weights, key: str, shape: tuple[int, ...] | None = None) -> Callable[[], Tensor]:
    return lambda: w.view(key) if shape is None else w.view(key).reshape(shape)


def _text_items(ckpt: Checkpoint) -> Iterator[tuple[str, Weights]]:
    for name, weights in ckpt.text.items():
        if not all(k.startswith(HF_TEXT_PREFIX) or k == "text_projection.weight" for k in weights):
            raise CheckpointError(
                f"{ckpt.path.name}: text encoder {name!r} is in the OpenCLIP layout, which conversion does not map yet "
                f"(it needs the text key tables); convert the U-Net and VAE by loading them with athena.load")
        yield name, weights


def to_single_file(ckpt: Checkpoint, dst: Path) -> None:
    """Write `ckpt` as one original-layout `.safetensors` file."""
    items: dict[str, Callable[[], Tensor]] = {}
    assert ckpt.unet is not None and ckpt.unet_config is not None
    for k in ckpt.unet:
        items[UNET_PREFIX + k] = _fetch(ckpt.unet, k)
    if ckpt.vae is not None:
        for k in ckpt.vae:
            shape = ckpt.vae[k].shape
            items[VAE_PREFIX + k] = _fetch(ckpt.vae, k, shape + (1, 1) if k in sd_vae.CONV_AS_LINEAR and len(shape) == 2 else None)
    prefixes = dict(ckpt.family.text_encoders)
    for name, weights in _text_items(ckpt):
        for k in weights:
            items[prefixes[name] + k] = _fetch(weights, k)
    meta = {META_FAMILY: ckpt.family.name, META_UNET: ckpt.unet_config.to_json()}
    if ckpt.vae_config is not None:
        meta[META_VAE] = json.dumps(ckpt.vae_config.__dict__)
    save_file(LazyTensors(items), dst, meta)


def to_diffusers(ckpt: Checkpoint, dst: Path) -> None:
    """Write `ckpt` as a diffusers folder (model_index.json, unet/, vae/, scheduler/, text_encoder*/)."""
    assert ckpt.unet is not None and ckpt.unet_config is not None
    cfg = ckpt.unet_config
    dst.mkdir(parents=True, exist_ok=True)
    index: dict[str, object] = {"_class_name": "StableDiffusionXLPipeline" if cfg.adm_in_channels else "StableDiffusionPipeline"}

    def write(folder: str, config: dict[str, object], tensors: dict[str, Callable[[], Tensor]], stem: str) -> None:
        (dst / folder).mkdir(exist_ok=True)
        (dst / folder / "config.json").write_text(json.dumps(config, indent=2))
        save_file(LazyTensors(tensors), dst / folder / f"{stem}.safetensors")

    unet_table = sd_unet.diffusers_to_ldm(cfg)
    write("unet", unet_to_diffusers(cfg), {d: _fetch(ckpt.unet, ldm) for d, ldm in unet_table.items()}, "diffusion_pytorch_model")
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    if ckpt.vae is not None and ckpt.vae_config is not None:
        vae = ckpt.vae
        tensors = {d: _fetch(vae, ldm, vae[ldm].shape[:2] if ldm in sd_vae.CONV_AS_LINEAR else None)
                   for d, ldm in sd_vae.diffusers_to_ldm(ckpt.vae_config).items()}
        write("vae", vae_to_diffusers(ckpt.vae_config, ckpt.family.latent_scale, ckpt.family.latent_shift or None),
              tensors, "diffusion_pytorch_model")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    for (name, weights), folder in zip(_text_items(ckpt), ("text_encoder", "text_encoder_2")):
        hidden = weights["text_model.embeddings.token_embedding.weight"].shape[1]
        layers = 1 + max(int(k.split(".")[3]) for k in weights if k.startswith("text_model.encoder.layers."))
        config = {"architectures": ["CLIPTextModel"], "hidden_size": hidden, "num_hidden_layers": layers,
                  "intermediate_size": weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  "vocab_size": weights["text_model.embeddings.token_embedding.weight"].shape[0],
                  "max_position_embeddings": weights["text_model.embeddings.position_embedding.weight"].shape[0],
                  "hidden_act": "quick_gelu", "model_type": "clip_text_model"}
        write(folder, config, {k: _fetch(weights, k) for k in weights}, "model")
        index[folder] = ["transformers", "CLIPTextModel"]
    (dst / "scheduler").mkdir(exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[cfg.prediction]}, indent=2))
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
