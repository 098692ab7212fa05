"""Athena vs diffusers U-Net forward on the same weights, inputs and threads, in one process.

    python benchmarks/unet.py                      # CPU: sd15 32x32 and 64x64 (batch 2), tiny; fp32 and bf16
    python benchmarks/unet.py --device cuda        # GPU: sd15 64x64 and 128x128 (batch 2); fp16 and bf16
    python benchmarks/unet.py --conv               # CPU fp32: every conv shape of the cases, direct vs im2col+GEMM

Prints the median time of each, the ratio Athena/diffusers (< 1 is faster), the achieved GFLOP/s
(counted with torch.utils.flop_counter) and that rate as a share of a large matmul's measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_of, fmt_table, matmul_flops_per_s, timed_pair  # noqa: E402

from athena.checkpoints.diffusers_config import unet_to_diffusers  # noqa: E402
from athena.checkpoints.keymaps import sd_unet  # noqa: E402
from athena.checkpoints.load import dtype_of  # noqa: E402
from athena.models.layers import Conv2d, gemm_conv2d  # noqa: E402
from athena.models.unet import UNET_PRESETS, UNet  # noqa: E402

CASES = {"sd15-32": ("sd15", 32), "sd15-64": ("sd15", 64), "sd15-128": ("sd15", 128), "tiny": ("tiny", 32)}


def build_pair(preset: str, seed: int = 0):
    """diffusers' UNet2DConditionModel with seeded random weights, and ours holding the very same tensors."""
    from diffusers import UNet2DConditionModel

    cfg = UNET_PRESETS[preset]
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**{k: v for k, v in unet_to_diffusers(cfg).items() if k != "_class_name"}).eval()
    ours = UNet(cfg, device="meta")
    ref_sd = ref.state_dict()
    ours.load_state_dict({ldm: ref_sd[d].clone() for d, ldm in sd_unet.diffusers_to_ldm(cfg).items()}, assign=True)
    return cfg, ref, ours.eval()


def conv_table(cases: list[str], batch: int, runs: int) -> None:
    """Each distinct fp32 conv of the cases' forwards, timed direct (oneDNN) and as `gemm_conv2d`, with the choice
    `layers.Conv2d` makes: the data behind its rule, to re-check on another CPU."""
    shapes: dict[tuple, Conv2d] = {}  # (input shape, weight shape, stride) -> a conv of that shape

    def record(m: Conv2d, args: tuple) -> None:
        shapes.setdefault((tuple(args[0].shape), tuple(m.weight.shape), m.stride), m)

    for case in cases:
        preset, size = CASES[case]
        cfg = UNET_PRESETS[preset]
        unet = UNet(cfg, device="meta")
        hooks = [m.register_forward_pre_hook(record) for m in unet.modules() if isinstance(m, Conv2d)]
        with torch.no_grad():
            unet(torch.empty(batch, 4, size, size, device="meta"), torch.zeros(batch, device="meta"),
                 torch.empty(batch, 77, cfg.context_dim, device="meta"))
        for h in hooks:
            h.remove()
    rows, total = [], {"direct": 0.0, "gemm": 0.0, "chosen": 0.0}
    for (xs, ws, stride), m in sorted(shapes.items(), key=lambda kv: -kv[0][1][0] * kv[0][1][1] * kv[0][1][2]):
        x, w, b = torch.randn(xs), torch.randn(ws) * 0.01, torch.randn(ws[0])
        padding = m.padding
        t_direct, t_gemm = timed_pair(lambda: torch.nn.functional.conv2d(x, w, b, stride, padding),
                                      lambda: gemm_conv2d(x, w, b, stride, padding, m.dilation), runs=runs)
        pick = m._gemm_wins(x, w, padding)
        total["direct"] += t_direct
        total["gemm"] += t_gemm
        total["chosen"] += t_gemm if pick else t_direct
        rows.append([f"{xs}", f"{ws}", f"{stride[0]}", f"{t_direct * 1e3:.2f}", f"{t_gemm * 1e3:.2f}",
                     f"{t_gemm / t_direct:.2f}", "gemm" if pick else "direct"])
    print(fmt_table(["input", "weight", "stride", "direct ms", "gemm ms", "gemm/direct", "Conv2d picks"], rows))
    print(f"each distinct shape once: all direct {total['direct'] * 1e3:.1f} ms, all GEMM {total['gemm'] * 1e3:.1f} ms, "
          f"as chosen {total['chosen'] * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default=None, help=f"comma list of {sorted(CASES)}")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32, fp16, bf16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--conv", action="store_true", help="time each fp32 conv shape direct vs im2col+GEMM instead")
    args = ap.parse_args()
    device = device_of(args.device)
    gpu = device.type == "cuda"
    cases = (args.cases or ("sd15-64,sd15-128" if gpu else "sd15-32,sd15-64,tiny")).split(",")
    dtypes = (args.dtypes or ("fp16,bf16" if gpu else "fp32,bf16")).split(",")
    torch.set_num_threads(args.threads)
    if args.conv:
        print(f"# fp32 convolutions of {','.join(cases)} at batch {args.batch}, CPU, {args.threads} threads, "
              f"median of {args.runs}")
        return conv_table(cases, args.batch, args.runs)
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {args.threads} threads"
    print(f"# U-Net forward, Athena vs diffusers ({name}, torch {torch.__version__}), median of {args.runs} after warm-up")

    peaks = {dt: matmul_flops_per_s(dtype_of(dt), device) for dt in dtypes}
    rows = []
    built: dict[str, tuple] = {}
    for case in cases:
        preset, size = CASES[case]
        if preset not in built:
            built = {preset: build_pair(preset)}  # one full-size pair in memory at a time
        cfg, ref, ours = built[preset]
        for dt in dtypes:
            dtype = dtype_of(dt)
            ref.to(device, dtype)
            ours.to(device, dtype)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(args.batch, 4, size, size, generator=g).to(device, dtype)
            t = torch.full((args.batch,), 500.0, device=device)
            context = torch.randn(args.batch, 77, cfg.context_dim, generator=g).to(device, dtype)
            with torch.no_grad():
                err = (ours(x, t, context).float() - ref(x, t, context).sample.float()).abs().max().item()
                with FlopCounterMode(display=False) as counter:
                    ours(x, t, context)
                flops = counter.get_total_flops()
                t_ours, t_ref = timed_pair(lambda: ours(x, t, context), lambda: ref(x, t, context), runs=args.runs, device=device)
            rows.append([case, dt, f"{t_ours * 1e3:.1f}", f"{t_ref * 1e3:.1f}", f"{t_ours / t_ref:.3f}",
                         f"{flops / t_ours / scale:.1f}", f"{flops / t_ref / scale:.1f}",
                         f"{flops / t_ours / peaks[dt]:.0%}", f"{flops / t_ref / peaks[dt]:.0%}", f"{err:.1e}"])
            print(fmt_table(["case", "dtype", "athena ms", "diffusers ms", "ratio", f"athena {unit}", f"diffusers {unit}",
                             "athena/matmul", "diffusers/matmul", "max|diff|"], rows[-1:]) if len(rows) == 1 else
                  "| " + " | ".join(rows[-1]) + " |", flush=True)
    print()
    print("matmul reference: " + ", ".join(f"{dt} {peaks[dt] / scale:.1f} {unit}" for dt in dtypes))
    print(fmt_table(["case", "dtype", "athena ms", "diffusers ms", "ratio", f"athena {unit}", f"diffusers {unit}",
                     "athena/matmul", "diffusers/matmul", "max|diff|"], rows))


if __name__ == "__main__":
    main()
