"""The training loop: one readable function over the library pieces (STYLE rule 20)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from athena.errors import ConfigError
from athena.training.config import TrainConfig
from athena.training.data import epoch_order, open_dataset
from athena.training.monitor import Monitor
from athena.training.state import (
    EMA,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
    warmup_cosine,
)
from athena.training.adapters import LoRATraining, TextualInversion
from athena.training.data import Dataset
from athena.training.tasks import KLAutoencoder, PixelDDPM, Task, TextToImage, trainable

CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"


def build_task(cfg: TrainConfig, data: Dataset, device: torch.device) -> Task:
    tasks: dict[str, Any] = {"ddpm": PixelDDPM.build, "vae": KLAutoencoder, "t2i": TextToImage, "lora": LoRATraining,
                             "ti": TextualInversion}
    return tasks[cfg.task](cfg, data, device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this torch has no CUDA device; use --device=cpu")
    return torch.device(name)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where the device runs it natively (auto: a CUDA GPU with bf16), fp32 otherwise."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def batches(n: int, batch_size: int, seed: int, start: int) -> Iterator[list[int]]:
    """Index lists of the sample stream from batch `start` on: each epoch a fresh permutation of (seed, epoch)."""
    pos = start * batch_size
    order, epoch = epoch_order(n, seed, pos // n), pos // n
    while True:
        out: list[int] = []
        while len(out) < batch_size:
            if pos // n != epoch:
                epoch = pos // n
                order = epoch_order(n, seed, epoch)
            out.append(order[pos % n])
            pos += 1
        yield out


@contextlib.contextmanager
def ema_weights(task: Task, ema: EMA) -> Iterator[None]:
    """Swap the EMA weights in for sampling or export, and the training weights back afterwards."""
    params = trainable(task)
    saved = [p.detach().clone() for p in params]
    ema.copy_to(params)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, stop_at: int | None = None) -> Path:
    """Train `cfg` in `cfg.out`; returns the exported model (`stop_at` ends early, as a kill would, for tests)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    for stale in out.glob(f".{CHECKPOINT}.tmp*"):  # a save killed before its rename
        stale.unlink()
    if ckpt_path.is_file() and not resume:
        raise ConfigError(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, or give another --out")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # noise, timesteps, caption dropout
    data = open_dataset(cfg.dataset, data_dir=cfg.data_dir, resolution=cfg.resolution, seed=cfg.seed, limit=cfg.limit)
    task = build_task(cfg, data, device)
    params = trainable(task)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.lr, cfg.min_lr))
    ema = EMA(params, cfg.ema_decay)
    step = 0
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, device)
        for name, module in task.modules.items():
            module.load_state_dict(state["models"][name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], g)
        step = int(state["step"])
    cfg.save(out / "config.json")
    if isinstance(task, TextToImage) and cfg.cache_latents:
        task.cache_latents(out / "latents.pt", report=None if quiet else lambda i, n: print(
            f"\rcaching latents {i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True))
    mon = Monitor(out, cfg.steps, step, cfg.batch_size * cfg.grad_accum, tensorboard=cfg.tensorboard, quiet=quiet)
    stream = batches(len(data), cfg.batch_size, cfg.seed, step * cfg.grad_accum)
    for m in task.modules.values():
        m.train()

    while step < cfg.steps and (stop_at is None or step < stop_at):
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            batch = data.batch(next(stream))
            with autocast(cfg, device):
                loss = task.loss(batch, g) / cfg.grad_accum
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        sched.step()
        ema.update(step)
        step += 1

        if step % cfg.log_every == 0 or step == cfg.steps:
            mon.log(step, loss_sum, float(sched.get_last_lr()[0]), grad_norm)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            with ema_weights(task, ema), torch.no_grad():
                for m in task.modules.values():
                    m.eval()
                mon.grid(task.samples(), step)
                for m in task.modules.values():
                    m.train()
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_atomic({"step": step, "models": {k: m.state_dict() for k, m in task.modules.items()},
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "ema": ema.state_dict(),
                         "rng": rng_state(g)}, ckpt_path)

    model_path = out / MODEL
    if step >= cfg.steps:
        started = time.perf_counter()
        with ema_weights(task, ema):
            for m in task.modules.values():
                m.eval()
            figures = task.export(model_path)
        mon.note(f"wrote {model_path} (EMA weights) in {time.perf_counter() - started:.1f}s"
                 + "".join(f"; {k} {v:.4g}" for k, v in figures.items()))
    mon.close()
    return model_path
