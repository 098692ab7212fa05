"""Open a checkpoint (single file, diffusers folder, bare U-Net or VAE) and load its models strictly.

Models are built on the `meta` device and filled tensor by tensor from the lazy source, so loading never
holds a second full copy of the weights. On the CPU, a tensor stored in the compute dtype is not copied at
all: the parameter is the file's private (copy-on-write) mapping, as in diffusers, so weights a run never
touches (the VAE encoder in txt2img) are never read. Other tensors are cast or copied into fresh memory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from athena.checkpoints import detect, text
from athena.checkpoints.detect import (
    FAMILIES,
    META_FAMILY,
    META_RESOLUTION,
    META_VAE,
    UNET_PREFIX,
    VAE_PREFIX,
    Family,
)
from athena.checkpoints.diffusers_config import unet_from_diffusers, vae_from_diffusers
from athena.checkpoints.io import (
    Renamed,
    Weights,
    open_component,
    open_weights,
    strip_prefix,
)
from athena.checkpoints.keymaps import sd_unet, sd_vae
from athena.errors import CheckpointError, ConfigError
from athena.models.clip import CLIPTextModel
from athena.models.unet import UNet, UNetConfig
from athena.models.vae import AutoencoderKL, VAEConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
M = TypeVar("M", bound=nn.Module)

# --------------------------------------------------------------------------- strict loading


def _grouped(keys: Iterable[str], what: str, depth: int = 2) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for k in sorted(keys):
        parts = k.split(".")
        groups[".".join(parts[: max(1, min(depth, len(parts) - 1))]) + "."].append(k)
    lines = [f"{len(v)} keys {what} under '{p}' (e.g. '{v[0]}')" for p, v in groups.items()]
    return lines[:8] + ([f"... and {len(lines) - 8} more groups"] if len(lines) > 8 else [])


def load_module(model: M, weights: Weights, *, name: str, device: torch.device | str = "cpu", hint: str = "") -> M:
    """Fill a `meta`-device `model` from `weights` (same key names), strictly, casting to the model's dtype."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    bad_shapes = [f"'{k}' is {weights[k].shape} in the file, the model expects {expected[k]}"
                  for k in sorted(set(expected) & set(weights)) if not _compatible(weights[k].shape, expected[k])]
    if missing or unexpected or bad_shapes:
        lines = _grouped(missing, "missing") + _grouped(unexpected, "unexpected") + bad_shapes[:5]
        raise CheckpointError(f"{name}: weights do not fit the model:\n  " + "\n  ".join(lines) + (f"\n{hint}" if hint else ""))
    on_cpu = torch.device(device).type == "cpu"
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, t in model.state_dict().items():
            shared = weights.shared(k) if on_cpu and weights[k].dtype == t.dtype else None
            if shared is None:
                state[k] = weights.view(k).reshape(t.shape).to(device=device, dtype=t.dtype, copy=True)
                weights.release(k)
            else:
                state[k] = shared.view(t.shape)
    model.load_state_dict(state, assign=True)
    left = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer) would be left unallocated
        raise CheckpointError(f"{name}: the model has tensors no checkpoint fills: {left[:5]}")
    return model.eval().requires_grad_(False)


