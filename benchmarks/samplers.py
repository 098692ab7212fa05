"""Sampler error vs number of model evaluations (NFE), for every Athena sampler and k-diffusion's same-named ones.

    python benchmarks/samplers.py [--out PATH] [--steps 4 8 16 32 64] [--n 4000] [--samplers a b c] [--threads T]

The model is the exact posterior-mean denoiser of a 2-D Gaussian mixture (tests/diffusion/mixture.py), in float64.
N reference points are drawn from the mixture and N start points x_T = randn * 80 (both with fixed seeds); each
sampler runs from x_T over a Karras schedule (sigma 80 down to 0.002, then 0) of each step count, and its NFE is
counted by wrapping the denoiser. The error is a distance between distributions, so it means the same thing for
deterministic and stochastic samplers: the sliced Wasserstein-1 distance between the sampler's outputs and the
reference points, averaged over 64 fixed random unit directions. N exact samples score about as much (finite-sample
noise), so that "sampling floor", the mean over 16 fresh draws from the data, is printed and drawn; converged
samplers scatter around it. Every sampler gets the same sigmas (without ComfyUI's discard-penultimate adjustment),
and k-diffusion the very same sigmas, start points and noise seeds, so the ratio Athena / k-diffusion should be
1.00. Writes a markdown table (printed, and saved as samplers.md) and a log-log PNG chart drawn with Pillow.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests" / "diffusion"))
from common import fmt_table
from kdiffusion import SHARED
from mixture import Mixture, mixture

from athena.diffusion.samplers import SAMPLERS
from athena.diffusion.schedules import karras

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SEED = 1234

Denoise = Callable[..., Tensor]
RunSampler = Callable[[Denoise, Tensor, Tensor], Tensor]  # (denoise, x_T, sigmas) -> samples


@dataclass(frozen=True)
class Curve:
    name: str
    source: str  # "athena" or "k-diffusion"
    points: tuple[tuple[int, float], ...]  # (NFE, error), one per step count


@dataclass
class Counted:
    """A denoiser that counts its calls; accepts k-diffusion's extra keyword arguments."""

    denoise: Callable[[Tensor, Tensor], Tensor]
    calls: int = 0

    def __call__(self, x: Tensor, sigma: Tensor, **_: object) -> Tensor:
        self.calls += 1
        return self.denoise(x, sigma)


# ---------------------------------------------------------------- measurement

@dataclass(frozen=True)
class Problem:
    mix: Mixture
    x_T: Tensor
    reference: Tensor
    directions: Tensor


