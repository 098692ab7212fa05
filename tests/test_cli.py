"""The `athena` command: `models info` and `models convert` on files a test builds, and clear errors."""

import subprocess
import sys

import torch

from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.safetensors import SafetensorsFile
from athena.cli import main
from athena.models.unet import TINY_SD1, TINY_SD2
from athena.models.vae import TINY_VAE


def test_models_info_reports_family_components_and_dtypes(tmp_path, capsys):
    path = random_checkpoint(tmp_path / "m.safetensors", "sd1", TINY_SD1, TINY_VAE, {"clip_l": (32, 2)})
    assert main(["models", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SD1.x (sd1)" in out and "prediction:  eps" in out and "original single file" in out
    assert "unet:        1.54M params" in out and "clip_l" in out and "F16 x" in out and "other keys:  12" in out


def test_models_info_sd2_v_from_metadata(tmp_path, capsys):
    path = random_checkpoint(tmp_path / "m.safetensors", "sd2", TINY_SD2, TINY_VAE, {"clip_h": (32, 1)}, metadata=True)
    assert main(["models", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SD2.x (sd2)" in out and "prediction:  v" in out and "head_dim=16" in out


def test_models_convert_round_trip(tmp_path, capsys):
    src = random_checkpoint(tmp_path / "m.safetensors", "sd1", TINY_SD1, TINY_VAE, {"clip_l": (32, 2)})
    assert main(["models", "convert", str(src), str(tmp_path / "pipe")]) == 0
    assert (tmp_path / "pipe" / "unet" / "config.json").is_file()
    assert main(["models", "convert", str(tmp_path / "pipe"), str(tmp_path / "back.safetensors")]) == 0
    with SafetensorsFile(src) as a, SafetensorsFile(tmp_path / "back.safetensors") as b:
        assert set(a) == set(b) and all(torch.equal(a.get(k), b.get(k)) for k in a)
    assert main(["models", "convert", str(src), str(tmp_path / "pipe")]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_console_script_errors_are_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00")
    r = subprocess.run([sys.executable, "-m", "athena.cli", "models", "info", str(tmp_path / "junk.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: junk.safetensors") and "Traceback" not in r.stderr
