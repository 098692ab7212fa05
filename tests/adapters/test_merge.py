"""`athena models merge`: alpha 0 and 1 give the inputs back exactly, the sum and the add-difference are the formulas,
the result loads and is detected like its inputs, and bad inputs name the problem."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import athena
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.merge import merge
from athena.cli import main
from athena.errors import CheckpointError, ConfigError
from athena.models.unet import TINY_SD1, TINY_SDXL
from athena.models.vae import TINY_VAE


def model(path, seed, dtype=torch.float16, family="sd1", unet=TINY_SD1):
    return random_checkpoint(path, family, unet, TINY_VAE, {"clip_l": (32, 2)}, dtype=dtype, seed=seed, metadata=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    return tmp, model(tmp / "a.safetensors", 1), model(tmp / "b.safetensors", 2), model(tmp / "c.safetensors", 3)


def tensors(p):
    return load_file(p)


def test_alpha_0_and_1_give_the_inputs_back(files, capsys):
    tmp, a, b, c = files
    for alpha, want in ((0.0, a), (1.0, b)):
        out = tmp / f"m{alpha}.safetensors"
        assert main(["models", "merge", str(a), str(b), "--alpha", str(alpha), "-o", str(out)]) == 0
        got, ref = tensors(out), tensors(want)
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    merge(a, b, tmp / "d0.safetensors", alpha=0.0, difference=c)
    got, ref = tensors(tmp / "d0.safetensors"), tensors(a)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert "merging" in capsys.readouterr().err  # progress


def test_weighted_sum_and_add_difference_are_the_formulas(files):
    tmp, a, b, c = files
    merge(a, b, tmp / "w.safetensors", alpha=0.3)
    merge(a, b, tmp / "d.safetensors", alpha=0.7, difference=c)
    ta, tb, tc = tensors(a), tensors(b), tensors(c)
    w, d = tensors(tmp / "w.safetensors"), tensors(tmp / "d.safetensors")
    for k in ta:
        assert w[k].dtype == ta[k].dtype
        assert torch.equal(w[k], (ta[k].float() * (1 - 0.3) + tb[k].float() * 0.3).to(ta[k].dtype))
        assert torch.equal(d[k], (ta[k].float() + (tb[k].float() - tc[k].float()) * 0.7).to(ta[k].dtype))
    pipe = athena.load(tmp / "w.safetensors")  # loads and is detected like its inputs
    assert pipe.family.name == "sd1" and pipe.vae is not None and pipe.text is not None


def test_keys_only_a_has_are_copied(files):
    tmp, a, b, _ = files
    part = {k: v for k, v in tensors(b).items() if not k.startswith("first_stage_model.")}  # B without its VAE
    save_file(part, tmp / "b_novae.safetensors")
    counts = merge(a, tmp / "b_novae.safetensors", tmp / "mixed.safetensors", alpha=0.5)
    got, ta = tensors(tmp / "mixed.safetensors"), tensors(a)
    vae = [k for k in ta if k.startswith("first_stage_model.")]
    ints = [k for k in ta if not ta[k].is_floating_point()]  # e.g. CLIP's position_ids
    assert counts["copied"] == len(vae) + len(ints) and all(torch.equal(got[k], ta[k]) for k in vae + ints)


def test_bad_merges_name_the_problem(files, tmp_path, capsys):
    tmp, a, b, _ = files
    xl = random_checkpoint(tmp_path / "xl.safetensors", "sdxl", TINY_SDXL, None, None, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="only checkpoints of the same architecture can be merged"):
        merge(a, xl, tmp_path / "x.safetensors", alpha=0.5)
    with pytest.raises(ConfigError, match=r"use a value in \[0, 1\]"):
        merge(a, b, tmp_path / "x.safetensors", alpha=1.5)
    with pytest.raises(ConfigError, match="is also an input"):
        merge(a, b, a, alpha=0.5)
    assert main(["models", "merge", str(a), str(b), "--alpha", "0.5", "-o", str(a)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
