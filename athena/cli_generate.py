"""`athena generate`: prompt -> PNGs carrying their parameters, with a progress bar and a clean Ctrl-C."""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from athena.diffusion.progress import CancelToken
from athena.errors import Cancelled, ConfigError
from athena.folders import default_dir
from athena.media.images import to_images
from athena.media.png import read_request, save_png
from athena.pipelines.generate import (
    GenerateRequest,
    Hires,
    Progress,
    a1111_parameters,
    generate_pixels,
    image_path,
)
from athena.pipelines.pipeline import BUNDLED, Pipeline, bundled_model, load

SUFFIXES = (".safetensors", ".ckpt", ".pt")



def resolve_model(name: str | None, models_dir: Path) -> Path:
    """A path as it is; a name under the models directory's checkpoints/ (with or without its suffix); no name or
    `athena-tiny`: the bundled model."""
    if name is None or (name == BUNDLED and not Path(name).exists()):
        return bundled_model()
    path = Path(name).expanduser()
    if path.exists():
        return path
    for folder in ("checkpoints", "diffusion_models"):
        for candidate in [models_dir / folder / name] + [models_dir / folder / (name + s) for s in SUFFIXES]:
            if candidate.exists():
                return candidate
    raise ConfigError(f"model {name!r} not found: it is not a file or folder, and not under "
                      f"{models_dir / 'checkpoints'}; run `athena models list` to see the models there")


def resolve_lora(spec: str, models_dir: Path) -> tuple[Path, float]:
    """`PATH[:STRENGTH]` or `NAME[:STRENGTH]` (under the models directory's loras/) -> (file, strength)."""
    name, _, tail = spec.rpartition(":")
    try:
        strength = float(tail)
    except ValueError:
        name, strength = spec, 1.0
    if Path(spec).expanduser().is_file():  # a file whose name ends in ":<number>"
        name, strength = spec, 1.0
    if not math.isfinite(strength):
        raise ConfigError(f"--lora {spec!r}: the strength must be a finite number, e.g. 0.8")
    if not name:
        raise ConfigError(f"--lora {spec!r}: give PATH:STRENGTH, e.g. --lora my_style.safetensors:0.8")
    folder = models_dir / "loras"
    files = sorted(p for p in folder.glob("**/*") if p.suffix in SUFFIXES) if folder.is_dir() else []
    for candidate in (Path(name).expanduser(), folder / name, *(folder / (name + s) for s in SUFFIXES),
                      *(p for p in files if p.stem == name)):
        if candidate.is_file():
            return candidate.resolve(), strength
    have = [p.stem for p in files]
    raise ConfigError(f"--lora {name!r} not found: not a file, and not under {folder} (there: {', '.join(have[:10]) or 'none'})")


def apply_loras(pipe: Pipeline, loras: list[tuple[Path, float]]) -> None:
    """Patch each LoRA in at its strength (model and text encoder alike); unfit modules are reported on one line."""
    for path, strength in loras:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora(path, strength, strength)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)


class ProgressBar:
    """One stderr line per pass: steps, it/s and ETA."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream, self.start, self.stage = stream, time.perf_counter(), ""

    def __call__(self, p: Progress) -> None:
        if p.stage != self.stage:
            if self.stage:
                self.stream.write("\n")
            self.stage, self.start = p.stage, time.perf_counter()
        elapsed = time.perf_counter() - self.start
        rate = p.step / elapsed if elapsed > 0 else 0.0
        eta = (p.total - p.step) / rate if rate > 0 else 0.0
        filled = int(24 * p.step / p.total)
        self.stream.write(f"\r{p.stage:5s} {p.step:4d}/{p.total} [{'#' * filled}{'.' * (24 - filled)}] "
                          f"{rate:6.2f} it/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        self.stream.flush()

    def close(self) -> None:
        if self.stage:
            self.stream.write("\n")


def request_from_args(args: argparse.Namespace) -> tuple[GenerateRequest, str | None, list[str]]:
    """The request, the model and the LoRAs (PATH:STRENGTH) to run: the flags, or a PNG's record for --from-png."""
    if args.from_png:
        data = read_request(args.from_png)
        loras = args.lora or [f"{p}:{s}" for p, s in data.get("loras", [])]
        return GenerateRequest.from_dict(data["request"]), args.model or data.get("model"), loras
    if args.prompt is None:
        raise ConfigError("give a PROMPT (or --from-png IMAGE to replay one)")
    hires = None
    if args.hires_scale is not None:
        hires = Hires(args.hires_scale, args.hires_strength, args.hires_steps, args.hires_upscale)
    outpaint = None
    if args.outpaint:
        try:
            left, top, right, bottom = (int(v) for v in args.outpaint.split(","))
        except ValueError:
            raise ConfigError(f"--outpaint {args.outpaint!r}: give four pixel counts, LEFT,TOP,RIGHT,BOTTOM") from None
        outpaint = (left, top, right, bottom)
    req = GenerateRequest(args.prompt, negative=args.negative, width=args.width, height=args.height, steps=args.steps,
                          sampler=args.sampler, scheduler=args.scheduler, cfg=args.cfg, seed=args.seed,
                          batch=args.batch, init_image=args.init_image, strength=args.strength, mask=args.mask,
                          outpaint=outpaint, hires=hires, clip_skip=args.clip_skip, cfg_rescale=args.cfg_rescale)
    return req, args.model, args.lora or []


