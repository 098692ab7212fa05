"""`athena generate --lora NAME:STRENGTH`: the LoRA changes the image, strength 0 does not, names are looked up in
the models folder's loras/, and --from-png replays the LoRA too."""

import numpy as np
import pytest
import torch
from PIL import Image

import athena
from athena.checkpoints.build import random_checkpoint
from athena.cli import main
from athena.media.png import read_request
from athena.models.unet import TINY_SD1
from athena.models.vae import TINY_VAE
from tests.adapters.test_apply import lora_file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "loras" / "styles").mkdir(parents=True)
    model = random_checkpoint(root / "checkpoints" / "tiny.safetensors", "sd1", TINY_SD1, TINY_VAE, {"clip_l": (32, 2)},
                              dtype=torch.float32)
    lora_file(athena.load(model), root / "loras" / "styles" / "fox.safetensors", 7, alpha=2.0)
    return root


def run(models, out, *extra):
    assert main(["generate", "a fox", "--models-dir", str(models), "--model", "tiny", "--steps", "3", "--width", "32",
                 "--height", "32", "--seed", "5", "-o", str(out), *extra]) == 0
    return np.asarray(Image.open(out)).astype(int)


def test_lora_flag(models, tmp_path, capsys):
    base = run(models, tmp_path / "base.png")
    assert np.array_equal(run(models, tmp_path / "zero.png", "--lora", "fox:0"), base)
    styled = run(models, tmp_path / "fox.png", "--lora", "styles/fox.safetensors:0.8")
    assert np.abs(styled - base).mean() > 1.0
    assert read_request(tmp_path / "fox.png")["loras"] == [[str(models / "loras" / "styles" / "fox.safetensors"), 0.8]]
    assert main(["generate", "--from-png", str(tmp_path / "fox.png"), "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")).astype(int), styled)
    capsys.readouterr()
    assert main(["generate", "x", "--models-dir", str(models), "--model", "tiny", "--lora", "nope:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lora 'nope' not found") and "fox" not in err.split("(there:")[0] and err.count("\n") == 1
    assert main(["generate", "x", "--models-dir", str(models), "--model", "tiny", "--lora", "fox:nan"]) == 2
    assert "must be a finite number" in capsys.readouterr().err
