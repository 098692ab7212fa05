"""Adapter training for real: a LoRA and a textual inversion taught to the bundled athena-tiny, with figures.

    python benchmarks/adapters.py [--steps-lora 600] [--steps-ti 400] [--images 512] [--eval 32] [--out runs/adapters]

- LoRA: a five-pointed star, an item shape athena-tiny has never seen, drawn on the fashion-colors palette and
  captioned "a {fg} star on a {bg} background". Measure: the share of the item's pixels (those far from the
  background colour) inside the reference star mask, over `--eval` star prompts, without and with the LoRA.
- Textual inversion: fashion-colors items on a teal background, a colour outside the palette, captioned with the
  new token <teal>. Measure: the distance of the generated background from teal, prompting the plain word "teal"
  (which the base model never saw) vs `embedding:teal`.
Both train through `athena train --lora / --textual-inversion` (the one training loop); the LoRA file is kohya's
format and the embedding A1111's. Needs Debian's dataset-fashion-mnist for the teal set.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table  # noqa: E402

import athena  # noqa: E402
from athena.training.config import TrainConfig  # noqa: E402
from athena.training.loop import train  # noqa: E402
from tests.adapters.concepts import (  # noqa: E402
    colour_figures,
    star_figures,
    write_colour_folder,
    write_star_folder,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-lora", type=int, default=600)
    ap.add_argument("--steps-ti", type=int, default=400)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--eval", type=int, default=32)
    ap.add_argument("--out", default="runs/adapters")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    common = dict(batch_size=16, warmup_steps=50, ema_decay=0.95, log_every=50, device=args.device, tensorboard=False)
    rows = []

    t0 = time.perf_counter()
    stars = write_star_folder(out / "stars", args.images)
    lora = train(TrainConfig(task="lora", dataset=str(stars), out=str(out / "lora"), steps=args.steps_lora, lr=1e-3,
                             lora_targets="attn,ff,proj,conv", sample_every=args.steps_lora, save_every=args.steps_lora,
                             **common), quiet=True)
    t_lora = time.perf_counter() - t0
    f = star_figures(athena.load("athena-tiny"), lora, n=args.eval)
    rows.append(["LoRA: star", "item pixels inside the star", f"{f['base']:.3f}", f"{f['lora']:.3f}", "higher",
                 f"{t_lora:.0f}", f"{lora.stat().st_size / 2**20:.2f}"])
    print(fmt_table(["adapter", "measure", "base", "adapted", "better", "train s", "file MiB"], rows[-1:]), flush=True)

    t0 = time.perf_counter()
    teal = write_colour_folder(out / "teal", args.images, "<teal>")
    emb = train(TrainConfig(task="ti", dataset=str(teal), out=str(out / "ti"), steps=args.steps_ti, lr=5e-3,
                            ti_token="<teal>", sample_every=args.steps_ti, save_every=args.steps_ti, **common), quiet=True)
    t_ti = time.perf_counter() - t0
    (out / "embeddings").mkdir(exist_ok=True)
    shutil.copy(emb, out / "embeddings" / "teal.safetensors")
    f = colour_figures(athena.load("athena-tiny", embeddings=out / "embeddings"), n=args.eval)
    rows.append(["TI: <teal>", "background distance from teal", f"{f['base']:.3f}", f"{f['ti']:.3f}", "lower",
                 f"{t_ti:.0f}", f"{emb.stat().st_size / 2**20:.4f}"])
    print(f"# athena-tiny adapters ({torch.get_num_threads()} threads, torch {torch.__version__}), "
          f"{args.images} training images, {args.eval} evaluation prompts")
    print(fmt_table(["adapter", "measure", "base", "adapted", "better", "train s", "file MiB"], rows))


if __name__ == "__main__":
    main()
