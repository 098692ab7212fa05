"""Numerical parity with diffusers: tiny seeded models exported to both layouts, loaded with athena.load.

Tolerance: max abs error <= 1e-4 in fp32 on the CPU for the U-Net forward, VAE encode (mean) and decode.
"""

import json
from pathlib import Path

import pytest
import torch

import athena
from athena.checkpoints.convert import to_single_file
from athena.checkpoints.load import open_checkpoint
from athena.models.unet import adm_vector

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4

XATTN, PLAIN = "CrossAttnDownBlock2D", "DownBlock2D"
UP = {XATTN: "CrossAttnUpBlock2D", PLAIN: "UpBlock2D"}


def unet_config(down, channels, *, layers=1, heads, ctx=32, linear=False, depth=1, adm=None):
    d = dict(sample_size=16, block_out_channels=channels, down_block_types=down,
             up_block_types=tuple(UP[t] for t in reversed(down)), layers_per_block=layers, attention_head_dim=heads,
             cross_attention_dim=ctx, use_linear_projection=linear, transformer_layers_per_block=depth)
    if adm:
        d.update(addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=adm)
    return d


# (family, prediction, diffusers config): at least two non-standard widths/depths per family
UNETS = {
    "sd1_w32": ("sd1", "epsilon", unet_config((XATTN, PLAIN), (32, 64), heads=8)),
    "sd1_w64_3lvl": ("sd1", "epsilon", unet_config((XATTN, XATTN, PLAIN), (64, 128, 192), layers=2, heads=8)),
    "sd2_w64_v": ("sd2", "v_prediction", unet_config((XATTN, XATTN), (64, 128), heads=(1, 2), linear=True)),
    "sd2_w32_hd16": ("sd2", "v_prediction", unet_config((XATTN, PLAIN), (32, 64), heads=(2, 4), linear=True, ctx=48)),
    "sdxl_w32": ("sdxl", "epsilon", unet_config((PLAIN, XATTN), (32, 64), heads=(2, 4), linear=True, depth=(1, 2), adm=32 + 1536)),
    "sdxl_w64_3lvl": ("sdxl", "epsilon", unet_config((PLAIN, XATTN, XATTN), (64, 128, 128), heads=(1, 2, 2), linear=True,
                                                   depth=(1, 1, 2), layers=2, ctx=64, adm=64 + 1536)),
    # the refiner: context and pooled vector from bigG alone, 5 micro-conditioning values (no target size)
    "sdxl_refiner_w32": ("sdxl_refiner", "epsilon", unet_config((PLAIN, XATTN), (32, 64), heads=(2, 4), linear=True,
                                                              depth=(1, 2), ctx=48, adm=48 + 1280)),
}
VAES = {
    "vae_2lvl": dict(block_out_channels=(32, 64), layers_per_block=1),
    "vae_3lvl": dict(block_out_channels=(32, 64, 64), layers_per_block=2, latent_channels=8),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights everywhere (diffusers zero-inits some layers, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def export(tmp: Path, unet=None, vae=None, prediction="epsilon") -> tuple[Path, Path]:
    """Save as a diffusers folder, then convert that folder to the original single-file layout."""
    folder = tmp / "pipe"
    if unet is not None:
        unet.save_pretrained(folder / "unet")
    if vae is not None:
        vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    (folder / "model_index.json").write_text("{}")
    single = tmp / "model.safetensors"
    to_single_file(open_checkpoint(folder), single)
    return folder, single


@pytest.fixture(scope="module", params=sorted(UNETS))
def unet_case(request, tmp_path_factory):
    family, prediction, cfg = UNETS[request.param]
    ref = randomize(diffusers.UNet2DConditionModel(**cfg), seed=len(request.param))
    vae = randomize(diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1,
                                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2), 1)
    folder, single = export(tmp_path_factory.mktemp(request.param), ref, vae, prediction)
    return family, prediction, cfg, ref, folder, single


def unet_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10.0, 731.5])
    context = torch.randn(2, 7, cfg["cross_attention_dim"], generator=g)
    extra = {}
    if cfg.get("addition_embed_type"):
        refiner = cfg["projection_class_embeddings_input_dim"] - cfg["cross_attention_dim"] == 5 * 256
        time_ids = (torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 6.0], [768.0, 1344.0, 16.0, 32.0, 2.5]]) if refiner else
                    torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1344.0, 16.0, 32.0, 896.0, 1152.0]]))
        pooled = torch.randn(2, cfg["projection_class_embeddings_input_dim"] - 256 * time_ids.shape[1], generator=g)
        extra = {"text_embeds": pooled, "time_ids": time_ids}
    return x, t, context, extra


def plain_copy(single: Path) -> Path:
    """The same tensors re-saved by the `safetensors` package with no metadata, as another tool would write them."""
    from safetensors.torch import load_file, save_file
    plain = single.with_name("plain.safetensors")
    save_file(load_file(single), plain)
    return plain


def unet_error(pipe, cfg, ref) -> float:
    x, t, context, extra = unet_inputs(cfg)
    y = adm_vector(extra["text_embeds"], extra["time_ids"]) if extra else None  # SGM's construction of `y`
    with torch.no_grad():
        want = ref(x, t, context, added_cond_kwargs=extra or None).sample
        got = pipe.unet(x, t, context, y)
    assert want.abs().max() > 0.1  # a real signal, not zeros
    return (got - want).abs().max().item()


