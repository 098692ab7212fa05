import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import athena
from athena.checkpoints.load import open_checkpoint
from athena.cli import main
from athena.errors import ConfigError
from athena.training.config import TrainConfig
from athena.training.data import open_dataset
from athena.training.loop import train
from athena.training.state import load_checkpoint, save_atomic
from athena.training.loop import build_task
from athena.training.tasks import PixelDDPM

TINY = dict(model_channels=32, channel_mult=(1, 2), attention=(0, 1), num_res_blocks=1, batch_size=8, lr=2e-3,
            warmup_steps=2, log_every=1, sample_every=1000, save_every=4, tensorboard=False)


def ddpm(tmp_path: Path, fashion_dir: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"task": "ddpm", "dataset": "fashion-mnist", "data_dir": str(fashion_dir), "limit": 32,
                          "out": str(tmp_path / "run"), "steps": 8, **TINY, **kw})


def losses(out: Path) -> list[float]:
    with open(out / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def eval_loss(cfg: TrainConfig, state: dict | None) -> float:
    """The loss of the run's model on fixed items, noise and timesteps."""
    torch.manual_seed(cfg.seed)
    data = open_dataset(cfg.dataset, data_dir=cfg.data_dir, limit=cfg.limit)
    task = build_task(cfg, data, torch.device("cpu"))
    if state is not None:
        for name, m in task.modules.items():
            m.load_state_dict(state["models"][name])
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(task.loss(data.batch(range(32)), g)) for _ in range(8)) / 8


def test_training_lowers_the_loss(tmp_path, fashion_dir):
    cfg = ddpm(tmp_path, fashion_dir, steps=40, save_every=40, ema_decay=0.0)
    train(cfg, quiet=True)
    before, after = eval_loss(cfg, None), eval_loss(cfg, load_checkpoint(tmp_path / "run" / "checkpoint.pt"))
    assert after < 0.6 * before, (before, after)
    assert (tmp_path / "run" / "samples" / "step_0000040.png").is_file()
    assert TrainConfig.load(tmp_path / "run" / "config.json") == cfg
    model = PixelDDPM.from_file(tmp_path / "run" / "model.safetensors")
    x = model.generate(torch.tensor([3, 7]), 2, seed=0, steps=3)
    assert x.shape == (2, 3, 32, 32) and x.isfinite().all()


def test_resume_is_exact(tmp_path, fashion_dir):
    straight = ddpm(tmp_path / "a", fashion_dir, min_snr_gamma=5.0, grad_accum=2)
    train(straight, quiet=True)
    interrupted = replace(straight, out=str(tmp_path / "b" / "run"))
    train(interrupted, quiet=True, stop_at=4)  # as if killed right after the step-4 checkpoint
    assert len(losses(tmp_path / "b" / "run")) == 4
    train(interrupted, quiet=True, resume=True)
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")
    a, b = (load_checkpoint(tmp_path / d / "run" / "checkpoint.pt") for d in ("a", "b"))
    for k, v in a["models"]["unet"].items():
        assert torch.equal(v, b["models"]["unet"][k]), k
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))


def test_an_existing_run_is_not_overwritten(tmp_path, fashion_dir):
    cfg = ddpm(tmp_path, fashion_dir, steps=2)
    train(cfg, quiet=True)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, quiet=True)


KILLED_SAVE = """
import os, sys, time, torch
from pathlib import Path
from athena.training.state import save_atomic
def hang(fd):  # the new file is written but not yet committed when the kill comes
    print("writing", flush=True)
    time.sleep(600)
os.fsync = hang
save_atomic({"step": 2, "x": torch.randn(1000, 1000)}, Path(sys.argv[1]))
"""


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1, "x": torch.ones(3)}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".checkpoint.pt.tmp*")), "the kill should come mid-save"
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["x"], torch.ones(3))


def test_a_torn_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1, "x": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(athena.errors.CheckpointError, match="not a readable training checkpoint"):
        load_checkpoint(path)


