"""Shared fixtures for the node tests: a models folder in ComfyUI's layout with tiny random SD1 and SDXL checkpoints,
a LoRA and a standalone VAE, and a `Runtime` over it. Built once per session (a few seconds on CPU)."""

from dataclasses import replace

import pytest
import torch

import athena
from athena.cancel import CancelToken
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.safetensors import save_file
from athena.graph.node import Context
from athena.models.unet import TINY_SD1, TINY_SDXL
from athena.models.vae import TINY_VAE
from athena.nodes.runtime import Folders, Runtime
from tests.adapters.test_apply import lora_file

# SDXL's context is clip_l + clip_g widths and its y starts with bigG's pooled output (width 64 here)
TINY_SDXL_NODES = replace(TINY_SDXL, context_dim=96, adm_in_channels=64 + 6 * 256)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """models/checkpoints/{tiny_sd1,tiny_sdxl}.safetensors, models/loras/fox.safetensors (SD1),
    models/vae/tiny_vae.safetensors (another random VAE of the SD1 file's shape)."""
    root = tmp_path_factory.mktemp("models")
    for sub in ("checkpoints", "loras", "vae", "diffusers", "unet", "diffusion_models", "clip", "text_encoders"):
        (root / sub).mkdir()
    sd1 = random_checkpoint(root / "checkpoints" / "tiny_sd1.safetensors", "sd1", TINY_SD1, TINY_VAE,
                            {"clip_l": (32, 2)}, dtype=torch.float32)
    random_checkpoint(root / "checkpoints" / "tiny_sdxl.safetensors", "sdxl", TINY_SDXL_NODES, TINY_VAE,
                      {"clip_l": (32, 2), "clip_g": (64, 2)}, dtype=torch.float32, seed=1)
    pipe = athena.load(sd1)
    lora_file(pipe, root / "loras" / "fox.safetensors", 7, alpha=2.0)
    g = torch.Generator().manual_seed(3)
    save_file({k: torch.randn(v.shape, generator=g) * 0.05 if v.ndim > 1 else v.clone()
               for k, v in pipe.vae.state_dict().items()}, root / "vae" / "tiny_vae.safetensors")
    return root


@pytest.fixture
def runtime(models_dir, tmp_path):
    """A fresh Runtime per test (its own model cache), with output/input/temp under the test's tmp_path."""
    for sub in ("output", "input", "temp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    return Runtime(Folders(models_dir, tmp_path / "output", tmp_path / "input", tmp_path / "temp"))


@pytest.fixture
def ctx(runtime):
    """A hand-built node Context whose progress reports are recorded in `ctx.reports` as (value, total)."""
    reports = []
    c = Context("1", runtime, CancelToken(), lambda v, t, p: reports.append((v, t)))
    c.reports = reports
    return c