@pytest.mark.parametrize("layout", ["single", "diffusers", "plain"])
def test_unet_forward_matches_diffusers(unet_case, layout):
    """`plain` files carry no Athena metadata: the config comes from shapes, heads from the family convention."""
    family, prediction, cfg, ref, folder, single = unet_case
    conventional = cfg["attention_head_dim"] == 8 if family == "sd1" else all(
        c // h == 64 for c, h in zip(cfg["block_out_channels"], cfg["attention_head_dim"]))
    if layout == "plain" and not conventional:
        pytest.skip("heads are not in the weights; a non-conventional head size needs the file's metadata")
    pipe = athena.load({"single": single, "diffusers": folder, "plain": plain_copy(single) if layout == "plain" else None}[layout])
    assert pipe.family.name == family
    if layout != "plain":  # tiny SD2 files without metadata cannot show v-prediction (see infer_prediction)
        assert pipe.unet.cfg.prediction == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    assert unet_error(pipe, cfg, ref) <= TOL


def test_wrong_heads_are_caught(tmp_path):
    """Negative control: the comparison is sharp enough to see a wrong head count (8 instead of 16-wide heads)."""
    cfg = UNETS["sd2_w32_hd16"][2]
    ref = randomize(diffusers.UNet2DConditionModel(**cfg), 0)
    _, single = export(tmp_path, ref, None, "v_prediction")
    pipe = athena.load(plain_copy(single))
    assert pipe.unet.cfg.head_dim is None and pipe.unet.cfg.num_heads == 8
    assert unet_error(pipe, cfg, ref) > 10 * TOL


def test_unet_odd_latent_size_runs(unet_case):
    """A latent that is not a multiple of 2**levels still gives an output of the input's size."""
    _, _, cfg, _, _, single = unet_case
    pipe = athena.load(single)
    x, t, context, extra = unet_inputs(cfg)
    y = adm_vector(extra["text_embeds"], extra["time_ids"]) if extra else None
    x = x[:, :, :13, :11]
    with torch.no_grad():
        assert pipe.unet(x, t, context, y).shape == x.shape


@pytest.mark.parametrize("name", sorted(VAES))
@pytest.mark.parametrize("layout", ["single", "diffusers"])
def test_vae_matches_diffusers(tmp_path, name, layout):
    n = len(VAES[name]["block_out_channels"])
    ref = randomize(diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                            up_block_types=("UpDecoderBlock2D",) * n, **VAES[name]), 3)
    unet = randomize(diffusers.UNet2DConditionModel(**UNETS["sd1_w32"][2]), 4)
    folder, single = export(tmp_path, unet, ref)
    vae = athena.load(single if layout == "single" else folder).vae
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        mean_want = ref.encode(img).latent_dist.mean
        mean_got = vae.encode(img).mean
        z = torch.randn(mean_want.shape, generator=g)
        dec_want, dec_got = ref.decode(z).sample, vae.decode(z)
    assert (mean_got - mean_want).abs().max().item() <= TOL
    assert (dec_got - dec_want).abs().max().item() <= TOL


@pytest.mark.parametrize("name", sorted(UNETS))
def test_diffusers_own_converter_reads_our_single_file(name, tmp_path, monkeypatch):
    """diffusers' `from_single_file` (its own LDM->diffusers code) loads the file we wrote to the same weights."""
    ref = randomize(diffusers.UNet2DConditionModel(**UNETS[name][2]), 5)
    folder, single = export(tmp_path, ref)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    back = diffusers.UNet2DConditionModel.from_single_file(str(single), config=str(folder), subfolder="unet",
                                                            local_files_only=True, torch_dtype=torch.float32)
    want = ref.state_dict()
    assert set(back.state_dict()) == set(want)
    assert all(torch.equal(t, want[k]) for k, t in back.state_dict().items())


@pytest.mark.parametrize("name", sorted(VAES))
def test_diffusers_own_converter_reads_our_vae(name, tmp_path, monkeypatch):
    """The same check for the VAE's LDM names (`first_stage_model.*`), mid attention included."""
    n = len(VAES[name]["block_out_channels"])
    ref = randomize(diffusers.AutoencoderKL(**VAES[name], down_block_types=("DownEncoderBlock2D",) * n,
                                            up_block_types=("UpDecoderBlock2D",) * n), 6)
    folder, single = export(tmp_path, randomize(diffusers.UNet2DConditionModel(**UNETS["sd1_w32"][2]), 4), ref)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    back = diffusers.AutoencoderKL.from_single_file(str(single), config=str(folder), subfolder="vae",
                                                    local_files_only=True, torch_dtype=torch.float32)
    want = ref.state_dict()
    assert set(back.state_dict()) == set(want)
    assert all(torch.equal(t.reshape(want[k].shape), want[k]) for k, t in back.state_dict().items())


def test_vae_sample_draws_like_diffusers(tmp_path):
    """`encode(img).sample(generator)` is mean + std * randn from that generator: with the same seed it is
    diffusers' `latent_dist.sample(generator)`, and different seeds differ."""
    ref = randomize(diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                            up_block_types=("UpDecoderBlock2D",) * 2, **VAES["vae_2lvl"]), 3)
    folder, _ = export(tmp_path, randomize(diffusers.UNet2DConditionModel(**UNETS["sd1_w32"][2]), 4), ref)
    vae = athena.load(folder).vae
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(img).latent_dist.sample(generator=torch.Generator().manual_seed(7))
        dist = vae.encode(img)
        got = dist.sample(torch.Generator().manual_seed(7))
        other = dist.sample(torch.Generator().manual_seed(8))
    assert (got - want).abs().max().item() <= TOL
    assert (got - other).abs().max() > 0.1 and not torch.allclose(got, dist.mean)
