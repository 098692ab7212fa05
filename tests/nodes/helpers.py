"""Small builders for the latent/image/mask/output node tests: a Context over folders in tmp_path (no models) and
a tiny random VAE."""

from pathlib import Path

import torch

from athena.cancel import CancelToken
from athena.graph.node import Context
from athena.models.vae import TINY_VAE, AutoencoderKL
from athena.nodes.runtime import Folders, Runtime
from athena.nodes.types import Vae


def make_ctx(tmp_path: Path, prompt=None, extra_pnginfo=None) -> Context:
    dirs = {}
    for sub in ("models", "output", "input", "temp"):
        dirs[sub] = tmp_path / sub
        dirs[sub].mkdir(exist_ok=True)
    runtime = Runtime(Folders(**dirs))
    return Context("9", runtime, CancelToken(), lambda v, t, p: None, prompt=prompt or {},
                   extra_pnginfo=extra_pnginfo or {})


def tiny_vae(seed: int = 0) -> Vae:
    """TINY_VAE (downscale 2) with weights nudged off their init so outputs are not trivially smooth."""
    torch.manual_seed(seed)
    m = AutoencoderKL(TINY_VAE).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return Vae(m, scale=0.18215)