def _compatible(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Equal, or equal up to trailing 1-dims (diffusers stores the VAE's 1x1 attention convs as Linear)."""
    return have == want or (have == want[: len(have)] and all(d == 1 for d in want[len(have):]))


def dtype_of(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def device_of(device: torch.device | str) -> torch.device:
    """`device` checked against this machine, so that a model is never half-built before torch's own error."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {device!r}: {why} (torch {torch.__version__}); use --device cpu, or install a "
                              f"CUDA build of torch on a machine with an NVIDIA GPU")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return dev


# --------------------------------------------------------------------------- opened checkpoints


@dataclass
class Checkpoint:
    """What a checkpoint holds, opened lazily: per-component weights under our names, and their configs."""

    path: Path
    layout: str
    family: Family
    unet: Weights | None = None
    unet_config: UNetConfig | None = None
    vae: Weights | None = None
    vae_config: VAEConfig | None = None
    text: dict[str, Weights] = field(default_factory=dict)  # under the file's own names (HF CLIP or OpenCLIP)
    text_hf_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # diffusers text_encoder*/config.json
    tokenizers: dict[str, Path] = field(default_factory=dict)  # diffusers tokenizer*/ folders (vocab.json, merges.txt)
    other: list[str] = field(default_factory=list)  # keys no component claims (schedule buffers, EMA copies)
    resolution: int | None = None  # the trained image size, when the file says (Athena's trained models do)
    sources: list[Weights] = field(default_factory=list)

    def load_unet(self, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32) -> UNet:
        if self.unet is None or self.unet_config is None:
            raise CheckpointError(f"{self.path.name}: has no U-Net")
        hint = f"The keys say this is an {self.family.label} U-Net with config {self.unet_config}."
        return load_module(UNet(self.unet_config, device="meta", dtype=dtype_of(dtype)), self.unet,
                           name=f"{self.path.name} (U-Net)", device=device, hint=hint)

    def load_vae(self, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32) -> AutoencoderKL:
        if self.vae is None or self.vae_config is None:
            raise CheckpointError(f"{self.path.name}: has no VAE; pass a separate VAE file")
        return load_module(AutoencoderKL(self.vae_config, device="meta", dtype=dtype_of(dtype)), self.vae,
                           name=f"{self.path.name} (VAE)", device=device)

    def load_text(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32) -> CLIPTextModel:
        """The text encoder `name` (clip_l, clip_h, clip_g), strictly, under Hugging Face CLIP names."""
        if name not in self.text:
            raise CheckpointError(f"{self.path.name}: has no {name} text encoder (it has: {sorted(self.text) or 'none'}); "
                                  f"load one from a separate file")
        return _load_clip(text.hf_names(self.text[name]), name, f"{self.path.name} ({name} text encoder)", device,
                          dtype, self.text_hf_configs.get(name))

    def text_layers_dropped(self, name: str) -> int:
        """Final layers of the original tower that the stored config leaves out: diffusers ends SD2's ViT-H at
        the penultimate layer (the one SD2 conditions on) by declaring 23 of its 24 layers."""
        return 1 if self.layout == "diffusers" and self.family.name == "sd2" and name == "clip_h" else 0

    def close(self) -> None:
        for s in self.sources:
            s.close()


def open_checkpoint(path: str | Path, *, share: bool = True) -> Checkpoint:
    """Open a single file or a diffusers folder and detect its layout, family and configs. With `share`, models
    loaded on the CPU in the file's dtype use the file's private mapping instead of a copy (see the module doc); the
    file must then not be rewritten in place while they live (writing a new file and renaming it over is safe)."""
    path = Path(path)
    if path.is_dir():
        return _open_diffusers_folder(path, share)
    w = open_weights(path, share=share)
    layout = detect.detect_layout(w, path.name)
    if layout in ("ldm_vae", "diffusers_vae"):
        vae, vae_cfg = _vae_weights(w, layout == "diffusers_vae", w.metadata)
        family = FAMILIES[w.metadata.get(META_FAMILY, "sd1")]
        return Checkpoint(path, layout, family, vae=vae, vae_config=vae_cfg, sources=[w])
    unet: Weights
    if layout == "diffusers_unet":
        unet = _diffusers_unet(w, detect.diffusers_unet_structure(detect.shapes_of(w)))
    else:
        unet = strip_prefix(w, UNET_PREFIX) if layout == "ldm" else w
    family = FAMILIES[detect.detect_family(detect.shapes_of(unet), path.name)]
    ckpt = Checkpoint(path, layout, family, unet=unet, unet_config=detect.unet_config_for(unet, family.name, w), sources=[w],
                      resolution=int(w.metadata[META_RESOLUTION]) if META_RESOLUTION in w.metadata else None)
    if layout == "ldm":
        vae_w = strip_prefix(w, VAE_PREFIX)
        if len(vae_w):
            ckpt.vae, ckpt.vae_config = _vae_weights(vae_w, False, w.metadata)
        ckpt.text = {n: strip_prefix(w, p) for n, p in family.text_encoders if any(k.startswith(p) for k in w)}
        claimed = (UNET_PREFIX, VAE_PREFIX) + tuple(p for _, p in family.text_encoders)
        ckpt.other = [k for k in w if not k.startswith(claimed)]
    return ckpt


# --------------------------------------------------------------------------- standalone text encoders

TEXT_FILE_PREFIXES = tuple(dict.fromkeys(p for f in FAMILIES.values() for _, p in f.text_encoders))


def _load_clip(w: Weights, name: str, label: str, device: torch.device | str, dtype: torch.dtype | str,
               hf_config: dict[str, Any] | None = None) -> CLIPTextModel:
    cfg = text.text_config(w, name, hf_config)
    return load_module(CLIPTextModel(cfg, device="meta", dtype=dtype_of(dtype)), text.model_weights(w, cfg),
                       name=label, device=device, hint=f"Inferred config: {cfg}.")


def load_text_file(path: str | Path, device: torch.device | str = "cpu",
                   dtype: torch.dtype | str = torch.float32) -> tuple[str, CLIPTextModel]:
    """A standalone text-encoder file (ComfyUI's models/text_encoders/): which encoder it holds (clip_l, clip_h or
    clip_g, told by its width) and the encoder, loaded strictly. HF or OpenCLIP layout; safetensors or safe pickles."""
    path = Path(path)
    source = open_weights(path)
    try:
        w = text.standalone(source, TEXT_FILE_PREFIXES)
        name = text.encoder_name(w, path.name)
        return name, _load_clip(w, name, f"{path.name} ({name} text encoder)", device, dtype)
    finally:
        source.close()


# --------------------------------------------------------------------------- diffusers folders


def _renamed(w: Weights, table: dict[str, str], what: str) -> Renamed:
    """`w` (diffusers names) seen under LDM names; keys the table does not know are an error, not dropped."""
    unmapped = set(w) - set(table)
    if unmapped:
        raise CheckpointError(f"diffusers {what}: keys the key map does not know:\n  " + "\n  ".join(_grouped(unmapped, "unmapped")))
    return Renamed(w, {ldm: d for d, ldm in table.items() if d in w})


def _diffusers_unet(w: Weights, cfg: UNetConfig) -> Renamed:
    return _renamed(w, sd_unet.diffusers_to_ldm(cfg), "U-Net")


def _vae_weights(w: Weights, diffusers_names: bool, metadata: dict[str, str],
                 config: dict[str, Any] | None = None) -> tuple[Weights, VAEConfig]:
    if diffusers_names:
        aliased: Weights = Renamed(w, {sd_vae.legacy_alias(k): k for k in w})
        cfg = vae_from_diffusers(config) if config else detect.diffusers_vae_config(detect.shapes_of(aliased))
        return _renamed(aliased, sd_vae.diffusers_to_ldm(cfg), "VAE"), cfg
    if META_VAE in metadata:
        return w, VAEConfig.from_dict(json.loads(metadata[META_VAE]))
    return w, detect.infer_vae_config(detect.shapes_of(w))


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{p}: expected a JSON object")
    return data


def _open_diffusers_folder(path: Path, share: bool) -> Checkpoint:
    if not (path / "unet").is_dir() and not (path / "model_index.json").is_file():
        raise CheckpointError(f"{path}: a folder must be a diffusers pipeline (model_index.json, unet/, vae/, ...)")
    sched = path / "scheduler" / "scheduler_config.json"
    prediction = _read_json(sched).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    prediction = {"epsilon": "eps", "v_prediction": "v"}.get(prediction, prediction)
    unet_cfg = unet_from_diffusers(_read_json(path / "unet" / "config.json"), prediction)
    unet_raw = open_component(path / "unet", "diffusion_pytorch_model", share=share)
    unet = _diffusers_unet(unet_raw, unet_cfg)
    family = FAMILIES[detect.detect_family(detect.shapes_of(unet), path.name)]
    ckpt = Checkpoint(path, "diffusers", family, unet=unet, unet_config=unet_cfg, sources=[unet_raw])
    if (path / "vae" / "config.json").is_file():
        vae_raw = open_component(path / "vae", "diffusion_pytorch_model", share=share)
        ckpt.sources.append(vae_raw)
        ckpt.vae, ckpt.vae_config = _vae_weights(vae_raw, True, {}, _read_json(path / "vae" / "config.json"))
    for (name, _), suffix in zip(family.text_encoders, ("", "_2")):
        if (path / f"text_encoder{suffix}").is_dir():
            ckpt.text[name] = open_component(path / f"text_encoder{suffix}", "model", share=share)
            ckpt.sources.append(ckpt.text[name])
            if (path / f"text_encoder{suffix}" / "config.json").is_file():
                ckpt.text_hf_configs[name] = _read_json(path / f"text_encoder{suffix}" / "config.json")
        if (path / f"tokenizer{suffix}" / "vocab.json").is_file():
            ckpt.tokenizers[name] = path / f"tokenizer{suffix}"
    return ckpt


def with_family(ckpt: Checkpoint, family: str | None) -> Checkpoint:
    """Check a caller's expected family against the detected one, with the fix in the error."""
    if family is None or family == ckpt.family.name:
        return ckpt
    if family not in FAMILIES:
        raise ConfigError(f"family {family!r} is not one of {sorted(FAMILIES)}")
    raise CheckpointError(f"{ckpt.path.name}: this is an {ckpt.family.label} checkpoint, not {FAMILIES[family].label} "
                          f"(U-Net context {ckpt.unet_config.context_dim if ckpt.unet_config else '?'}); load it with "
                          f"family={ckpt.family.name!r} or leave family unset")

