"""single file <-> diffusers folder conversion is exact in both directions, for every family."""

import pytest
import torch

import athena
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.convert import to_diffusers, to_single_file
from athena.checkpoints.keymaps import open_clip
from athena.checkpoints.io import DictWeights
from athena.checkpoints.load import open_checkpoint
from athena.checkpoints.safetensors import SafetensorsFile
from athena.models.unet import TINY_SD1, TINY_SD2, TINY_SDXL
from athena.models.vae import TINY_VAE

CASES = {
    "sd1": (TINY_SD1, {"clip_l": (32, 2)}),
    "sd2": (TINY_SD2, {"clip_h": (64, 3)}),
    "sdxl": (TINY_SDXL, {"clip_l": (32, 2), "clip_g": (64, 2)}),
}


def tensors(path):
    with SafetensorsFile(path) as f:
        return {k: f.get(k) for k in f}


def folder_tensors(folder):
    return {f"{p.parent.name}/{k}": t for p in sorted(folder.glob("*/*.safetensors")) for k, t in tensors(p).items()}


def assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", sorted(CASES))
def test_single_to_diffusers_to_single_is_exact(tmp_path, family):
    unet, text = CASES[family]
    src = random_checkpoint(tmp_path / "src.safetensors", family, unet, TINY_VAE, text, metadata=True)
    to_diffusers(open_checkpoint(src), tmp_path / "folder")
    to_single_file(open_checkpoint(tmp_path / "folder"), tmp_path / "back.safetensors")
    assert_same(tensors(src), tensors(tmp_path / "back.safetensors"))
    to_single_file(open_checkpoint(tmp_path / "back.safetensors"), tmp_path / "again.safetensors")
    to_diffusers(open_checkpoint(tmp_path / "again.safetensors"), tmp_path / "folder2")
    assert_same(folder_tensors(tmp_path / "folder"), folder_tensors(tmp_path / "folder2"))  # diffusers -> ... -> diffusers


def test_converted_folder_loads_in_diffusers_and_transformers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    src = random_checkpoint(tmp_path / "sdxl.safetensors", "sdxl", TINY_SDXL, TINY_VAE, {"clip_l": (64, 2), "clip_g": (64, 2)},
                            dtype=torch.float32, metadata=True)
    to_diffusers(open_checkpoint(src), tmp_path / "folder")
    unet = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "folder" / "unet")
    ours = athena.load(src).unet
    assert torch.equal(unet.conv_in.weight, ours.input_blocks[0][0].weight)
    assert torch.equal(unet.add_embedding.linear_1.weight, ours.label_emb[0][0].weight)
    te2 = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path / "folder" / "text_encoder_2")
    g = tensors(src)
    assert torch.equal(te2.text_projection.weight, g["conditioner.embedders.1.model.text_projection"].t())
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "folder" / "vae")
    assert vae.config.scaling_factor == 0.13025


def test_open_clip_fused_attention_matches_torch_multihead_attention():
    """The q/k/v split is checked against nn.MultiheadAttention, which is what OpenCLIP runs on in_proj_weight."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=1)
    hf_attn = transformers.models.clip.modeling_clip.CLIPAttention(cfg).eval()
    sd = {f"text_model.encoder.layers.0.self_attn.{k}": v for k, v in hf_attn.state_dict().items()}
    oc = {k: p.make() for k, p in open_clip.from_hf(DictWeights(sd)).items()}
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    mha.load_state_dict({"in_proj_weight": oc["transformer.resblocks.0.attn.in_proj_weight"],
                         "in_proj_bias": oc["transformer.resblocks.0.attn.in_proj_bias"],
                         "out_proj.weight": oc["transformer.resblocks.0.attn.out_proj.weight"],
                         "out_proj.bias": oc["transformer.resblocks.0.attn.out_proj.bias"]})
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        want = hf_attn(x)[0]
        got = mha(x, x, x, need_weights=False)[0]
    assert (want - got).abs().max() < 1e-5
    back = {k: p.make() for k, p in open_clip.to_hf(DictWeights(oc)).items()}
    assert_same(back, sd)
