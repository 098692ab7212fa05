"""Layout and family detection from keys and shapes, config inference, and the documented load errors."""

from dataclasses import replace

import pytest
import torch

import athena
from athena.checkpoints import detect
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.safetensors import SafetensorsFile, save_file
from athena.errors import CheckpointError
from athena.models.unet import SD15, SD21, SDXL, SDXL_REFINER, TINY_SD1, TINY_SD2, TINY_SDXL, UNET_PRESETS, UNet
from athena.models.vae import SD_VAE, TINY_VAE, VAE_PRESETS, AutoencoderKL

FAMILY_OF = {"sd15": "sd1", "sd21": "sd2", "sd21_base": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl_refiner",
             "tiny": "sd1", "tiny_sd1": "sd1", "tiny_sd2": "sd2", "tiny_sdxl": "sdxl", "tiny_sdxl_refiner": "sdxl_refiner"}
CONVENTIONAL = ("sd15", "sd21", "sd21_base", "sdxl", "sdxl_refiner", "tiny", "tiny_sd1")  # heads follow the family rule


def unet_shapes(cfg):
    return {k: tuple(v.shape) for k, v in UNet(cfg, device="meta").state_dict().items()}


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_every_unet_preset_is_classified(name):
    """Full-size presets included, built on `meta`; the architecture is read back from the shapes."""
    cfg = UNET_PRESETS[name]
    shapes = unet_shapes(cfg)
    family = detect.detect_family(shapes)
    assert family == FAMILY_OF[name]
    inferred = detect.infer_unet_config(shapes, family)
    if name in CONVENTIONAL:
        assert inferred == replace(cfg, prediction="eps")
    else:  # tiny SD2/SDXL use 16-wide heads, which weights cannot show: everything else must match
        assert replace(inferred, num_heads=cfg.num_heads, head_dim=cfg.head_dim) == replace(cfg, prediction="eps")


@pytest.mark.parametrize("name", sorted(VAE_PRESETS))
def test_every_vae_preset_is_inferred(name):
    cfg = VAE_PRESETS[name]
    shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(cfg, device="meta").state_dict().items()}
    assert detect.detect_layout(shapes) == "ldm_vae"
    assert detect.infer_vae_config(shapes) == cfg


@pytest.mark.parametrize("keys,layout", [
    ({"model.diffusion_model.input_blocks.0.0.weight"}, "ldm"),
    ({"input_blocks.0.0.weight", "out.2.weight"}, "ldm_unet"),
    ({"conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"}, "diffusers_unet"),
    ({"encoder.conv_in.weight", "decoder.up.0.block.0.conv1.weight"}, "ldm_vae"),
    ({"encoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"}, "diffusers_vae"),
])
def test_layouts(keys, layout):
    assert detect.detect_layout(dict.fromkeys(keys)) == layout


def test_unknown_layout_names_what_it_reads():
    with pytest.raises(CheckpointError, match="not a recognised SD U-Net or VAE layout"):
        detect.detect_layout({"foo.weight": None})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "sd1": random_checkpoint(d / "sd1.safetensors", "sd1", TINY_SD1, TINY_VAE, {"clip_l": (64, 2)}),
        "sd2": random_checkpoint(d / "sd2.safetensors", "sd2", TINY_SD2, TINY_VAE, {"clip_h": (64, 2)}, metadata=True),
        "sdxl": random_checkpoint(d / "sdxl.safetensors", "sdxl", TINY_SDXL, TINY_VAE, {"clip_l": (64, 2), "clip_g": (64, 2)}, metadata=True),
    }


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_files_load_with_text_keys_kept(files, family):
    pipe = athena.load(files[family], dtype="bf16")
    assert pipe.family.name == family and pipe.dtype == torch.bfloat16 and pipe.vae is not None
    assert pipe.text is not None and [e.spec.name for e in pipe.text.encoders] == [n for n, _ in pipe.family.text_encoders]


def test_wrong_family_names_the_detected_one(files):
    with pytest.raises(CheckpointError, match=r"SDXL checkpoint, not SD1\.x.*family='sdxl'"):
        athena.load(files["sdxl"], family="sd1")