def next_free(folder: Path) -> int:
    """The first index n with no athena-<n>.png in `folder`, so runs never overwrite each other."""
    taken = [int(p.stem.split("-")[-1]) for p in folder.glob("athena-*.png") if p.stem.split("-")[-1].isdigit()]
    return max(taken, default=0)


def cmd_generate(args: argparse.Namespace) -> int:
    req, model, lora_specs = request_from_args(args)
    models_dir = Path(args.models_dir) if args.models_dir else default_dir("models", "ATHENA_MODELS_DIR")
    path = resolve_model(model, models_dir)
    loras = [resolve_lora(spec, models_dir) for spec in lora_specs]
    for what, p in (("--init-image", req.init_image), ("--mask", req.mask)):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{what} {p!r} does not exist")
    pipe = load(path, device=args.device, dtype=args.dtype, embeddings=models_dir / "embeddings")
    apply_loras(pipe, loras)
    cancel, bar = CancelToken(), ProgressBar()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()  # stop at the next step; a second Ctrl-C aborts at once

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        pixels = generate_pixels(pipe, req, progress=bar, cancel=cancel)
    except Cancelled:
        bar.close()
        print("cancelled: stopped at the next step, nothing written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    out = Path(args.output or args.output_dir or default_dir("output", "ATHENA_OUTPUT_DIR"))
    first = next_free(out) if out.suffix.lower() != ".png" else 0
    h, w = pixels.shape[-2:]
    parameters = a1111_parameters(req, width=w, height=h, seed=req.seed, model=path.stem)
    for i, img in enumerate(to_images(pixels)):
        record = {"request": dataclasses.asdict(req), "model": str(path), "batch_index": i,
                  "loras": [[str(p), s] for p, s in loras]}
        print(save_png(img, image_path(out, first + i, req.batch), parameters=parameters, request=record))
    return 0


def add_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="make images from a prompt (txt2img, img2img, inpainting, hires fix)")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--model", help="a .safetensors file, a diffusers folder, or a name under the models directory")
    g.add_argument("--negative", default="")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--sampler", default="euler", help="ComfyUI's sampler names: euler, dpmpp_2m, uni_pc, ...")
    g.add_argument("--scheduler", default="normal", help="normal, karras, exponential, simple, sgm_uniform, ...")
    g.add_argument("--cfg", type=float, default=7.0)
    g.add_argument("--cfg-rescale", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--init-image")
    g.add_argument("--strength", type=float, default=1.0, help="img2img denoise in (0, 1]")
    g.add_argument("--mask", help="inpainting mask: white (or transparent) repaints")
    g.add_argument("--outpaint", help="LEFT,TOP,RIGHT,BOTTOM pixels to add around --init-image")
    g.add_argument("--hires-scale", type=float, help="hires fix: upscale factor for a second pass")
    g.add_argument("--hires-strength", type=float, default=0.5)
    g.add_argument("--hires-steps", type=int, default=0)
    g.add_argument("--hires-upscale", choices=("latent", "pixel"), default="latent")
    g.add_argument("--clip-skip", type=int)
    g.add_argument("--lora", action="append", metavar="PATH:STRENGTH",
                   help="apply a LoRA/LyCORIS file (or a name under the models directory's loras/); repeatable")
    g.add_argument("--from-png", help="replay the request embedded in a PNG that athena wrote")
    g.add_argument("-o", "--output", help="a .png path, or a folder (default: the output directory)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    g.add_argument("--models-dir")
    g.add_argument("--output-dir", help="where images go without -o (default: $ATHENA_OUTPUT_DIR or ~/.athena/output)")
    g.set_defaults(fn=cmd_generate)
