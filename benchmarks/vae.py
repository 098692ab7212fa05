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
from common import device_of, fmt_table, timed_pair  # noqa: E402

from athena.checkpoints.load import dtype_of  # noqa: E402



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
import json, sys, torch
sys.path.insert(0, sys.argv[3])
from vae import decoder_for
which, dtype = sys.argv[1], getattr(torch, sys.argv[2])
decode = decoder_for(which, dtype)
z = torch.randn(1, 4, 64, 64).to(dtype)

def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark: measure the decode alone
base = status("VmRSS")
with torch.no_grad():
    decode(z)
print(json.dumps({"growth": status("VmHWM") - base}))
"""


def decoder_for(which: str, dtype: torch.dtype):
    """Only the measured decoder, weights allocated in place (values do not matter for memory)."""
    from diffusers import AutoencoderKL as RefVAE

    from athena.checkpoints.diffusers_config import vae_to_diffusers
    from athena.models.vae import SD_VAE, AutoencoderKL

    if which == "diffusers":
        with torch.device("meta"):
            model = RefVAE(**{k: v for k, v in vae_to_diffusers(SD_VAE, 0.18215, None).items() if k != "_class_name"})
    else:
        model = AutoencoderKL(SD_VAE, device="meta")
    model = model.to_empty(device="cpu").to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if which == "diffusers":
        return lambda z: model.decode(z).sample
    return (lambda z: model.decode_tiled(z, 32, 8)) if which == "athena-tiled" else model.decode


def rss_growth(which: str, dtype: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(dtype_of(dtype)).split(".")[1],
                          str(Path(__file__).resolve().parent)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{which} decode failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    device = device_of(args.device)
    ref, ours = build_pair()
    rows = []
    for dt in args.dtypes.split(","):
        dtype = dtype_of(dt)
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
