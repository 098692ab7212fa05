"""Our config dataclasses <-> diffusers' `config.json` dicts for the U-Net and the VAE."""

from __future__ import annotations

from typing import Any

from athena.errors import ConfigError
from athena.models.unet import UNetConfig
from athena.models.vae import VAEConfig

# diffusers options whose non-default values describe an architecture the SD U-Net does not have
UNSUPPORTED = {"class_embed_type": None, "encoder_hid_dim": None, "time_cond_proj_dim": None,
               "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
               "mid_block_type": "UNetMidBlock2DCrossAttn", "dual_cross_attention": False, "only_cross_attention": False,
               "conv_in_kernel": 3, "conv_out_kernel": 3, "norm_num_groups": 32, "attention_type": "default",
               "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0}


def _per_level(value: int | list[int] | tuple[int, ...], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    if len(value) != levels or not all(isinstance(v, int) for v in value):
        raise ConfigError(f"diffusers unet config: {name}={value} must be an int or one int per level ({levels})")
    return list(value)


def unet_from_diffusers(d: dict[str, Any], prediction: str = "eps") -> UNetConfig:
    """Build a `UNetConfig` from a diffusers `unet/config.json` dict."""
    for key, default in UNSUPPORTED.items():
        if d.get(key, default) != default:
            raise ConfigError(f"diffusers unet config: {key}={d[key]!r} is not an SD1.x/SD2.x/SDXL U-Net (expected {default!r})")
    if d.get("addition_embed_type") not in (None, "text_time"):
        raise ConfigError(f"diffusers unet config: addition_embed_type={d['addition_embed_type']!r} is not supported")
    boc = list(d.get("block_out_channels", (320, 640, 1280, 1280)))
    levels, mc = len(boc), boc[0]
    if any(c % mc for c in boc):
        raise ConfigError(f"diffusers unet config: block_out_channels={boc} are not multiples of the first")
    down = d.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    tlpb = _per_level(d.get("transformer_layers_per_block", 1), levels, "transformer_layers_per_block")
    lpb = d.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise ConfigError(f"diffusers unet config: per-level layers_per_block={lpb} is not supported")
    heads = _per_level(d.get("num_attention_heads") or d.get("attention_head_dim", 8), levels, "attention_head_dim")
    attn_levels = [i for i, t in enumerate(down) if t.startswith("CrossAttn")] + [levels - 1]  # + the middle block
    head_dims = {boc[i] // heads[i] for i in attn_levels}
    same_count = len({heads[i] for i in attn_levels}) == 1
    # Where both describe the model, follow the family's convention: SD1 counts heads, SD2/SDXL size them.
    if len(head_dims) == 1 and (d.get("use_linear_projection", False) or not same_count):
        num_heads, head_dim = None, head_dims.pop()
    elif same_count:
        num_heads, head_dim = heads[attn_levels[0]], None
    else:
        raise ConfigError(f"diffusers unet config: heads {heads} over widths {boc} have neither a common count nor a common size")
    adm = d.get("projection_class_embeddings_input_dim") if d.get("addition_embed_type") == "text_time" else None
    return UNetConfig(
        in_channels=d.get("in_channels", 4), out_channels=d.get("out_channels", 4), model_channels=mc,
        channel_mult=tuple(c // mc for c in boc), num_res_blocks=lpb,
        transformer_depth=tuple(tlpb[i] if down[i].startswith("CrossAttn") else 0 for i in range(levels)),
        transformer_depth_middle=tlpb[-1], num_heads=num_heads, head_dim=head_dim,
        context_dim=d.get("cross_attention_dim", 1280), use_linear_in_transformer=d.get("use_linear_projection", False),
        adm_in_channels=adm, prediction=prediction)  # type: ignore[arg-type]


def unet_to_diffusers(cfg: UNetConfig) -> dict[str, Any]:
    """The diffusers `unet/config.json` dict equivalent to `cfg`."""
    levels = len(cfg.channel_mult)
    boc = [cfg.model_channels * m for m in cfg.channel_mult]
    if cfg.transformer_depth[-1] not in (0, cfg.transformer_depth_middle):
        raise ConfigError(f"UNetConfig {cfg.transformer_depth} with middle depth {cfg.transformer_depth_middle}: diffusers "
                          f"requires the last level's depth to equal the middle block's")
    tlpb = [t or cfg.transformer_depth_middle for t in cfg.transformer_depth]
    tlpb[-1] = cfg.transformer_depth_middle
    heads = [cfg.num_heads if cfg.num_heads else max(1, c // cfg.head_dim) for c in boc]  # type: ignore[operator]
    d: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if t else "DownBlock2D" for t in cfg.transformer_depth],
        "up_block_types": ["CrossAttnUpBlock2D" if t else "UpBlock2D" for t in reversed(cfg.transformer_depth)],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": boc, "layers_per_block": cfg.num_res_blocks,
        "transformer_layers_per_block": tlpb, "attention_head_dim": heads, "cross_attention_dim": cfg.context_dim,
        "use_linear_projection": cfg.use_linear_in_transformer, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "downsample_padding": 1,
        "sample_size": 128 if cfg.adm_in_channels else 64,
    }
    if cfg.adm_in_channels is not None:
        d.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=cfg.adm_in_channels)
    assert len(heads) == levels
    return d


def vae_from_diffusers(d: dict[str, Any]) -> VAEConfig:
    """Build a `VAEConfig` from a diffusers `vae/config.json` dict."""
    boc = list(d.get("block_out_channels", (64,)))
    if d.get("norm_num_groups", 32) != 32 or any(c % boc[0] for c in boc):
        raise ConfigError(f"diffusers vae config: block_out_channels={boc}, norm_num_groups={d.get('norm_num_groups')} "
                          f"is not an LDM KL-VAE layout")
    if not d.get("mid_block_add_attention", True):
        raise ConfigError("diffusers vae config: mid_block_add_attention=False is not supported")
    if d.get("use_quant_conv", True) != d.get("use_post_quant_conv", True):
        raise ConfigError("diffusers vae config: use_quant_conv and use_post_quant_conv must agree")
    return VAEConfig(in_channels=d.get("in_channels", 3), out_channels=d.get("out_channels", 3), ch=boc[0],
                     ch_mult=tuple(c // boc[0] for c in boc), num_res_blocks=d.get("layers_per_block", 1),
                     z_channels=d.get("latent_channels", 4), use_quant_conv=d.get("use_quant_conv", True))


def vae_to_diffusers(cfg: VAEConfig, scaling_factor: float, shift_factor: float | None) -> dict[str, Any]:
    """The diffusers `vae/config.json` dict equivalent to `cfg`."""
    levels = len(cfg.ch_mult)
    return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": [cfg.ch * m for m in cfg.ch_mult], "layers_per_block": cfg.num_res_blocks,
            "latent_channels": cfg.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512,
            "scaling_factor": scaling_factor, "shift_factor": shift_factor,
            "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_quant_conv}
