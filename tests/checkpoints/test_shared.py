"""Weights loaded on the CPU in the file's dtype are the file's private mapping, not a copy: /proc/self/maps shows
where each parameter's bytes live. They outlive the opened checkpoint, writes never reach the file, and a file
renamed over the original leaves a loaded model as it was."""

import gc
import hashlib
import os
from pathlib import Path

import pytest
import torch

from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.load import open_checkpoint
from athena.models.unet import TINY_SD1
from athena.models.vae import TINY_VAE

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")


def mapped_file(t: torch.Tensor) -> str | None:
    """The file whose mapping holds `t`'s first byte, or None for anonymous memory."""
    addr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= addr < hi:
            return fields[5].strip() if len(fields) == 6 and fields[5].startswith("/") else None
    raise AssertionError(f"address {addr:#x} is in no mapping")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unet_out(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, TINY_SD1.context_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500.0]), ctx)


@pytest.fixture
def fp32_file(tmp_path: Path) -> Path:
    return random_checkpoint(tmp_path / "m.safetensors", "sd1", TINY_SD1, TINY_VAE, dtype=torch.float32)


def test_cpu_weights_in_the_file_dtype_are_the_mapping_and_outlive_the_checkpoint(fp32_file: Path) -> None:
    ckpt = open_checkpoint(fp32_file)
    unet, vae = ckpt.load_unet(), ckpt.load_vae()
    ckpt.close()
    del ckpt
    gc.collect()
    where = {mapped_file(p) for m in (unet, vae) for p in m.parameters()}
    assert where == {str(fp32_file.resolve())}, where
    copied = open_checkpoint(fp32_file, share=False).load_unet()
    assert {mapped_file(p) for p in copied.parameters()} == {None}
    torch.testing.assert_close(unet_out(unet), unet_out(copied), rtol=0, atol=0)


def test_a_cast_is_a_private_copy(tmp_path: Path) -> None:
    fp16 = random_checkpoint(tmp_path / "h.safetensors", "sd1", TINY_SD1, TINY_VAE, dtype=torch.float16)
    ckpt = open_checkpoint(fp16)
    assert {mapped_file(p) for p in ckpt.load_unet(dtype=torch.float32).parameters()} == {None}
    assert {mapped_file(p) for p in ckpt.load_unet(dtype=torch.float16).parameters()} == {str(fp16.resolve())}


def test_writes_stay_in_memory_and_a_rename_over_the_file_changes_nothing(fp32_file: Path, tmp_path: Path) -> None:
    before = digest(fp32_file)
    unet = open_checkpoint(fp32_file).load_unet()
    out = unet_out(unet)
    with torch.no_grad():
        unet.out[2].bias.add_(1.0)  # a LoRA merge or a training step writes in place: copy-on-write
    assert digest(fp32_file) == before
    torch.testing.assert_close(unet_out(unet), out + 1.0)
    with torch.no_grad():
        unet.out[2].bias.sub_(1.0)
    # a new file written beside it and renamed over (what Athena's writers and most downloaders do)
    other = random_checkpoint(tmp_path / "new.safetensors", "sd1", TINY_SD1, TINY_VAE, dtype=torch.float32, seed=1)
    os.replace(other, fp32_file)
    assert digest(fp32_file) != before
    gc.collect()
    torch.testing.assert_close(unet_out(unet), out, rtol=0, atol=1e-6)


def test_a_file_renamed_over_between_open_and_load_is_not_read(fp32_file: Path, tmp_path: Path) -> None:
    """The mapping is of the file whose header was parsed, not of whatever the path names by the time of loading."""
    want = unet_out(open_checkpoint(fp32_file, share=False).load_unet())
    ckpt = open_checkpoint(fp32_file)
    other = random_checkpoint(tmp_path / "new.safetensors", "sd1", TINY_SD1, TINY_VAE, dtype=torch.float32, seed=1)
    os.replace(other, fp32_file)
    torch.testing.assert_close(unet_out(ckpt.load_unet()), want, rtol=0, atol=0)
