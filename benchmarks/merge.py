"""Peak RSS of merging two sd15-size random checkpoints: Athena's streamed merge vs the usual in-memory recipe.

    python benchmarks/merge.py [--dtype fp16] [--runs 1]

The reference is what merge scripts commonly do: `safetensors.torch.load_file` both models, sum tensor by tensor
into a new dict, `save_file` it. Each merge runs in a fresh child process (peak RSS is per process); the table
gives each peak over one input file's size (target for Athena: < 1.5) and Athena's time and peak over the
reference's. Both write the same weighted sum (checked bit for bit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table  # noqa: E402

ALPHA = 0.3


def child(which: str, a: str, b: str, out: str) -> None:
    t0 = time.perf_counter()
    if which == "athena":
        from athena.checkpoints.merge import merge

        merge(a, b, out, alpha=ALPHA)
    else:
        from safetensors.torch import load_file, save_file

        ta, tb = load_file(a), load_file(b)
        save_file({k: (v.float() * (1 - ALPHA) + tb[k].float() * ALPHA).to(v.dtype) if v.is_floating_point() else v
                   for k, v in ta.items()}, out)
    seconds = time.perf_counter() - t0
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss": int(hwm.split()[1]) * 1024, "seconds": seconds}))


def run(which: str, a: Path, b: Path, out: Path) -> dict[str, float]:
    res = subprocess.run([sys.executable, __file__, "--child", which, str(a), str(b), str(out)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    import torch
    from safetensors import safe_open

    from athena.checkpoints.build import random_checkpoint
    from athena.models.unet import UNET_PRESETS
    from athena.models.vae import VAE_PRESETS

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        files = [random_checkpoint(Path(tmp) / f"{n}.safetensors", "sd1", UNET_PRESETS["sd15"], VAE_PRESETS["sd"],
                                   {"clip_l": (768, 12)}, dtype=dtype, seed=s) for n, s in (("a", 1), ("b", 2))]
        size = files[0].stat().st_size
        ours = run("athena", *files, Path(tmp) / "ours.safetensors")
        ref = run("reference", *files, Path(tmp) / "ref.safetensors")
        with safe_open(Path(tmp) / "ours.safetensors", "pt") as x, safe_open(Path(tmp) / "ref.safetensors", "pt") as y:
            assert all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()), "the merges differ"
    print(f"# merge of two sd15-size {args.dtype} files ({size / 2**30:.2f} GiB each), alpha {ALPHA}; peak RSS per process")
    print(fmt_table(["merge", "seconds", "peak RSS GiB", "peak / file size"], [
        ["athena (streamed)", f"{ours['seconds']:.1f}", f"{ours['peak_rss'] / 2**30:.2f}", f"{ours['peak_rss'] / size:.3f}"],
        ["reference (load_file x2)", f"{ref['seconds']:.1f}", f"{ref['peak_rss'] / 2**30:.2f}", f"{ref['peak_rss'] / size:.3f}"],
        ["ratio athena / reference", f"{ours['seconds'] / ref['seconds']:.3f}", f"{ours['peak_rss'] / ref['peak_rss']:.3f}", ""],
    ]))


if __name__ == "__main__":
    main()