def test_a_vae_run_can_start_from_a_saved_vae(tmp_path, fashion_dir):
    """--vae on the vae task is a warm restart: the saved file's architecture and weights, not a fresh model."""
    base = dict(task="vae", dataset="fashion-colors", data_dir=str(fashion_dir), limit=16, batch_size=4,
                tensorboard=False, sample_every=1000, log_every=1, vae_ch=32, vae_ch_mult=(1, 2))
    first = train(TrainConfig(**base, out=str(tmp_path / "a"), steps=3, lr=1e-3), quiet=True)
    # a restart that cannot move the weights (lr 1e-12) must export the same autoencoder; vae_ch is the file's, not 64's
    again = train(TrainConfig(**{**base, "vae_ch": 64}, vae=str(first), out=str(tmp_path / "b"), steps=1, lr=1e-12,
                              min_lr=1e-12), quiet=True)
    a, b = (open_checkpoint(p).load_vae() for p in (first, again))
    assert b.cfg == a.cfg and b.cfg.ch == 32
    x = open_dataset("fashion-colors", data_dir=str(fashion_dir), limit=4).batch(range(4)).images
    with torch.no_grad():
        ra, rb = (v.decode(v.encode(x).mode()) for v in (a, b))
    torch.testing.assert_close(rb, ra, atol=1e-4, rtol=0)  # the latent scale is refolded; decoding is unchanged
    fresh = train(TrainConfig(**base, out=str(tmp_path / "c"), steps=1, lr=1e-12, min_lr=1e-12), quiet=True)
    with torch.no_grad():
        rc = open_checkpoint(fresh).load_vae().decode(a.encode(x).mode())
    assert not torch.allclose(rc, ra, atol=1e-2)  # so the match above is the warm start, not a coincidence


def test_cli_overrides_and_the_saved_model_generates(tmp_path, fashion_dir, capsys):
    common = ["--dataset=fashion-colors", f"--data-dir={fashion_dir}", "--limit=16", "--batch-size=4",
              "--tensorboard=false", "--quiet", "--sample-every=2"]
    assert main(["train", "--task=vae", f"--out={tmp_path / 'vae'}", "--steps=2", "--vae-ch-mult=1,1,2,2", *common]) == 0
    vae = tmp_path / "vae" / "model.safetensors"
    assert capsys.readouterr().out.strip() == str(vae)
    assert main(["train", "--task=t2i", f"--vae={vae}", f"--out={tmp_path / 't2i'}", "--steps=2", "--lr=1e-4",
                 "--model-channels=32", "--text-width=64", "--text-layers=1", *common]) == 0
    saved = TrainConfig.load(tmp_path / "t2i" / "config.json")
    assert (saved.lr, saved.text_width, saved.vae_ch_mult) == (1e-4, 64, (1, 1, 2, 2))
    model = tmp_path / "t2i" / "model.safetensors"
    pipe = athena.load(model)
    assert pipe.family.name == "sd1" and pipe.resolution == 64 and pipe.unet.dtype == torch.float32
    images = athena.generate(pipe, "a red sneaker on a blue background", steps=2, seed=1)
    assert images[0].size == (64, 64)
    assert main(["train", "--task=t2i", f"--out={tmp_path / 'novae'}", *common]) == 2  # one-line error, no traceback
    assert "pass --vae" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task=nonsense"])


def test_progress_eta_follows_the_recent_rate(tmp_path):
    """A slow first interval (a first step, a sample grid) must not hold the ETA up for the rest of the run."""
    import io

    from athena.training.monitor import Monitor

    now = [0.0]
    stream = io.StringIO()
    mon = Monitor(tmp_path, total=1000, start=0, batch=4, tensorboard=False, stream=stream, clock=lambda: now[0])
    now[0] = 100.0
    mon.log(10, 1.0, 1e-3, 1.0)  # 0.1 it/s
    for step in range(20, 210, 10):
        now[0] += 1.0  # 10 it/s from here on
        mon.log(step, 1.0, 1e-3, 1.0)
    last = stream.getvalue().rsplit("\r", 1)[-1]
    h, m, s = (int(v) for v in last.split("ETA")[1].split()[0].split(":"))
    assert 75 <= h * 3600 + m * 60 + s <= 90, last  # 800 steps at ~10 it/s; the whole-run mean would say ~700 s
    with open(tmp_path / "log.csv") as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f)]
    assert rates[0] == pytest.approx(0.4) and rates[-1] == pytest.approx(40.0)  # per interval, times the batch
