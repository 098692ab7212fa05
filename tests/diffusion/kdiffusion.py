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


# The samplers k-diffusion 0.1.1 shares with Athena, and how each takes its noise.
SHARED = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
          "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
ANCESTRAL = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpm_fast", "dpm_adaptive"})
BROWNIAN = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"})


def run_reference(k: types.ModuleType, name: str, denoise, x, sigmas, seed: int):
    """k-diffusion's sampler `name`, called the way ComfyUI calls it, with the noise Athena draws for `seed`: the same
    generator stream for ancestral steps, the same Brownian tree for SDE samplers."""
    import torch

    fn = getattr(k, f"sample_{name}")
    model = lambda x_, s, **kw: denoise(x_, s)  # noqa: E731
    if name in BROWNIAN:
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        return fn(model, x, sigmas, disable=True, noise_sampler=k.BrownianTreeNoiseSampler(x, lo, hi, seed=seed))
    g = torch.Generator().manual_seed(seed)
    noise = lambda s, sn: torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
    if name in ("dpm_fast", "dpm_adaptive"):
        sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
        extra = (len(sigmas) - 1,) if name == "dpm_fast" else ()
        return fn(model, x, sigma_min, sigmas[0], *extra, disable=True, noise_sampler=noise)
    if name in ANCESTRAL:
        return fn(model, x, sigmas, disable=True, noise_sampler=noise)
    return fn(model, x, sigmas, disable=True)
