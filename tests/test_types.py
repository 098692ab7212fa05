"""`mypy --strict` (configured in pyproject.toml) stays clean on the typed layers (STYLE rule 18)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")
ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean():
    r = subprocess.run([sys.executable, "-m", "mypy", "athena"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