def test_missing_keys_are_grouped_by_prefix(files, tmp_path):
    with SafetensorsFile(files["sd1"]) as f:
        sd = {k: f.get(k) for k in f if not k.startswith("model.diffusion_model.input_blocks.4.")}
    save_file(sd, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as e:
        athena.load(tmp_path / "broken.safetensors")
    msg = str(e.value)
    assert "keys missing under 'input_blocks.4.'" in msg and len(msg.splitlines()) < 12


def test_unexpected_keys_are_grouped_by_prefix(files, tmp_path):
    with SafetensorsFile(files["sd1"]) as f:
        sd = {k: f.get(k) for k in f}
    sd.update({f"model.diffusion_model.input_blocks.9.{i}.weight": torch.zeros(2) for i in range(3)})
    save_file(sd, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError) as e:
        athena.load(tmp_path / "extra.safetensors")
    msg = str(e.value)
    assert "3 keys unexpected under 'input_blocks.9.'" in msg and "SD1.x U-Net" in msg and len(msg.splitlines()) < 12


def test_truncated_checkpoint_is_a_clear_error(files, tmp_path):
    data = files["sd1"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        athena.load(tmp_path / "cut.safetensors")


def test_v_pred_key_marks_v_prediction(files, tmp_path):
    with SafetensorsFile(files["sd1"]) as f:
        sd = {k: f.get(k) for k in f}
    save_file({**sd, "v_pred": torch.tensor([])}, tmp_path / "v.safetensors")
    assert athena.load(tmp_path / "v.safetensors").unet.cfg.prediction == "v"


def test_full_size_presets_are_the_real_sizes():
    count = lambda cfg: sum(p.numel() for p in UNet(cfg, device="meta").parameters())  # noqa: E731
    assert count(SD15) == 859_520_964 and len(unet_shapes(SD15)) == 686
    assert round(count(SDXL) / 1e9, 3) == 2.567 and len(unet_shapes(SDXL)) == 1680
    assert len(unet_shapes(SD21)) == 686 and unet_shapes(SD21)["input_blocks.1.1.proj_in.weight"] == (320, 320)
    assert unet_shapes(SDXL_REFINER)["label_emb.0.0.weight"] == (1536, 2560)
    assert len(AutoencoderKL(SD_VAE, device="meta").state_dict()) == 248


@pytest.mark.parametrize("diffusers_names", [False, True])
def test_standalone_vae_files_load(tmp_path, diffusers_names):
    """A VAE-only file (as in models/vae/) in either naming is detected and loads; as a pipeline it says what is missing."""
    from athena.checkpoints.keymaps import sd_vae
    from athena.checkpoints.load import open_checkpoint
    vae = AutoencoderKL(TINY_VAE).eval()
    sd = vae.state_dict()
    if diffusers_names:
        sd = {d: sd[l].reshape(sd[l].shape[:2]) if l in sd_vae.CONV_AS_LINEAR else sd[l]
              for d, l in sd_vae.diffusers_to_ldm(TINY_VAE).items()}
    save_file(sd, tmp_path / "vae.safetensors")
    ckpt = open_checkpoint(tmp_path / "vae.safetensors")
    assert ckpt.layout == ("diffusers_vae" if diffusers_names else "ldm_vae") and ckpt.vae_config == TINY_VAE
    loaded = ckpt.load_vae()
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(img).mean, vae.encode(img).mean)
    with pytest.raises(CheckpointError, match="has no U-Net"):
        athena.load(tmp_path / "vae.safetensors")


@pytest.mark.parametrize("std,prediction", [(0.2, "v"), (0.02, "eps")])
def test_sd2_v_prediction_heuristic_on_full_size_layout(std, prediction):
    """SD2 768-v and 512-base files have identical keys; the spread of one norm bias tells them apart (as in ComfyUI)."""
    from athena.checkpoints.io import DictWeights
    sd = dict(UNet(SD21, device="meta").state_dict())
    key = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    sd[key] = torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0)) * std
    w = DictWeights(sd)
    assert detect.unet_config_for(w, "sd2", w) == replace(SD21, prediction=prediction)
