"""txt2img end to end, Athena vs diffusers' StableDiffusionPipeline, on the same random-weight SD1.x file.

    python benchmarks/txt2img.py                          # CPU: tiny and sd15 at 256x256, 10 Euler steps, fp32 + bf16
    python benchmarks/txt2img.py --device cuda --size 512 --steps 20 --dtypes fp16

Both pipelines get the same prompt, seed, cfg and sigmas (diffusers' Euler given Athena's "normal" schedule). Time:
median of --runs interleaved runs after a warm-up, in this one process, including prompt encoding and VAE decode.
Peak RSS: each pipeline loads the file and generates once in a fresh child process (peak RSS is per process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import device_of, fmt_table, timed_pair  # noqa: E402

from athena.checkpoints.build import random_checkpoint  # noqa: E402
from athena.checkpoints.convert import to_diffusers  # noqa: E402
from athena.checkpoints.load import dtype_of, open_checkpoint  # noqa: E402
from athena.diffusion.denoisers import discrete_schedule  # noqa: E402
from athena.diffusion.schedules import sigmas_for  # noqa: E402
from athena.models.unet import UNET_PRESETS  # noqa: E402
from athena.models.vae import VAE_PRESETS  # noqa: E402
from athena.pipelines.generate import GenerateRequest, generate_pixels  # noqa: E402
from athena.pipelines.pipeline import load  # noqa: E402

# tiny: the test U-Net with an 8x VAE (athena-tiny's: 32 channels, 4 levels), so 256 px is a 32 x 32 latent as in sd15
CASES = {"tiny": (UNET_PRESETS["tiny_sd1"], replace(VAE_PRESETS["sd"], ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1), (32, 2)),
         "sd15": (UNET_PRESETS["sd15"], VAE_PRESETS["sd"], (768, 12))}
PROMPT, NEGATIVE, SEED, CFG = "a lighthouse on a cliff at dusk, oil painting", "blurry", 7, 7.0


def build(case: str, folder: Path) -> tuple[Path, Path]:
    """The random single file and its diffusers folder (with a CLIP tokenizer folder)."""
    from tests.text.corpus import write_hf_files

    from athena.text import clip_tokenizer

    unet, vae, clip = CASES[case]
    single = random_checkpoint(folder / f"{case}.safetensors", "sd1", unet, vae,
                               {"clip_l": clip}, dtype=torch.float32)
    to_diffusers(open_checkpoint(single), folder / case)
    write_hf_files(clip_tokenizer(), folder / case / "tokenizer")
    return single, folder / case


def diffusers_pipe(folder: Path, device: str, dtype: torch.dtype):
    import diffusers
    import transformers

    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             timestep_spacing="leading")
    pipe = diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"), scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def runners(single: Path, folder: Path, device: str, dtype: torch.dtype, size: int, steps: int):
    ours = load(single, device=device, dtype=dtype)
    req = GenerateRequest(PROMPT, negative=NEGATIVE, width=size, height=size, steps=steps, cfg=CFG, seed=SEED)
    sigmas = sigmas_for("normal", discrete_schedule(), steps).tolist()
    ref = diffusers_pipe(folder, device, dtype)

    def run_ours():
        return generate_pixels(ours, req)

    def run_ref():
        return ref(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, guidance_scale=CFG, sigmas=sigmas,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    return run_ours, run_ref


def child(args: argparse.Namespace) -> None:
    """Load and generate once with one implementation; print the peak RSS."""
    dtype = dtype_of(args.dtypes)
    if args.child == "athena":
        ours = load(Path(args.single), device=args.device, dtype=dtype)
        generate_pixels(ours, GenerateRequest(PROMPT, negative=NEGATIVE, width=args.size, height=args.size,
                                              steps=args.steps, cfg=CFG, seed=SEED))
    else:
        ref = diffusers_pipe(Path(args.folder), args.device, dtype)
        ref(PROMPT, negative_prompt=NEGATIVE, height=args.size, width=args.size, guidance_scale=CFG,
            sigmas=sigmas_for("normal", discrete_schedule(), args.steps).tolist(),
            generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt")
    # VmHWM, not getrusage: ru_maxrss survives fork + exec, so a child would report its parent's peak.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss": int(hwm.split()[1]) * 1024}))


def peak_rss(which: str, single: Path, folder: Path, args: argparse.Namespace, dtype: str) -> int:
    cmd = [sys.executable, __file__, "--child", which, "--single", str(single), "--folder", str(folder),
           "--device", args.device, "--dtypes", dtype, "--size", str(args.size), "--steps", str(args.steps),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return int(json.loads(out)["peak_rss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="tiny,sd15")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32, fp16, bf16")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", choices=("athena", "diffusers"), help=argparse.SUPPRESS)
    ap.add_argument("--single", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    gpu = device_of(args.device).type == "cuda"
    dtypes = (args.dtypes or ("fp16" if gpu else "fp32,bf16")).split(",")
    print(f"# txt2img {args.size}x{args.size}, {args.steps} Euler steps, cfg {CFG}, Athena vs diffusers "
          f"({args.device}, {args.threads} threads, torch {torch.__version__}); time = median of {args.runs} after warm-up")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            single, folder = build(case, Path(tmp))
            for dt in dtypes:
                a, b = runners(single, folder, args.device, dtype_of(dt), args.size, args.steps)
                t_ours, t_ref = timed_pair(a, b, runs=args.runs, device=torch.device(args.device))
                rss_ours, rss_ref = (peak_rss(w, single, folder, args, dt) for w in ("athena", "diffusers"))
                rows.append([case, dt, f"{t_ours:.2f}", f"{t_ref:.2f}", f"{t_ours / t_ref:.3f}",
                             f"{rss_ours / 2**20:.0f}", f"{rss_ref / 2**20:.0f}", f"{rss_ours / rss_ref:.3f}"])
                print(fmt_table(["case", "dtype", "athena s", "diffusers s", "time ratio", "athena MiB", "diffusers MiB",
                                 "RSS ratio"], rows[-1:]), flush=True)
    print(fmt_table(["case", "dtype", "athena s", "diffusers s", "time ratio", "athena MiB", "diffusers MiB",
                     "RSS ratio"], rows))


if __name__ == "__main__":
    main()
