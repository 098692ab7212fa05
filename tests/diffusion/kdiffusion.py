"""k-diffusion's `sampling.py` as the reference oracle. Its package `__init__` imports torchvision (not available on
these machines), so the module is loaded from the install folder with its one sibling import, `utils.append_dims`."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def load_sampling() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (scripts/test.sh installs it)")
    root = Path(list(spec.submodule_search_locations)[0])
    if "kdiff_ref" not in sys.modules:
        pkg = types.ModuleType("kdiff_ref")
        pkg.__path__ = [str(root)]
        utils = types.ModuleType("kdiff_ref.utils")
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # k-diffusion's own definition
        pkg.utils = utils
        sys.modules.update({"kdiff_ref": pkg, "kdiff_ref.utils": utils})
        s = importlib.util.spec_from_file_location("kdiff_ref.sampling", root / "sampling.py")
        mod = importlib.util.module_from_spec(s)
        sys.modules["kdiff_ref.sampling"] = mod
        s.loader.exec_module(mod)
    return sys.modules["kdiff_ref.sampling"]