def unit_directions(n: int, dim: int, seed: int) -> Tensor:
    d = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def sliced_w1(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Mean over directions of the 1-D Wasserstein-1 distance between the projections of two equal-size sets."""
    pa, pb = (a.to(directions.dtype) @ directions.T).sort(dim=0).values, (b @ directions.T).sort(dim=0).values
    return float((pa - pb).abs().mean())


def sampling_floor(problem: Problem, n: int, draws: int = 16) -> float:
    """The mean error of fresh draws of n points from the data itself: what an exact sampler scores on average."""
    errors = [sliced_w1(problem.mix.sample(n, torch.Generator().manual_seed(100 + i)), problem.reference,
                        problem.directions) for i in range(draws)]
    return sum(errors) / draws


def athena_sampler(name: str) -> RunSampler:
    def run(denoise: Denoise, x: Tensor, sigmas: Tensor) -> Tensor:
        return SAMPLERS[name](denoise, x, sigmas, generator=torch.Generator().manual_seed(SEED))
    return run


def kdiffusion_sampler(k: types.ModuleType, name: str) -> RunSampler:
    """k-diffusion's sampler with the noise ours draws (the parity test's convention, `kdiffusion.run_reference`)."""
    def run(denoise: Denoise, x: Tensor, sigmas: Tensor) -> Tensor:
        from kdiffusion import run_reference

        with warnings.catch_warnings():  # torch.tensor(tensor) copies, Brownian-tree rounding at its ends
            warnings.simplefilter("ignore", UserWarning)
            return run_reference(k, name, denoise, x, sigmas, SEED)
    return run


def load_kdiffusion() -> types.ModuleType | None:
    if importlib.util.find_spec("k_diffusion") is None:
        print("k-diffusion is not installed: no k-diffusion curves")
        return None
    try:
        from kdiffusion import load_sampling
        return load_sampling()
    except BaseException as e:  # pytest.skip raises an exception outside Exception's hierarchy
        if isinstance(e, KeyboardInterrupt):
            raise
        print(f"k-diffusion could not be loaded ({type(e).__name__}: {e}): no k-diffusion curves")
        return None


def measure(run: RunSampler, problem: Problem, steps: Sequence[int]) -> tuple[tuple[int, float], ...]:
    points = []
    for n in steps:
        sigmas = karras(n, SIGMA_MIN, SIGMA_MAX).double()
        counted = Counted(problem.mix.denoise)
        out = run(counted, problem.x_T.clone(), sigmas)
        points.append((counted.calls, sliced_w1(out, problem.reference, problem.directions)))
    return tuple(points)


def run_all(label: str, runners: dict[str, RunSampler], problem: Problem, steps: Sequence[int]) -> list[Curve]:
    curves = []
    for name, run in runners.items():
        t0 = time.perf_counter()
        try:
            points = measure(run, problem, steps)
        except Exception as e:  # noqa: BLE001 - one broken sampler must not stop the benchmark
            print(f"  {label:<11} {name:<22} SKIPPED: {type(e).__name__}: {e}")
            continue
        curves.append(Curve(name, label, points))
        nfe = ", ".join(str(p[0]) for p in points)
        print(f"  {label:<11} {name:<22} NFE {nfe:<20} error {points[0][1]:.3g} -> {points[-1][1]:.3g}"
              f"  ({time.perf_counter() - t0:.1f} s)")
    return curves


# ---------------------------------------------------------------- table

def table(curves: list[Curve], steps: Sequence[int]) -> str:
    """One row per sampler, each k-diffusion row under its Athena one; cells are `NFE / error`."""
    kdiff = {c.name: c for c in curves if c.source == "k-diffusion"}
    headers = ["sampler"] + [f"{n} steps: NFE / W1" for n in steps] + [f"athena / k-diff @{steps[-1]}"]
    rows = []
    for c in (c for c in curves if c.source == "athena"):
        k = kdiff.get(c.name)
        ratio = f"{c.points[-1][1] / k.points[-1][1]:.3f}" if k and k.points[-1][1] > 0 else ""
        rows.append([c.name] + [f"{nfe} / {err:.4g}" for nfe, err in c.points] + [ratio])
        if k:
            rows.append([f"{c.name} (k-diffusion)"] + [f"{nfe} / {err:.4g}" for nfe, err in k.points] + [""])
    return fmt_table(headers, rows)


# ---------------------------------------------------------------- chart (Pillow)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#000080", "#7f7f7f", "#008080")
MARKERS = ("circle", "square", "triangle")
W, H, LEFT, TOP, BOTTOM, PANEL = 1300, 820, 80, 60, 70, 280
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def log_range(values: list[float], pad: float = 0.06) -> tuple[float, float]:
    """log10 bounds around the values, padded by a share of their span."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    span = max(hi - lo, 1.0)
    return lo - pad * span, hi + pad * span


def ticks(lo: float, hi: float) -> list[tuple[float, int]]:
    """(value, mantissa) of the 1..9 x 10^k grid lines inside [10^lo, 10^hi]."""
    return [(m * 10.0 ** k, m) for k in range(math.floor(lo), math.ceil(hi) + 1) for m in range(1, 10)
            if lo <= math.log10(m * 10.0 ** k) <= hi]


def dashed(draw: ImageDraw.ImageDraw, p: tuple[float, float], q: tuple[float, float], fill: str, width: int,
           dash: float = 7, gap: float = 5) -> None:
    length = math.dist(p, q)
    at = lambda f: (p[0] + (q[0] - p[0]) * f, p[1] + (q[1] - p[1]) * f)
    s = 0.0
    while s < length:
        draw.line([at(s / length), at(min(s + dash, length) / length)], fill=fill, width=width)
        s += dash + gap


def marker(draw: ImageDraw.ImageDraw, xy: tuple[float, float], shape: str, colour: str, hollow: bool) -> None:
    r = 6 if hollow else 4
    x, y = xy
    box = [x - r, y - r, x + r, y + r]
    style = {"outline": colour, "width": 2, "fill": None} if hollow else {"fill": colour}
    if shape == "circle":
        draw.ellipse(box, **style)
    elif shape == "square":
        draw.rectangle(box, **style)
    else:
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], **style)


def polyline(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], style: tuple[str, str], hollow: bool) -> None:
    colour, shape = style
    for p, q in itertools.pairwise(pts):
        if hollow:
            dashed(draw, p, q, colour, 2)
        else:
            draw.line([p, q], fill=colour, width=2)
    for p in pts:
        marker(draw, p, shape, colour, hollow)


