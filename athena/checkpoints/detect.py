"""Detect a checkpoint's layout and family from key names and shapes, and infer its configs.

Both detections are tables checked in order (STYLE rule 5). Architecture configs are read off
tensor shapes, so tiny and custom-width models in the SD layout load as well as the real ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from athena.checkpoints.io import Weights
from athena.errors import CheckpointError, ConfigError
from athena.models.unet import UNetConfig
from athena.models.vae import VAEConfig

Shapes = Mapping[str, tuple[int, ...]]
Layout = Literal["ldm", "ldm_unet", "diffusers_unet", "ldm_vae", "diffusers_vae"]
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
META_UNET, META_VAE, META_FAMILY = "athena.unet_config", "athena.vae_config", "athena.family"
META_RESOLUTION = "athena.resolution"  # the image size a model was trained at (the default size to generate)

# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    latent_scale: float
    latent_shift: float = 0.0
    text_encoders: tuple[tuple[str, str], ...] = ()  # (name, key prefix in a single file), in diffusers' order


FAMILIES = {f.name: f for f in (
    Family("sd1", "SD1.x", 0.18215, text_encoders=(("clip_l", "cond_stage_model.transformer."),)),
    Family("sd2", "SD2.x", 0.18215, text_encoders=(("clip_h", "cond_stage_model.model."),)),
    Family("sdxl", "SDXL", 0.13025, text_encoders=(("clip_l", "conditioner.embedders.0.transformer."), ("clip_g", "conditioner.embedders.1.model."))),
    Family("sdxl_refiner", "SDXL refiner", 0.13025, text_encoders=(("clip_g", "conditioner.embedders.0.model."),)),
)}

# (family, sentinel key in the prefix-stripped U-Net, predicate on the shapes), checked in order
FAMILY_SIGNATURES: list[tuple[str, str, Callable[[Shapes], bool]]] = [
    # the refiner's y is pooled bigG + 5 size/score embeddings, and its context is bigG alone: y - context = 5 x 256
    ("sdxl_refiner", "label_emb.0.0.weight", lambda s: s["label_emb.0.0.weight"][1] - _context_dim(s) == 5 * 256),
    ("sdxl", "label_emb.0.0.weight", lambda s: True),
    ("sd2", "middle_block.1.proj_in.weight", lambda s: len(s["middle_block.1.proj_in.weight"]) == 2),
    ("sd1", "middle_block.1.proj_in.weight", lambda s: len(s["middle_block.1.proj_in.weight"]) == 4),
]

# (layout, sentinel keys that must all be present), checked in order
LAYOUT_SIGNATURES: list[tuple[Layout, tuple[str, ...]]] = [
    ("ldm", (UNET_PREFIX + "input_blocks.0.0.weight",)),
    ("ldm_unet", ("input_blocks.0.0.weight", "out.2.weight")),
    ("diffusers_unet", ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight")),
    ("ldm_vae", ("encoder.conv_in.weight", "decoder.up.0.block.0.conv1.weight")),
    ("diffusers_vae", ("encoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight")),
]


def detect_layout(keys: Mapping[str, object], name: str = "checkpoint") -> Layout:
    for layout, sentinels in LAYOUT_SIGNATURES:
        if all(k in keys for k in sentinels):
            return layout
    sample = ", ".join(sorted(keys)[:3])
    raise CheckpointError(f"{name}: not a recognised SD U-Net or VAE layout (first keys: {sample}); Athena reads "
                          f"SD1.x/SD2.x/SDXL single files, diffusers folders and standalone VAEs")


def detect_family(unet: Shapes, name: str = "checkpoint") -> str:
    for family, sentinel, predicate in FAMILY_SIGNATURES:
        try:
            if sentinel in unet and predicate(unet):
                return family
        except KeyError:  # an incomplete file: try the next signature; the strict load reports what is missing
            continue
    raise CheckpointError(f"{name}: U-Net keys match no known family (no 'middle_block.1.proj_in.weight' or 'label_emb')")


# --------------------------------------------------------------------------- configs from shapes


def _indices(keys: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _context_dim(s: Shapes) -> int:
    return s["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1]


def _depth(s: Shapes, block: str) -> int:
    return len(_indices(s, re.escape(block) + r"\.transformer_blocks\.(\d+)\.norm1\.weight"))


def infer_unet_config(s: Shapes, family: str) -> UNetConfig:
    """Read the architecture off the (prefix-stripped) LDM U-Net shapes; heads follow the family's convention.

    Each level is read from whichever of its blocks is present, so an incomplete file still yields a
    config and the strict loader can then name exactly which keys are missing.
    """
    try:
        mc, cin = s["input_blocks.0.0.weight"][:2]
        ops = _indices(s, r"input_blocks\.(\d+)\.0\.op\.weight")
        n = ops[0] - 1 if ops else len(_indices(s, r"input_blocks\.(\d+)\.")) - 1
        blocks = [[1 + i * (n + 1) + j for j in range(n)] for i in range(len(ops) + 1)]
        mult = tuple(next(s[k][0] for b in level if (k := f"input_blocks.{b}.0.out_layers.3.weight") in s) // mc
                     for level in blocks)
        depth = tuple(max(_depth(s, f"input_blocks.{b}.1") for b in level) for level in blocks)
        linear = len(s["middle_block.1.proj_in.weight"]) == 2
        out_channels, context, middle = s["out.2.weight"][0], _context_dim(s), _depth(s, "middle_block.1")
    except (KeyError, StopIteration) as e:
        raise CheckpointError(f"cannot read the U-Net architecture: {e} is missing; the file is incomplete or not "
                              f"an SD U-Net") from None
    widths = [mc * m for m, d in zip(mult, depth) if d] + [mc * mult[-1]]
    # Head counts are not in the weights: SD1 uses 8 heads, SD2/SDXL 64-wide heads (ComfyUI does the same).
    num_heads, head_dim = (None, 64) if family != "sd1" and all(w % 64 == 0 for w in widths) else (8, None)
    adm = s["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in s else None
    try:
        return UNetConfig(in_channels=cin, out_channels=out_channels, model_channels=mc, channel_mult=mult,
                          num_res_blocks=n, transformer_depth=depth, transformer_depth_middle=middle,
                          context_dim=context, use_linear_in_transformer=linear, adm_in_channels=adm,
                          num_heads=num_heads, head_dim=head_dim)
    except ConfigError as e:
        raise CheckpointError(f"U-Net shapes give an invalid config ({e}); if this is a custom model, save it with "
                              f"'{META_UNET}' metadata") from None


def infer_vae_config(s: Shapes) -> VAEConfig:
    """Read the architecture off the (prefix-stripped) LDM VAE shapes."""
    ch, cin = s["encoder.conv_in.weight"][:2]
    levels = _indices(s, r"encoder\.down\.(\d+)\.")
    mult = tuple(s[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in levels)
    return VAEConfig(in_channels=cin, out_channels=s["decoder.conv_out.weight"][0], ch=ch, ch_mult=mult,
                     num_res_blocks=len(_indices(s, r"encoder\.down\.0\.block\.(\d+)\.")),
                     z_channels=s["decoder.conv_in.weight"][1], use_quant_conv="quant_conv.weight" in s)


def diffusers_unet_structure(s: Shapes) -> UNetConfig:
    """A provisional config (heads unknown) read off diffusers-named U-Net shapes; enough to build the key table."""
    mc, cin = s["conv_in.weight"][:2]
    levels = _indices(s, r"down_blocks\.(\d+)\.")
    mult = tuple(s[f"down_blocks.{i}.resnets.0.conv1.weight"][0] // mc for i in levels)
    return UNetConfig(in_channels=cin, out_channels=s["conv_out.weight"][0], model_channels=mc, channel_mult=mult,
                      num_res_blocks=len(_indices(s, r"down_blocks\.0\.resnets\.(\d+)\.")),
                      transformer_depth=tuple(_depth(s, f"down_blocks.{i}.attentions.0") for i in levels),
                      transformer_depth_middle=_depth(s, "mid_block.attentions.0"), num_heads=1,
                      adm_in_channels=s["add_embedding.linear_1.weight"][1] if "add_embedding.linear_1.weight" in s else None)


def diffusers_vae_config(s: Shapes) -> VAEConfig:
    """The VAE config read off diffusers-named VAE shapes."""
    ch, cin = s["encoder.conv_in.weight"][:2]
    levels = _indices(s, r"encoder\.down_blocks\.(\d+)\.")
    return VAEConfig(in_channels=cin, out_channels=s["decoder.conv_out.weight"][0], ch=ch,
                     ch_mult=tuple(s[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // ch for i in levels),
                     num_res_blocks=len(_indices(s, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
                     z_channels=s["decoder.conv_in.weight"][1], use_quant_conv="quant_conv.weight" in s)


def shapes_of(w: Weights) -> dict[str, tuple[int, ...]]:
    return {k: w[k].shape for k in w}


# --------------------------------------------------------------------------- prediction type


def infer_prediction(unet: Weights, family: str, cfg: UNetConfig, full: Weights) -> str:
    """eps or v: explicit metadata or a `v_pred` key, else ComfyUI's SD2 heuristic, else eps.

    SD2.x 768 models are v-prediction and 512 base models eps, with identical keys. Like ComfyUI we
    tell them apart by the spread of one norm bias, which v-training leaves visibly larger.
    """
    if META_UNET in full.metadata:
        return str(json.loads(full.metadata[META_UNET]).get("prediction", "eps"))
    if "v_pred" in full:
        return "v"
    key = f"output_blocks.{len(cfg.channel_mult) * (cfg.num_res_blocks + 1) - 1}.1.transformer_blocks.0.norm1.bias"
    if family == "sd2" and cfg.model_channels == 320 and key in unet:
        return "v" if float(unet.get(key).float().std()) > 0.09 else "eps"
    return "eps"


def unet_config_for(unet: Weights, family: str, full: Weights) -> UNetConfig:
    """The U-Net config: from `athena.unet_config` metadata when present, else inferred from shapes."""
    if META_UNET in full.metadata:
        return UNetConfig.from_dict(json.loads(full.metadata[META_UNET]))
    cfg = infer_unet_config(shapes_of(unet), family)
    return replace(cfg, prediction=infer_prediction(unet, family, cfg, full))  # type: ignore[arg-type]
