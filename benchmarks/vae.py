"""SD VAE decode of a 64x64 latent (512x512 image): Athena vs diffusers on the same weights, one run.

    python benchmarks/vae.py [--dtypes fp32,bf16] [--runs 3] [--device cpu|cuda]

Timings are interleaved in this process. Peak RSS growth of one decode is measured in fresh subprocesses
(one per implementation, plus Athena's tiled decode) so each number is that decoder's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_table, timed_pair  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_pair(seed: int = 0):
    """diffusers' AutoencoderKL (SD config, seeded random weights) and ours holding the same tensors."""
    from diffusers import AutoencoderKL as RefVAE

    from athena.checkpoints.diffusers_config import vae_to_diffusers
    from athena.checkpoints.keymaps import sd_vae
    from athena.models.vae import SD_VAE, AutoencoderKL

    torch.manual_seed(seed)
    ref = RefVAE(**{k: v for k, v in vae_to_diffusers(SD_VAE, 0.18215, None).items() if k != "_class_name"}).eval()
    ours = AutoencoderKL(SD_VAE, device="meta")
    sd = ref.state_dict()
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict({l: sd[d].clone().reshape(shapes[l]) for d, l in sd_vae.diffusers_to_ldm(SD_VAE).items()}, assign=True)
    return ref, ours.eval()


CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[3])
from vae import build_pair
which, dtype = sys.argv[1], getattr(torch, sys.argv[2])
ref, ours = build_pair()
ref, ours = ref.to(dtype), ours.to(dtype)
z = torch.randn(1, 4, 64, 64).to(dtype)
fn = {"athena": lambda: ours.decode(z), "athena-tiled": lambda: ours.decode_tiled(z, 32, 8),
      "diffusers": lambda: ref.decode(z).sample}[which]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.no_grad():
    fn()
print(json.dumps({"growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))
"""


def rss_growth(which: str, dtype: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, which,
                          str(DTYPES[dtype]).split(".")[1], str(Path(__file__).resolve().parent)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    ref, ours = build_pair()
    rows = []
    for dt in args.dtypes.split(","):
        dtype = DTYPES[dt]
        ref.to(device, dtype)
        ours.to(device, dtype)
        z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        with torch.no_grad():
            err = (ours.decode(z).float() - ref.decode(z).sample.float()).abs().max().item()
            t_ours, t_ref = timed_pair(lambda: ours.decode(z), lambda: ref.decode(z).sample, runs=args.runs, device=device)
        rss = {w: rss_growth(w, dt) / 2**20 for w in ("athena", "diffusers", "athena-tiled")} if device.type == "cpu" else {}
        rows.append([dt, f"{t_ours:.2f}", f"{t_ref:.2f}", f"{t_ours / t_ref:.3f}", f"{err:.1e}",
                     *(f"{rss[w]:.0f}" if rss else "-" for w in ("athena", "diffusers", "athena-tiled"))])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    print(f"# VAE decode 64x64 latent -> 512x512, median of {args.runs} after warm-up ({device}, {torch.get_num_threads()} threads)")
    print(fmt_table(["dtype", "athena s", "diffusers s", "ratio", "max|diff|", "athena peak RSS growth MiB",
                     "diffusers MiB", "athena tiled (32/8) MiB"], rows))


if __name__ == "__main__":
    main()
