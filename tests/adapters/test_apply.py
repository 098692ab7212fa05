"""Applying adapters on Athena's own models: exact restore in every dtype and any removal order, stacking, only the
touched weights kept aside, and clear errors for files that do not fit."""

import pytest
import torch
from safetensors.torch import save_file

import athena
from athena.checkpoints.build import random_checkpoint
from athena.errors import CheckpointError
from athena.models.unet import TINY_SD1

ATTN = ("attn1.to_q", "attn2.to_k", "ff.net.2")


def lora_file(pipe, path, seed, *, suffixes=ATTN, rank=2, alpha=1.0, extra=None):
    """A kohya file over Athena's own (LDM) U-Net names and the CLIP layers' q_proj."""
    g, sd = torch.Generator().manual_seed(seed), {}
    mods = [("lora_unet_", n, m) for n, m in pipe.unet.named_modules() if n.endswith(suffixes)]
    mods += [("lora_te_", n, m) for n, m in pipe.text.encoders[0].model.named_modules() if n.endswith("q_proj")]
    for prefix, name, m in mods:
        key = prefix + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, m.weight.shape[1], generator=g)
        sd[f"{key}.lora_up.weight"] = torch.randn(m.weight.shape[0], rank, generator=g)
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    sd.update(extra or {})
    save_file(sd, path)
    return path


@pytest.fixture(scope="module", params=["fp32", "fp16", "bf16"])
def pipe(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m")
    path = random_checkpoint(tmp / "m.safetensors", "sd1", TINY_SD1, None, {"clip_l": (64, 2)}, dtype=torch.float32)
    return athena.load(path, dtype=request.param)


def weights(pipe):
    return {**{f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()},
            **{f"te.{k}": v.clone() for k, v in pipe.text.encoders[0].model.state_dict().items()}}


def same(a, b):
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_stacked_loras_come_off_bit_exact_in_any_order(pipe, tmp_path):
    before = weights(pipe)
    a = pipe.load_lora(lora_file(pipe, tmp_path / "a.safetensors", 1), 0.7, 0.3)
    b = pipe.load_lora(lora_file(pipe, tmp_path / "b.safetensors", 2, suffixes=("attn1.to_q", "proj_in")), -0.5, 1.0)
    changed = same(before, weights(pipe))
    assert any("attn1.to_q" in k for k in changed) and any("q_proj" in k for k in changed)
    kept = sum(len(p.originals) for p in pipe.patchers.values())
    assert kept == len(changed) < len(before) / 3  # only the touched weights are kept aside
    a.remove()
    b_after_a = weights(pipe)  # a off while b stays: exactly b alone
    b.remove()
    a.remove()  # a second remove does nothing
    assert same(before, weights(pipe)) == []
    only_b = pipe.load_lora(tmp_path / "b.safetensors", -0.5, 1.0)
    assert same(b_after_a, weights(pipe)) == []
    only_b.remove()
    assert same(before, weights(pipe)) == []
    assert all(not p.originals for p in pipe.patchers.values())


def test_stacking_is_the_sum_of_the_deltas(pipe, tmp_path):
    p1, p2 = lora_file(pipe, tmp_path / "1.safetensors", 3), lora_file(pipe, tmp_path / "2.safetensors", 4)
    name = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    w0 = pipe.unet.state_dict()[name].clone()
    deltas = []
    for p in (p1, p2):
        h = pipe.load_lora(p, 0.5)
        deltas.append(pipe.unet.state_dict()[name].float() - w0.float())
        h.remove()
    h1, h2 = pipe.load_lora(p1, 0.5), pipe.load_lora(p2, 0.5)
    want = (w0.float() + deltas[0] + deltas[1]).to(w0.dtype)
    tol = 0 if w0.dtype == torch.float32 else 0.02 * want.abs().max().item()  # fp16/bf16: each delta was rounded once
    assert (pipe.unet.state_dict()[name].float() - want.float()).abs().max().item() <= tol + 1e-5
    h1.remove(), h2.remove()
    assert torch.equal(pipe.unet.state_dict()[name], w0)


def test_files_that_do_not_fit_name_the_problem(pipe, tmp_path):
    with pytest.warns(UserWarning, match=r"2 of its modules fit nothing .*lora_unet_not_a_layer"):
        h = lora_file(pipe, tmp_path / "x.safetensors", 5, extra={
            "lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4), "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2),
            "lora_unet_x.weird_tensor": torch.zeros(4)})
        handle = pipe.load_lora(h)
    assert handle.unmatched == ("lora_unet_not_a_layer", "lora_unet_x.weird_tensor")
    handle.remove()
    save_file({"lora_unet_down_blocks_9_x.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_down_blocks_9_x.lora_up.weight": torch.zeros(4, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="none of its 1 modules fit this SD1.x model .*another model family"):
        pipe.load_lora(tmp_path / "other.safetensors")
    save_file({"model.weight": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a LoRA/LyCORIS file"):
        pipe.load_lora(tmp_path / "plain.safetensors")
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 5), f"{name}.lora_up.weight": torch.zeros(7, 2)},
              tmp_path / "shape.safetensors")
    before = weights(pipe)
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        pipe.load_lora(tmp_path / "shape.safetensors")
    assert same(before, weights(pipe)) == []  # a failed load leaves the model as it was
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 5)}, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match="lacks its up tensor"):
        pipe.load_lora(tmp_path / "half.safetensors")
    save_file({f"{name}.lokr_w1": torch.zeros(2, 2), f"{name}.lokr_w2_a": torch.zeros(16, 2)}, tmp_path / "lokr.safetensors")
    with pytest.raises(CheckpointError, match="lacks its w2b tensor"):
        pipe.load_lora(tmp_path / "lokr.safetensors")
    lora_file(pipe, tmp_path / "dora.safetensors", 6, extra={
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.dora_scale": torch.ones(1, 32)})
    with pytest.raises(CheckpointError, match="is a DoRA .*use a plain LoRA"):
        pipe.load_lora(tmp_path / "dora.safetensors")
    assert same(before, weights(pipe)) == []


def test_old_diffusers_spellings(pipe, tmp_path):
    """diffusers' first LoRAs (`...attn1.processor.to_q_lora.down`, `...self_attn.to_q_lora.down`) are kohya's."""
    g = torch.Generator().manual_seed(8)
    cases = [("text_model.encoder.layers.1.self_attn.q_proj", "lora_te_text_model_encoder_layers_1_self_attn_q_proj",
              "text_encoder.text_model.encoder.layers.1.self_attn.to_q_lora", 64, pipe.text.encoders[0].model),
             ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
              "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora", 32, pipe.unet)]
    for param, kohya, old, width, model in cases:
        down, up = torch.randn(2, width, generator=g), torch.randn(width, 2, generator=g)
        save_file({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up}, tmp_path / "kohya.safetensors")
        save_file({f"{old}.down.weight": down, f"{old}.up.weight": up}, tmp_path / "old.safetensors")
        got = []
        for f in ("kohya", "old"):
            h = pipe.load_lora(tmp_path / f"{f}.safetensors")
            assert not h.unmatched
            got.append(model.state_dict()[f"{param}.weight"].clone())
            h.remove()
        assert torch.equal(got[0], got[1]) and not torch.equal(got[0], model.state_dict()[f"{param}.weight"])
