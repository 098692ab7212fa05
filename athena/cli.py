"""The `athena` command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

from athena.checkpoints import text
from athena.checkpoints.convert import to_diffusers, to_single_file
from athena.checkpoints.io import Weights
from athena.checkpoints.load import Checkpoint, open_checkpoint
from athena.checkpoints.merge import merge
from athena.checkpoints.safetensors import DTYPE_NAMES
from athena.cli_generate import add_parser as add_generate
from athena.cli_run import add_parser as add_run
from athena.cli_serve import add_parser as add_serve
from athena.cli_train import add_train
from athena.errors import AthenaError
from athena.folders import default_dir

MODEL_FOLDERS = ("checkpoints", "diffusion_models", "vae", "loras", "embeddings", "controlnet", "text_encoders", "upscale_models")
LAYOUTS = {"ldm": "original single file", "ldm_unet": "bare U-Net (original names)", "diffusers_unet": "bare U-Net (diffusers names)",
           "ldm_vae": "standalone VAE (original names)", "diffusers_vae": "standalone VAE (diffusers names)", "diffusers": "diffusers folder"}



# --------------------------------------------------------------------------- models


def _params(w: Weights) -> int:
    return sum(math.prod(w[k].shape) for k in w)


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def describe(ckpt: Checkpoint) -> list[str]:
    lines = [f"path:        {ckpt.path}", f"layout:      {LAYOUTS.get(ckpt.layout, ckpt.layout)}",
             f"family:      {ckpt.family.label} ({ckpt.family.name}); latent scale {ckpt.family.latent_scale}"]
    dtypes: Counter[str] = Counter()
    components: list[tuple[str, Weights | None]] = [("unet", ckpt.unet), ("vae", ckpt.vae)] + list(ckpt.text.items())
    for name, w in components:
        if w is not None:
            dtypes.update(DTYPE_NAMES[w[k].dtype] for k in w)
    if ckpt.unet is not None and ckpt.unet_config is not None:
        c = ckpt.unet_config
        lines.append(f"prediction:  {c.prediction}")
        heads = f"heads={c.num_heads}" if c.num_heads else f"head_dim={c.head_dim}"
        lines.append(f"unet:        {_count(_params(ckpt.unet))} params; channels {c.model_channels} x {c.channel_mult}, "
                     f"{c.num_res_blocks} res blocks/level, transformer depth {c.transformer_depth} + middle "
                     f"{c.transformer_depth_middle}, context {c.context_dim}, {heads}"
                     + (f", adm {c.adm_in_channels}" if c.adm_in_channels else ""))
    if ckpt.vae is not None and ckpt.vae_config is not None:
        v = ckpt.vae_config
        lines.append(f"vae:         {_count(_params(ckpt.vae))} params; channels {v.ch} x {v.ch_mult}, z {v.z_channels}, "
                     f"downscale {v.downscale}")
    else:
        lines.append("vae:         none")
    for name, w in ckpt.text.items():
        t = text.text_config(text.hf_names(w), name, ckpt.text_hf_configs.get(name))
        proj = f", projection {t.projection_dim}" if t.projection_dim else ""
        lines.append(f"text:        {name}: {_count(_params(w))} params; width {t.width}, {t.layers} layers, {t.heads} heads, "
                     f"{t.act}{proj}")
    if ckpt.other:
        lines.append(f"other keys:  {len(ckpt.other)} (e.g. {', '.join(sorted(ckpt.other)[:3])})")
    lines.append("dtypes:      " + ", ".join(f"{d} x{n}" for d, n in dtypes.most_common()))
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.path)
    try:
        print("\n".join(describe(ckpt)))
    finally:
        ckpt.close()
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise AthenaError(f"{dst} exists; pass --overwrite to replace it")
    ckpt = open_checkpoint(src)
    try:
        if dst.suffix == ".safetensors":
            to_single_file(ckpt, dst)
        else:
            to_diffusers(ckpt, dst)
    finally:
        ckpt.close()
    print(dst)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise AthenaError(f"{out} exists; pass --overwrite to replace it")

    def progress(done: int, total: int) -> None:
        print(f"\rmerging {done}/{total} tensors", end="" if done < total else "\n", file=sys.stderr, flush=True)

    counts = merge(args.a, args.b, out, alpha=args.alpha, difference=args.add_difference, progress=progress)
    if counts["copied"]:
        print(f"note: {counts['copied']} tensors only A has (or integer ones) were copied from A unchanged", file=sys.stderr)
    print(out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.models_dir) if args.models_dir else default_dir("models", "ATHENA_MODELS_DIR")
    if not root.is_dir():
        print(f"{root}: no models directory yet (create it, or set ATHENA_MODELS_DIR / --models-dir)")
        return 0
    for folder in MODEL_FOLDERS:
        items = sorted(p for p in (root / folder).glob("**/*") if p.suffix in (".safetensors", ".ckpt", ".pt", ".bin")
                       or (p / "model_index.json").is_file()) if (root / folder).is_dir() else []
        for p in items:
            print(f"{folder}/{p.relative_to(root / folder)}")
    return 0


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="athena", description="Athena: diffusion models, workflows and a server.")
    sub = ap.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="inspect and convert model files").add_subparsers(dest="action", required=True)
    info = models.add_parser("info", help="detected family, components, parameter counts, dtypes and prediction type")
    info.add_argument("path")
    info.set_defaults(fn=cmd_info)
    conv = models.add_parser("convert", help="single file <-> diffusers folder (DST ending in .safetensors = single file)")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(fn=cmd_convert)
    mrg = models.add_parser("merge", help="weighted sum A*(1-alpha) + B*alpha, or add difference A + (B-C)*alpha")
    mrg.add_argument("a")
    mrg.add_argument("b")
    mrg.add_argument("--alpha", type=float, required=True, help="0 keeps A, 1 takes B")
    mrg.add_argument("--add-difference", metavar="C", help="graft B's change from C onto A")
    mrg.add_argument("-o", "--output", required=True, help="the merged .safetensors file")
    mrg.add_argument("--overwrite", action="store_true")
    mrg.set_defaults(fn=cmd_merge)
    lst = models.add_parser("list", help="model files in the models directory, by folder")
    lst.add_argument("--models-dir")
    lst.set_defaults(fn=cmd_list)
    add_generate(sub)
    add_run(sub)
    add_serve(sub)
    add_train(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except AthenaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (loading, a second Ctrl-C): no traceback
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
