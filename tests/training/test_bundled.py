"""The bundled model: small, fp16, an ordinary SD1.x file, the default of `athena generate`, and it follows prompts."""

from pathlib import Path

import numpy as np
import torch

import athena
from athena.checkpoints.detect import META_RESOLUTION
from athena.checkpoints.io import open_weights
from athena.cli import main
from athena.media.png import read_request
from athena.pipelines.pipeline import bundled_model
from athena.training.data import COLORS

PALETTE = {name: np.array(rgb, dtype=np.float64) for name, rgb in COLORS.items()}


def nearest(rgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda k: float(((PALETTE[k] - rgb) ** 2).sum()))


def test_the_file_is_small_fp16_sd1():
    path = bundled_model()
    assert path.stat().st_size <= 25 * 2**20
    w = open_weights(path)
    weights = [k for k in w if k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model."))
               and not k.endswith("position_ids")]
    assert weights and all(w[k].dtype == torch.float16 for k in weights)
    assert w.metadata[META_RESOLUTION] == "64"


def test_it_loads_by_name_and_follows_the_prompt():
    pipe = athena.load("athena-tiny")
    assert pipe.family.name == "sd1" and pipe.resolution == 64
    for prompt, bg in (("a red sneaker on a blue background", "blue"), ("a white bag on a black background", "black")):
        img = np.asarray(athena.generate(pipe, prompt, seed=0)[0], dtype=np.float64)
        border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3)])
        assert img.shape == (64, 64, 3) and nearest(np.median(border, axis=0)) == bg, prompt


def test_athena_generate_uses_it_by_default(tmp_path: Path, capsys):
    out = tmp_path / "sneaker.png"
    assert main(["generate", "a red sneaker on a blue background", "--steps", "4", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert read_request(out)["request"]["prompt"] == "a red sneaker on a blue background"
