"""Latent nodes: VAE round trips on a tiny VAE, tiling, inpaint encoding, resizing, compositing and batches."""

import pytest
import torch

from athena.nodes import latent as L
from tests.nodes.helpers import tiny_vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def images(b=1, h=32, w=32, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_empty_latent_is_4_channels_at_an_eighth():
    (lat,) = L.EmptyLatentImage.run(width=64, height=48, batch_size=3)
    assert lat["samples"].shape == (3, 4, 6, 8) and not lat["samples"].any()


def test_encode_decode_shapes_and_ranges(vae):
    f = vae.vae.cfg.downscale
    (lat,) = L.VAEEncode.run(pixels=images(2), vae=vae)
    assert lat["samples"].shape == (2, 4, 32 // f, 32 // f)
    (img,) = L.VAEDecode.run(samples=lat, vae=vae)
    assert img.shape == (2, 32, 32, 3) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1


def test_encode_crops_odd_sizes_to_the_downscale_and_drops_alpha(vae):
    rgba = torch.rand(1, 33, 35, 4)
    (lat,) = L.VAEEncode.run(pixels=rgba, vae=vae)
    assert lat["samples"].shape[-2:] == (16, 17)
    # the centred crop of the RGB channels gives the same latent
    (same,) = L.VAEEncode.run(pixels=rgba[:, 0:32, 0:34, :3].clone(), vae=vae)
    torch.testing.assert_close(lat["samples"], same["samples"])


def test_tiled_decode_is_close_to_plain_decode(vae):
    z = {"samples": torch.randn(1, 4, 48, 40, generator=torch.Generator().manual_seed(1))}
    (full,) = L.VAEDecode.run(samples=z, vae=vae)
    (tiled,) = L.VAEDecodeTiled.run(samples=z, vae=vae, tile_size=64, overlap=32, temporal_size=64,
                                    temporal_overlap=8)
    assert tiled.shape == full.shape == (1, 96, 80, 3)
    # 2x2 tiles of 32 latent px: GroupNorm statistics per tile leave a few % (tests/models/test_vae_tiling.py)
    assert (tiled - full).abs().mean() / full.std() < 0.1
    (one,) = L.VAEDecodeTiled.run(samples=z, vae=vae, tile_size=96, overlap=0, temporal_size=64, temporal_overlap=8)
    torch.testing.assert_close(one, full)  # one tile covers it all: exactly the plain decode


def test_tiled_encode_is_close_to_plain_encode(vae):
    px = images(1, 96, 80, seed=3)
    (full,) = L.VAEEncode.run(pixels=px, vae=vae)
    (tiled,) = L.VAEEncodeTiled.run(pixels=px, vae=vae, tile_size=64, overlap=16, temporal_size=64,
                                    temporal_overlap=8)
    a, b = tiled["samples"], full["samples"]
    assert a.shape == b.shape and (a - b).abs().mean() / b.std() < 0.1


def test_tile_settings_are_made_valid():
    assert L.tiles(512, 64, 8) == (512, 64)
    assert L.tiles(64, 64, 8) == (64, 16)  # overlap at most a quarter tile, as ComfyUI
    assert L.tiles(100, 0, 8) == (96, 0)


def test_encode_for_inpaint_greys_the_mask_and_grows_it(vae):
    px = torch.zeros(1, 32, 32, 3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 10:14, 10:14] = 1
    (lat,) = L.VAEEncodeForInpaint.run(pixels=px, vae=vae, mask=mask, grow_mask_by=3)
    nm = lat["noise_mask"]
    assert nm.shape == (1, 1, 32, 32)
    assert nm[0, 0, 9:15, 9:15].eq(1).all() and nm.sum() == 36  # a 3x3 box grows the 4x4 square by one
    greyed = torch.zeros(1, 32, 32, 3)
    greyed[:, 10:14, 10:14] = 0.5
    (same,) = L.VAEEncode.run(pixels=greyed, vae=vae)
    torch.testing.assert_close(lat["samples"], same["samples"])


def test_set_noise_mask_reshapes_and_keeps_the_input():
    lat = {"samples": torch.zeros(1, 4, 4, 4)}
    (out,) = L.SetLatentNoiseMask.run(samples=lat, mask=torch.ones(8, 8))
    assert out["noise_mask"].shape == (1, 1, 8, 8) and "noise_mask" not in lat


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_sizes(method):
    lat = {"samples": torch.randn(2, 4, 8, 8), "noise_mask": torch.ones(2, 1, 64, 64)}
    (out,) = L.LatentUpscale.run(samples=lat, upscale_method=method, width=128, height=96, crop="disabled")
    assert out["samples"].shape == (2, 4, 12, 16) and out["noise_mask"] is lat["noise_mask"]
    (by,) = L.LatentUpscaleBy.run(samples=lat, upscale_method=method, scale_by=1.5)
    assert by["samples"].shape == (2, 4, 12, 12)


def test_latent_upscale_zero_side_keeps_aspect_and_minimum_64():
    lat = {"samples": torch.randn(1, 4, 8, 16)}
    (out,) = L.LatentUpscale.run(samples=lat, upscale_method="bilinear", width=0, height=128, crop="disabled")
    assert out["samples"].shape[-2:] == (16, 32)
    (small,) = L.LatentUpscale.run(samples=lat, upscale_method="bilinear", width=8, height=8, crop="center")
    assert small["samples"].shape[-2:] == (8, 8)
    (same,) = L.LatentUpscale.run(samples=lat, upscale_method="bilinear", width=0, height=0, crop="disabled")
    assert same is lat


def test_bislerp_keeps_norms_between_neighbours():
    # two pixels whose channel vectors are orthogonal unit vectors: halfway, slerp keeps unit length where a
    # linear blend would shrink it to 0.71
    x = torch.zeros(1, 2, 1, 2)
    x[0, 0, 0, 0] = 1
    x[0, 1, 0, 1] = 1
    out = L.ops.bislerp(x, 4, 1)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1, 1, 4))
    torch.testing.assert_close(L.ops.bislerp(x, 2, 1), x)  # same size: identity


