"""The folders every command shares: models, outputs and data, from a flag, the environment, or ~/.athena."""

from __future__ import annotations

import os
from pathlib import Path


def default_dir(kind: str, env: str) -> Path:
    """$`env` if set, else ~/.athena/`kind`."""
    return Path(os.environ.get(env) or Path.home() / ".athena" / kind)