def plot(curves: list[Curve], floor: float, path: Path, title: str) -> None:
    """Log-log chart of error vs NFE; Athena solid with filled markers, k-diffusion dashed with hollow ones."""
    points = [(n, e) for c in curves for n, e in c.points if math.isfinite(e) and e > 0]
    (x0, x1), (y0, y1) = log_range([n for n, _ in points]), log_range([e for _, e in points] + [floor])
    right, bottom = W - PANEL, H - BOTTOM
    px = lambda n: LEFT + (math.log10(n) - x0) / (x1 - x0) * (right - LEFT)
    py = lambda e: bottom - (math.log10(e) - y0) / (y1 - y0) * (bottom - TOP)
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    small, normal = font(13), font(15)
    for v, m in ticks(x0, x1):  # NFE: grid at 1..9 x 10^k, labels at 1, 2 and 5 x 10^k
        draw.line([(px(v), TOP), (px(v), bottom)], fill="#c8c8c8" if m == 1 else "#ececec")
        if m in (1, 2, 5):
            draw.text((px(v), bottom + 8), f"{v:g}", fill="black" if m == 1 else "#606060", font=small, anchor="mt")
    for v, m in ticks(y0, y1):  # error: grid at 1..9 x 10^k, labels at 10^k
        draw.line([(LEFT, py(v)), (right, py(v))], fill="#c8c8c8" if m == 1 else "#ececec")
        if m == 1:
            exponent = str(round(math.log10(v))).translate(SUPERSCRIPT)
            draw.text((LEFT - 8, py(v)), f"10{exponent}", fill="black", font=small, anchor="rm")
    draw.rectangle([LEFT, TOP, right, bottom], outline="black")
    draw.text(((LEFT + right) / 2, H - 22), "NFE (model evaluations)", fill="black", font=normal, anchor="mm")
    draw.text((LEFT, TOP - 8), "sliced W1 to the data", fill="black", font=normal, anchor="ls")
    draw.text((W / 2, 18), title, fill="black", font=font(17), anchor="mt")
    dashed(draw, (LEFT, py(floor)), (right, py(floor)), "black", 1, dash=2, gap=4)

    athena = [c.name for c in curves if c.source == "athena"]
    styles = {name: (PALETTE[i % len(PALETTE)], MARKERS[i // len(PALETTE) % len(MARKERS)])
              for i, name in enumerate(athena)}
    for c in sorted(curves, key=lambda c: c.source == "k-diffusion"):  # k-diffusion drawn on top
        pts = [(px(n), py(e)) for n, e in c.points if math.isfinite(e) and e > 0]
        polyline(draw, pts, styles.get(c.name, ("black", "circle")), c.source == "k-diffusion")
    legend(draw, styles, {c.name for c in curves if c.source == "k-diffusion"}, small)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def legend(draw: ImageDraw.ImageDraw, styles: dict[str, tuple[str, str]], kdiff: set[str], fnt: object) -> None:
    x, y, row = W - PANEL + 20, TOP, 20
    keys = [("Athena", ("black", "circle"), False), ("k-diffusion, same colour (+k)", ("black", "circle"), True)]
    for text, style, hollow in keys:
        polyline(draw, [(x, y + 7), (x + 34, y + 7)], style, hollow)
        draw.text((x + 44, y), text, fill="black", font=fnt)
        y += row
    dashed(draw, (x, y + 7), (x + 34, y + 7), "black", 1, dash=2, gap=4)
    draw.text((x + 44, y), "floor: data vs data", fill="black", font=fnt)
    y += row + 8
    for name, style in styles.items():
        polyline(draw, [(x, y + 7), (x + 34, y + 7)], style, False)
        draw.text((x + 44, y), name + ("  (+k)" if name in kdiff else ""), fill="black", font=fnt)
        y += row


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "samplers.png", help="PNG path; samplers.md beside it")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--n", type=int, default=4000, help="number of samples (reference and generated)")
    ap.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=list(SAMPLERS), metavar="NAME")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as is; 1 is fastest here)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    mix = mixture(torch.float64)
    problem = Problem(mix, torch.randn(args.n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                      * SIGMA_MAX, mix.sample(args.n, torch.Generator().manual_seed(0)), unit_directions(64, 2, 3))
    floor = sampling_floor(problem, args.n)
    print(f"# Sampler error vs NFE: sliced W1 to {args.n} data points, Karras sigmas {SIGMA_MAX} -> {SIGMA_MIN} -> 0, "
          f"{torch.get_num_threads()} threads")
    curves = run_all("athena", {name: athena_sampler(name) for name in args.samplers}, problem, args.steps)
    k = load_kdiffusion()
    if k is not None:
        names = [name for name in SHARED if name in args.samplers]
        curves += run_all("k-diffusion", {name: kdiffusion_sampler(k, name) for name in names}, problem, args.steps)
    if not curves:
        sys.exit("no sampler ran")
    text = (f"Sliced W1 between {args.n} samples and {args.n} data points (64 directions). Sampling floor (mean W1 "
            f"of 16 fresh draws of {args.n} points from the data itself; one draw scatters about ±50%): {floor:.4g}"
            f"\n\n{table(curves, args.steps)}")
    print("\n" + text)
    plot(curves, floor, args.out, f"Sampler error vs NFE (2-D Gaussian mixture, exact denoiser, N = {args.n})")
    md = args.out.with_name("samplers.md")
    md.write_text(f"# Sampler error vs NFE\n\n{text}\n\n![error vs NFE]({args.out.name})\n")
    print(f"\nwrote {args.out} and {md} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
