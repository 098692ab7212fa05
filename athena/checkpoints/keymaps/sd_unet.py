"""diffusers `UNet2DConditionModel` names <-> original LDM/SGM U-Net names, as data.

`diffusers_to_ldm(cfg)` expands the small per-block tables below over `cfg`'s block layout into a
full-key table. It is built from the config alone, so tests can check it against the model.
"""

from __future__ import annotations

from athena.models.unet import UNetConfig

# diffusers suffix -> LDM suffix, per block kind
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
       "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
       "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# Transformer internals have the same names in both layouts; (module, has_bias).
TRANSFORMER = (("norm", True), ("proj_in", True), ("proj_out", True))
TRANSFORMER_BLOCK = (("norm1", True), ("norm2", True), ("norm3", True),
                     ("attn1.to_q", False), ("attn1.to_k", False), ("attn1.to_v", False), ("attn1.to_out.0", True),
                     ("attn2.to_q", False), ("attn2.to_k", False), ("attn2.to_v", False), ("attn2.to_out.0", True),
                     ("ff.net.0.proj", True), ("ff.net.2", True))


def _params(module: str, bias: bool = True) -> list[str]:
    return [f"{module}.weight", f"{module}.bias"] if bias else [f"{module}.weight"]


def _resnet(table: dict[str, str], d: str, ldm: str, shortcut: bool) -> None:
    for dsuf, lsuf in RESNET.items():
        if dsuf != "conv_shortcut" or shortcut:
            for p in ("weight", "bias"):
                table[f"{d}.{dsuf}.{p}"] = f"{ldm}.{lsuf}.{p}"


def _transformer(table: dict[str, str], d: str, ldm: str, depth: int) -> None:
    names = [m for m, b in TRANSFORMER for m in _params(m, b)]
    names += [f"transformer_blocks.{k}.{p}" for k in range(depth) for m, b in TRANSFORMER_BLOCK for p in _params(m, b)]
    table.update({f"{d}.{n}": f"{ldm}.{n}" for n in names})


def diffusers_to_ldm(cfg: UNetConfig) -> dict[str, str]:
    """Full-key rename table (diffusers key -> LDM key, no `model.diffusion_model.` prefix) for `cfg`."""
    table: dict[str, str] = {}
    for d, ldm in TOP.items():
        if d.startswith("add_embedding") and cfg.adm_in_channels is None:
            continue
        for p in ("weight", "bias"):
            table[f"{d}.{p}"] = f"{ldm}.{p}"
    n, mc, levels = cfg.num_res_blocks, cfg.model_channels, len(cfg.channel_mult)

    ch, skip_chs = mc, [mc]
    for i, (mult, depth) in enumerate(zip(cfg.channel_mult, cfg.transformer_depth)):
        for j in range(n):
            k = 1 + i * (n + 1) + j
            _resnet(table, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", ch != mc * mult)
            ch = mc * mult
            if depth:
                _transformer(table, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", depth)
            skip_chs.append(ch)
        if i != levels - 1:
            for p in ("weight", "bias"):
                table[f"down_blocks.{i}.downsamplers.0.conv.{p}"] = f"input_blocks.{(i + 1) * (n + 1)}.0.op.{p}"
            skip_chs.append(ch)

    _resnet(table, "mid_block.resnets.0", "middle_block.0", False)
    _transformer(table, "mid_block.attentions.0", "middle_block.1", cfg.transformer_depth_middle)
    _resnet(table, "mid_block.resnets.1", "middle_block.2", False)

    for i in range(levels):  # diffusers up_blocks.i is LDM level levels-1-i
        level = levels - 1 - i
        mult, depth = cfg.channel_mult[level], cfg.transformer_depth[level]
        for j in range(n + 1):
            k = i * (n + 1) + j
            _resnet(table, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", ch + skip_chs.pop() != mc * mult)
            ch = mc * mult
            if depth:
                _transformer(table, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", depth)
        if level:
            for p in ("weight", "bias"):
                table[f"up_blocks.{i}.upsamplers.0.conv.{p}"] = f"output_blocks.{i * (n + 1) + n}.{2 if depth else 1}.conv.{p}"
    return table