def test_latent_composite_pastes_and_feathers():
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 4, 4)}
    (hard,) = L.LatentComposite.run(samples_to=to, samples_from=src, x=16, y=8, feather=0)
    expect = torch.zeros(8, 8)
    expect[1:5, 2:6] = 1
    torch.testing.assert_close(hard["samples"][0, 0], expect)
    (soft,) = L.LatentComposite.run(samples_to=to, samples_from=src, x=16, y=8, feather=16)
    # feather 2 latent px on every inner edge: ramps 1/2, 1 from each side, corners multiply
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    torch.testing.assert_close(soft["samples"][0, 0, 1:5, 2:6], ramp[:, None] * ramp[None, :])
    assert not to["samples"].any()  # the input is never changed


def test_latent_composite_clips_at_the_canvas_and_skips_flush_edges():
    to = {"samples": torch.zeros(1, 1, 4, 4)}
    src = {"samples": torch.ones(1, 1, 4, 4)}
    (out,) = L.LatentComposite.run(samples_to=to, samples_from=src, x=16, y=0, feather=16)
    # pasted at column 2; only its left edge is inside the canvas, so only it is feathered
    torch.testing.assert_close(out["samples"][0, 0, :, 2:], torch.tensor([[0.5, 1.0]]).expand(4, 2))
    assert not out["samples"][0, 0, :, :2].any()


def test_latent_blend_weighs_the_first_input():
    a, b = {"samples": torch.ones(1, 4, 2, 2)}, {"samples": torch.zeros(1, 4, 2, 2)}
    (out,) = L.LatentBlend.run(samples1=a, samples2=b, blend_factor=0.25)
    torch.testing.assert_close(out["samples"], torch.full((1, 4, 2, 2), 0.25))
    (resized,) = L.LatentBlend.run(samples1=a, samples2={"samples": torch.zeros(1, 4, 4, 4)}, blend_factor=0.5)
    assert resized["samples"].shape == (1, 4, 2, 2)


def test_from_batch_and_repeat_keep_batch_indices():
    lat = {"samples": torch.arange(4.0).view(4, 1, 1, 1), "noise_mask": torch.arange(2.0).view(2, 1, 1, 1)}
    (sub,) = L.LatentFromBatch.run(samples=lat, batch_index=1, length=5)
    assert sub["samples"].flatten().tolist() == [1, 2, 3] and sub["batch_index"] == [1, 2, 3]
    assert sub["noise_mask"].flatten().tolist() == [1, 0, 1]  # masks cycle over the batch
    (rep,) = L.RepeatLatentBatch.run(samples=sub, amount=2)
    assert rep["samples"].flatten().tolist() == [1, 2, 3, 1, 2, 3]
    assert rep["batch_index"] == [1, 2, 3, 4, 5, 6]
    assert rep["noise_mask"].shape[0] == 6
    (plain,) = L.RepeatLatentBatch.run(samples={"samples": torch.zeros(1, 4, 2, 2)}, amount=3)
    assert plain["samples"].shape[0] == 3 and "batch_index" not in plain


def test_vae_round_trip_in_a_graph_with_a_loaded_checkpoint(runtime):
    """EmptyImage -> VAEEncode -> VAEDecode -> SaveImage with the VAE of the shared tiny SD1 checkpoint."""
    from athena.graph.execute import Executor
    from athena.nodes import registry

    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
              "5": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": 0x336699}},
              "6": {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["4", 2]}},
              "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["4", 2]}},
              "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "rt"}}}
    result = Executor(registry(), runtime).run(prompt)
    assert result.status == "success", result.error or result.errors
    assert [e["filename"] for e in result.outputs["8"]["images"]] == ["rt_00001_.png", "rt_00002_.png"]
    from PIL import Image
    with Image.open(runtime.folders.output / "rt_00001_.png") as img:
        assert img.size == (32, 24)
