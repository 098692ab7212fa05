"""Training throughput (samples/s) of one U-Net config: Athena's step vs diffusers' step, in one run.

    python benchmarks/train_step.py                       # CPU, fp32: the athena-tiny U-Net and the tiny preset
    python benchmarks/train_step.py --device cuda --precision bf16 --cases athena-tiny,sd15-32

A step is what each code base's own text-to-image trainer does per batch: draw timesteps and noise, noise the
latents, predict, eps MSE, backward, clip the gradient norm, AdamW. Athena's goes through
`ModelSampling.loss` (sigma space); diffusers' through `DDPMScheduler.add_noise` (its train_text_to_image.py).
Both models start from the same weights (diffusers' are loaded into Athena's through the key map). Throughput is
the median of --runs interleaved timings after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import device_of, fmt_table, timed_pair  # noqa: E402

from athena.checkpoints.diffusers_config import unet_to_diffusers  # noqa: E402
from athena.checkpoints.keymaps import sd_unet  # noqa: E402
from athena.diffusion.denoisers import discrete_sampling  # noqa: E402
from athena.models.unet import SD15, TINY_SD1, UNet, UNetConfig  # noqa: E402

ATHENA_TINY = replace(TINY_SD1, model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                      context_dim=64)
# name -> (config, latent size, batch)
CASES: dict[str, tuple[UNetConfig, int, int]] = {
    "athena-tiny": (ATHENA_TINY, 8, 64),
    "tiny": (TINY_SD1, 32, 8),
    "sd15-32": (SD15, 32, 2),
}


def models(cfg: UNetConfig, device: str):
    import diffusers

    d = unet_to_diffusers(cfg)
    ref = diffusers.UNet2DConditionModel(**{k: v for k, v in d.items() if not k.startswith("_")}).to(device)
    table = sd_unet.diffusers_to_ldm(cfg)
    ours = UNet(cfg, device=device)
    sd = ref.state_dict()
    ours.load_state_dict({ldm: sd[dk].reshape(ours.state_dict()[ldm].shape) for dk, ldm in table.items()})
    return ours.train(), ref.train()


def steps(cfg: UNetConfig, size: int, batch: int, device: str, precision: str):
    import diffusers

    ours, ref = models(cfg, device)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, cfg.in_channels, size, size, generator=g).to(device)
    ctx = torch.randn(batch, 77, cfg.context_dim, generator=g).to(device)
    ms = discrete_sampling("eps")
    sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    dev = torch.device(device)
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step_ours() -> None:
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g).to(device)
        with amp():
            loss = ms.loss(lambda x, ts, c: ours(x, ts, c), x0, noise, ms.sigmas[t].to(device), ctx).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)

    def step_ref() -> None:
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        with amp():
            pred = ref(sched.add_noise(x0, noise, t), t, ctx).sample
            loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
    return step_ours, step_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--cases", default="athena-tiny,tiny")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    device = device_of(args.device)
    torch.set_num_threads(args.threads)
    print(f"# training step, Athena vs diffusers ({args.device}, {args.precision}, {args.threads} threads, "
          f"torch {torch.__version__}); median of {args.runs} interleaved steps after warm-up")
    rows = []
    for name in args.cases.split(","):
        cfg, size, batch = CASES[name]
        a, b = steps(cfg, size, batch, args.device, args.precision)
        t_a, t_b = timed_pair(a, b, runs=args.runs, warmup=2, device=device)
        rows.append([name, f"{batch}x{cfg.in_channels}x{size}x{size}", f"{batch / t_a:.1f}", f"{batch / t_b:.1f}",
                     f"{t_b / t_a:.3f}"])
        print(fmt_table(["case", "batch", "athena samples/s", "diffusers samples/s", "throughput ratio"], rows[-1:]),
              flush=True)
    print(fmt_table(["case", "batch", "athena samples/s", "diffusers samples/s", "throughput ratio"], rows))


if __name__ == "__main__":
    main()
