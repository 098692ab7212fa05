"""diffusers `AutoencoderKL` names <-> original LDM VAE names, as data.

The mid-block attention's q/k/v/proj_out are 1x1 convs ([C, C, 1, 1]) in LDM files and Linear
([C, C]) in diffusers; `CONV_AS_LINEAR` lists those LDM keys so converters can reshape them.
"""

from __future__ import annotations

from athena.models.vae import VAEConfig

RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14 files
MID = {"resnets.0": "block_1", "attentions.0": "attn_1", "resnets.1": "block_2"}
TOP = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}


def _wb(table: dict[str, str], d: str, ldm: str) -> None:
    table[f"{d}.weight"], table[f"{d}.bias"] = f"{ldm}.weight", f"{ldm}.bias"


def _resnet(table: dict[str, str], d: str, ldm: str, shortcut: bool) -> None:
    for ds, ls in RESNET.items():
        if ds != "conv_shortcut" or shortcut:
            _wb(table, f"{d}.{ds}", f"{ldm}.{ls}")


def _mid(table: dict[str, str], side: str) -> None:
    _resnet(table, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", False)
    for ds, ls in ATTN.items():
        _wb(table, f"{side}.mid_block.attentions.0.{ds}", f"{side}.mid.attn_1.{ls}")
    _resnet(table, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", False)


def diffusers_to_ldm(cfg: VAEConfig) -> dict[str, str]:
    """Full-key rename table (diffusers key -> LDM key, no `first_stage_model.` prefix) for `cfg`."""
    table: dict[str, str] = {}
    chs = [cfg.ch * m for m in cfg.ch_mult]
    levels = len(chs)
    for side in ("encoder", "decoder"):
        for ds, ls in TOP.items():
            _wb(table, f"{side}.{ds}", f"{side}.{ls}")
        _mid(table, side)
    for i in range(levels):
        cin = cfg.ch if i == 0 else chs[i - 1]
        for j in range(cfg.num_res_blocks):
            _resnet(table, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", j == 0 and cin != chs[i])
        if i != levels - 1:
            _wb(table, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    for i in range(levels):  # diffusers up_blocks.i is LDM up.(levels-1-i)
        level = levels - 1 - i
        cin = chs[level + 1] if level < levels - 1 else chs[-1]
        for j in range(cfg.num_res_blocks + 1):
            _resnet(table, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", j == 0 and cin != chs[level])
        if level:
            _wb(table, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    if cfg.use_quant_conv:
        _wb(table, "quant_conv", "quant_conv")
        _wb(table, "post_quant_conv", "post_quant_conv")
    return table


CONV_AS_LINEAR = frozenset(f"{side}.mid.attn_1.{m}.weight" for side in ("encoder", "decoder") for m in ("q", "k", "v", "proj_out"))


def legacy_alias(key: str) -> str:
    """Rename a diffusers<0.14 VAE attention key (`query`, `proj_attn`, ...) to the current name."""
    for old, new in LEGACY_ATTN.items():
        if f".attentions.0.{old}." in key:
            return key.replace(f".attentions.0.{old}.", f".attentions.0.{new}.")
    return key
