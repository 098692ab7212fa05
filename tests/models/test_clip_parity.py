"""The CLIP text encoder against transformers' CLIPTextModel / CLIPTextModelWithProjection, loaded from each real layout.

Tolerance: max abs error <= 1e-4 in fp32 for the last hidden state, the penultimate one and the pooled output.
Files are written without Athena metadata, so configs come from the shapes and the head-size-64 convention.
"""

from pathlib import Path

import pytest
import torch

from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.convert import to_diffusers
from athena.checkpoints.load import open_checkpoint
from athena.models.unet import TINY_SD1, TINY_SD2, TINY_SDXL
from athena.models.vae import TINY_VAE

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

TOL = 1e-4
VOCAB = 1000

# kind -> (act, projection, width, layers); widths are multiples of 64 as in every published CLIP text tower
KINDS = {"clip_l": ("quick_gelu", False, 128, 3), "openclip_h": ("gelu", True, 128, 3), "openclip_bigg": ("gelu", True, 192, 4)}
# case -> (family, tiny U-Net, [(encoder name, kind, single-file prefix)])
CASES = {
    "sd1": ("sd1", TINY_SD1, [("clip_l", "clip_l", "cond_stage_model.transformer.")]),
    "sd2": ("sd2", TINY_SD2, [("clip_h", "openclip_h", "cond_stage_model.model.")]),
    "sdxl": ("sdxl", TINY_SDXL, [("clip_l", "clip_l", "conditioner.embedders.0.transformer."),
                                ("clip_g", "openclip_bigg", "conditioner.embedders.1.model.")]),
}


def hf_model(kind: str, seed: int) -> torch.nn.Module:
    act, projection, width, layers = KINDS[kind]
    cfg = transformers.CLIPTextConfig(vocab_size=VOCAB, hidden_size=width, num_attention_heads=width // 64,
                                      num_hidden_layers=layers, intermediate_size=4 * width, hidden_act=act,
                                      max_position_embeddings=77, projection_dim=width, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1)
    model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def hf_file_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names HF CLIP files use: transformers 5 drops `text_model.` in memory for CLIPTextModel, not on disk."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()
            if "position_ids" not in k}


def open_clip_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP names -> OpenCLIP's, written here independently of Athena's key map (fused q/k/v, transposed projection)."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"], "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].t().contiguous(), "logit_scale": torch.tensor(4.6052)}
    n = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    for i in range(n):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[oc + f"attn.in_proj_{kind}"] = torch.cat([sd[hf + f"self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[oc + f"{a}.{kind}"] = sd[hf + f"{b}.{kind}"]
    return out


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    family, unet, encoders = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    base = random_checkpoint(tmp / "base.safetensors", family, unet, TINY_VAE, dtype=torch.float32)
    tensors = load_file(base)  # re-saved below without metadata, as a file from another tool
    refs = {}
    for i, (name, kind, prefix) in enumerate(encoders):
        refs[name] = hf_model(kind, seed=10 + i)
        sd = hf_file_names(refs[name].state_dict())
        tensors.update({prefix + k: v for k, v in (open_clip_layout(sd) if prefix.endswith(".model.") else sd).items()})
    single = tmp / "model.safetensors"
    save_file(tensors, single)
    folder = tmp / "folder"
    to_diffusers(open_checkpoint(single), folder)
    return family, refs, single, folder


def inputs(pad: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB - 2, (2, 77), generator=g)
    ids[:, 0] = VOCAB - 2  # BOS
    for row, eos in enumerate((9, 40)):
        ids[row, eos] = VOCAB - 1
        ids[row, eos + 1:] = pad
    return ids


@pytest.mark.parametrize("layout", ["single", "diffusers"])
def test_text_encoders_match_transformers(case, layout):
    family, refs, single, folder = case
    ckpt = open_checkpoint(single if layout == "single" else folder)
    for name, ref in refs.items():
        ours = ckpt.load_text(name)
        dropped = ckpt.text_layers_dropped(name)  # diffusers' SD2 config stops one layer early
        ids = inputs(pad=VOCAB - 1 if name == "clip_l" else 0)
        with torch.no_grad():
            want = ref(ids, output_hidden_states=True)
            last = ours(ids, layer=-1, final_norm=True)
            penultimate = ours(ids, layer=-2 + dropped, final_norm=False)
        want_pooled = want.text_embeds if hasattr(want, "text_embeds") else want.pooler_output
        n_ref = len(want.hidden_states) - 1
        assert ours.cfg.layers == n_ref - dropped
        if not dropped:
            assert (last.hidden - want.last_hidden_state).abs().max() <= TOL
            assert (last.pooled - want_pooled).abs().max() <= TOL
        assert (penultimate.hidden - want.hidden_states[-2]).abs().max() <= TOL
        assert want.hidden_states[-2].abs().max() > 0.1  # a real signal


def test_quick_gelu_vs_gelu_is_visible(case):
    """Negative control: the comparison sees an activation swapped for its neighbour."""
    family, refs, single, _ = case
    name, ref = next(iter(refs.items()))
    ours = open_checkpoint(single).load_text(name)
    for mlp in (layer.mlp for layer in ours.text_model.encoder.layers):
        mlp.quick = not mlp.quick
    ids = inputs(pad=0)
    with torch.no_grad():
        assert (ours(ids).hidden - ref(ids).last_hidden_state).abs().max() > 10 * TOL


def test_presets_are_the_real_towers():
    """Tensor counts of the published files (checkpoint-layouts.md): CLIP-L 196, OpenCLIP-H 24 x 12 + 5, bigG 389."""
    from athena.checkpoints.io import DictWeights
    from athena.checkpoints.keymaps import open_clip
    from athena.models.clip import CLIP_L, OPENCLIP_BIGG, OPENCLIP_H, CLIPTextModel

    def open_clip_keys(cfg):
        return open_clip.from_hf(DictWeights(CLIPTextModel(cfg, device="meta").state_dict()))

    assert len(CLIPTextModel(CLIP_L, device="meta").state_dict()) == 196
    assert len(open_clip_keys(OPENCLIP_H)) == 24 * 12 + 5
    big = open_clip_keys(OPENCLIP_BIGG)
    assert len(big) == 389 and big["transformer.resblocks.0.attn.in_proj_weight"].shape == (3840, 1280)
    assert big["text_projection"].shape == (1280, 1280)
    params = sum(p.numel() for p in CLIPTextModel(CLIP_L, device="meta").parameters())
    assert params == 123_060_480  # OpenAI ViT-L/14's text tower
