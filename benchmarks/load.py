"""Loading an SD1.5-size single file: Athena vs diffusers' `from_single_file`, same file, same machine, one run.

    python benchmarks/load.py [--stored fp16|fp32] [--dtype fp32|fp16|bf16] [--runs 3]

Builds a random-weight SD1.5 file in the exact original layout (U-Net + VAE + CLIP-L), then loads its U-Net
and VAE (the same two models on both sides; CLIP-L stays in the file) with each library in a fresh subprocess,
so peak RSS is each loader's own. Reports the median load time, the ratio Athena/diffusers, and the peak RSS
growth over the imported-but-idle process against the loaded weights' size in the compute dtype (target <= 1.15:
no second full copy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_table  # noqa: E402

from athena.checkpoints.build import random_checkpoint  # noqa: E402
from athena.checkpoints.diffusers_config import unet_to_diffusers, vae_to_diffusers  # noqa: E402
from athena.checkpoints.load import dtype_of  # noqa: E402
from athena.models.unet import SD15  # noqa: E402
from athena.models.vae import SD_VAE  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
which, path, cfg_dir, dtype = sys.argv[1:5]
from athena.checkpoints.load import dtype_of
dtype = dtype_of(dtype)
if which == "athena":  # the same two models as diffusers' side; athena.load would add the text encoder
    from athena.checkpoints.load import open_checkpoint
    def load():
        ckpt = open_checkpoint(path)
        return ckpt.load_unet("cpu", dtype), ckpt.load_vae("cpu", dtype)
else:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    kw = dict(config=cfg_dir, local_files_only=True, torch_dtype=dtype)
    load = lambda: (UNet2DConditionModel.from_single_file(path, subfolder="unet", **kw),
                    AutoencoderKL.from_single_file(path, subfolder="vae", **kw))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
models = load()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "growth": peak - base}))
"""


def run_child(which: str, path: Path, cfg_dir: Path, dtype: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(path), str(cfg_dir), dtype], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{which} loader failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stored", choices=("fp16", "fp32"), default="fp16")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="athena-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"sd15-random-{args.stored}.safetensors"
    if not path.exists():
        print(f"building {path} ...", flush=True)
        random_checkpoint(path, "sd1", SD15, SD_VAE, {"clip_l": (768, 12)}, dtype=dtype_of(args.stored))
    cfg_dir = work / "diffusers-config"  # local configs: from_single_file must not reach a hub
    for name, cfg in (("unet", unet_to_diffusers(SD15)), ("vae", vae_to_diffusers(SD_VAE, 0.18215, None))):
        (cfg_dir / name).mkdir(parents=True, exist_ok=True)
        (cfg_dir / name / "config.json").write_text(json.dumps(cfg))

    elem = torch.empty((), dtype=dtype_of(args.dtype)).element_size()
    from athena.models.unet import UNet
    from athena.models.vae import AutoencoderKL
    n_params = sum(p.numel() for m in (UNet(SD15, device="meta"), AutoencoderKL(SD_VAE, device="meta")) for p in m.parameters())
    weights = n_params * elem
    runs: dict[str, list[dict[str, float]]] = {"athena": [], "diffusers": []}
    for _ in range(args.runs + 1):  # the first round warms the page cache for both
        for which in runs:
            runs[which].append(run_child(which, path, cfg_dir, args.dtype))
    rows = []
    med = {w: statistics.median(r["seconds"] for r in rs[1:]) for w, rs in runs.items()}
    for which, rs in runs.items():
        growth = statistics.median(r["growth"] for r in rs[1:])
        rows.append([which, f"{med[which]:.2f}", f"{med[which] / med['diffusers']:.3f}", f"{growth / 2**30:.2f}",
                     f"{growth / weights:.3f}"])
    print(f"# load U-Net + VAE of an SD1.5-size file ({path.stat().st_size / 2**30:.2f} GiB stored {args.stored}) into "
          f"{args.dtype}: weights {weights / 2**30:.2f} GiB; median of {args.runs} after a warm-up round")
    print(fmt_table(["loader", "seconds", "ratio vs diffusers", "peak RSS growth GiB", "growth / weights"], rows))


if __name__ == "__main__":
    main()
