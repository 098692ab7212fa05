"""The bundled model's quality bar and speed, judged by analysing its images (no human in the loop).

    python benchmarks/athena_tiny.py                  # athena-tiny, 200 captions, default settings
    python benchmarks/athena_tiny.py --model runs/t2i/model.safetensors --n 50
    python benchmarks/athena_tiny.py --vae-only --model runs/vae/model.safetensors   # a VAE's ceiling, before t2i

For each of --n random captions `a {fg} {item} on a {bg} background` (one seed each, default sampler, steps and
cfg), the script reads back from the image:
- the background colour: the palette colour nearest to the median of the 2-pixel border;
- the item colour: the palette colour P whose segment bg + c * (P - bg), c in [0, 1] (how fashion-colors paints an
  item) fits the pixels that differ from the background best, in least squares;
- the item class: the project's Fashion-MNIST classifier on the item's coverage map (its mask), scaled back to
  the 28x28 frame.
The same analysis on real fashion-colors test images is printed as the analyser's own ceiling, and on those images
encoded and decoded by the model's VAE as the ceiling its autoencoder leaves the U-Net. Time per
image (prompt to pixels, model loaded) is compared in the same run with diffusers' StableDiffusionPipeline running
the same file (converted to a diffusers folder, same sigmas).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table, timed_pair  # noqa: E402

from athena.checkpoints.convert import to_diffusers  # noqa: E402
from athena.checkpoints.load import open_checkpoint  # noqa: E402
from athena.diffusion.denoisers import discrete_schedule  # noqa: E402
from athena.diffusion.schedules import sigmas_for  # noqa: E402
from athena.media.images import to_images  # noqa: E402
from athena.models.vae import AutoencoderKL  # noqa: E402
from athena.pipelines.generate import GenerateRequest, generate_pixels  # noqa: E402
from athena.pipelines.pipeline import BUNDLED, bundled_model, load  # noqa: E402
from athena.training.classifier import FashionClassifier, accuracy, load_or_train  # noqa: E402
from athena.training.data import COLOR_NAMES, COLORS, ITEMS, FashionColors, caption  # noqa: E402
from athena.training.monitor import image_grid  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
PALETTE = np.array(list(COLORS.values()), dtype=np.float64)
BARS = {"background colour": 0.95, "item colour": 0.85, "item class": 0.70}


def nearest(rgb: np.ndarray) -> int:
    return int(((PALETTE - rgb) ** 2).sum(1).argmin())


def item_colour(img: np.ndarray, bg: np.ndarray, bg_id: int) -> int:
    """The palette colour P (not the background's) that best explains the item: fashion-colors paints each pixel
    as bg + c * (P - bg) with coverage c in [0, 1], so every pixel is fitted on that segment for every P and the
    colour with the least squared residual over the pixels that differ from the background wins."""
    d = (img - bg).reshape(-1, 3)
    far = np.linalg.norm(d, axis=1)
    d = d[far >= max(30.0, 0.3 * far.max())]
    best, best_res = 0, np.inf
    for k, colour in enumerate(PALETTE):
        if k == bg_id:
            continue
        v = colour - bg
        c = (d @ v / max(float(v @ v), 1e-6)).clip(0, 1)
        res = float(((d - c[:, None] * v) ** 2).sum())
        if res < best_res:
            best, best_res = k, res
    return best


def analyse(img: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(background colour id, item colour id, 28x28 coverage in [0, 1]) of a 64x64 RGB image (0..255)."""
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3),
                             img[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    bg_id = nearest(bg)
    fg_id = item_colour(img, bg, bg_id)
    direction = PALETTE[fg_id] - bg
    cover = ((img - bg) @ direction / max(float(direction @ direction), 1e-6)).clip(0, 1)
    # the item was drawn 48 px wide for a 28 px frame: scale by 28/48 and take the central 28x28
    side = round(img.shape[0] * 28 / 48)
    small = np.asarray(Image.fromarray((cover * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR))
    o = (side - 28) // 2
    return bg_id, fg_id, small[o:o + 28, o:o + 28].astype(np.float32) / 255


@torch.no_grad()
def score(images: list[np.ndarray], fg: list[int], bg: list[int], items: list[int], clf: FashionClassifier) -> dict[str, float]:
    found = [analyse(im) for im in images]
    masks = torch.from_numpy(np.stack([f[2] for f in found]))[:, None]
    classes = clf(masks).argmax(1).tolist()
    return {"background colour": float(np.mean([f[0] == b for f, b in zip(found, bg)])),
            "item colour": float(np.mean([f[1] == c for f, c in zip(found, fg)])),
            "item class": float(np.mean([c == i for c, i in zip(classes, items)]))}


def random_captions(n: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, len(COLORS), n)
    bg = (fg + 1 + rng.integers(0, len(COLORS) - 1, n)) % len(COLORS)
    return fg.tolist(), bg.tolist(), rng.integers(0, len(ITEMS), n).tolist()


def diffusers_runner(model: Path, folder: Path, req: GenerateRequest, size: int):
    from tests.text.corpus import write_hf_files
    from txt2img import diffusers_pipe

    from athena.text import clip_tokenizer

    to_diffusers(open_checkpoint(model), folder)
    write_hf_files(clip_tokenizer(), folder / "tokenizer")
    ref = diffusers_pipe(folder, "cpu", torch.float32)
    sigmas = sigmas_for(req.scheduler, discrete_schedule(), req.steps).tolist()
    return lambda: ref(req.prompt, negative_prompt=req.negative, height=size, width=size, guidance_scale=req.cfg,
                       sigmas=sigmas, generator=torch.Generator("cpu").manual_seed(req.seed), output_type="pt").images


def vae_ceiling(vae: AutoencoderKL, real: FashionColors, images: torch.Tensor, clf: FashionClassifier) -> dict[str, float]:
    """The analysis on real test images sent through the autoencoder and back: the best a U-Net could reach."""
    n = len(images)
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(images[i:i + 50].float()).mode()).clamp(-1, 1) for i in range(0, n, 50)])
    return score([np.asarray(im, dtype=np.float64) for im in to_images(rec)], real.fg[:n].tolist(), real.bg[:n].tolist(),
                 real.labels[:n].tolist(), clf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=BUNDLED)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="seed of the caption draw")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per implementation")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--vae-only", action="store_true",
                    help="--model is an autoencoder (`athena train --task=vae`): print only its ceiling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bundled_model() if args.model == BUNDLED else Path(args.model)
    clf = load_or_train(OUT / "fashion_classifier.safetensors")
    print(f"# classifier: {accuracy(clf):.1%} on the Fashion-MNIST test set")

    real = FashionColors("test")
    b = real.batch(range(args.n))
    imgs = [np.asarray(im, dtype=np.float64) for im in to_images(b.images)]
    real_scores = score(imgs, real.fg[: args.n].tolist(), real.bg[: args.n].tolist(), real.labels[: args.n].tolist(), clf)

    if args.vae_only:
        vae_scores = vae_ceiling(open_checkpoint(model).load_vae(torch.device("cpu")), real, b.images, clf)
        print(fmt_table(["measure", "real test images", "real, through the VAE"],
                        [[k, f"{real_scores[k]:.1%}", f"{vae_scores[k]:.1%}"] for k in BARS]))
        return
    pipe = load(model)
    vae_scores = vae_ceiling(pipe.vae, real, b.images, clf)
    fg, bg, items = random_captions(args.n, args.seed)
    captions = [caption(COLOR_NAMES[f], ITEMS[i], COLOR_NAMES[c]) for f, i, c in zip(fg, items, bg)]
    made = []
    for i, text in enumerate(captions):
        made.append(generate_pixels(pipe, GenerateRequest(text, seed=i))[0])
        print(f"\rgenerating {i + 1}/{args.n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    gen_scores = score([np.asarray(im, dtype=np.float64) for im in to_images(torch.stack(made))], fg, bg, items, clf)
    OUT.mkdir(parents=True, exist_ok=True)
    image_grid(torch.stack(made[:64])).save(OUT / "athena_tiny_samples.png")
    (OUT / "athena_tiny_captions.txt").write_text("\n".join(captions[:64]) + "\n")

    rows = [[k, f"{gen_scores[k]:.1%}", f">= {bar:.0%}", "yes" if gen_scores[k] >= bar else "NO", f"{real_scores[k]:.1%}",
             f"{vae_scores[k]:.1%}"] for k, bar in BARS.items()]

    req = GenerateRequest(captions[0], seed=0)
    size = pipe.resolution or 64
    with tempfile.TemporaryDirectory() as tmp:
        ref = diffusers_runner(model, Path(tmp) / "diffusers", req, size)
        t_ours, t_ref = timed_pair(lambda: generate_pixels(pipe, req), ref, runs=args.runs)
    rows.append(["seconds per image (CPU)", f"{t_ours:.3f}", "<= 1", "yes" if t_ours <= 1 else "NO",
                 f"diffusers {t_ref:.3f} (ratio {t_ours / t_ref:.3f})", ""])
    print(f"# {model.name}: {args.n} captions, one seed each, {req.sampler}/{req.scheduler}, {req.steps} steps, "
          f"cfg {req.cfg}, {size}x{size}, {args.threads} threads, torch {torch.__version__}")
    print(fmt_table(["measure", "athena-tiny", "bar", "met", "real test images", "real, through its VAE"], rows))


if __name__ == "__main__":
    main()
