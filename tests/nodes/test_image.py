"""Image nodes: loading (alpha -> mask, frames, fingerprint, validation), resizing, padding, cropping, batching,
blending and compositing, on tiny images."""

import numpy as np
import pytest
import torch
from PIL import Image

from athena.errors import ConfigError
from athena.nodes import image as I
from tests.nodes.helpers import make_ctx


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def write_rgba(path, alpha_value=64):
    a = np.zeros((8, 6, 4), dtype=np.uint8)
    a[..., 0] = 255
    a[..., 3] = 255
    a[:4, :, 3] = alpha_value  # top half partly transparent
    Image.fromarray(a, "RGBA").save(path)


# --------------------------------------------------------------------------- loading


def test_load_image_alpha_becomes_an_inverted_mask(ctx):
    write_rgba(ctx.services.folders.input / "a.png")
    image, mask = I.LoadImage.run(ctx, image="a.png")
    assert image.shape == (1, 8, 6, 3) and mask.shape == (1, 8, 6)
    torch.testing.assert_close(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(mask[0, 0, 0], torch.tensor(1 - 64 / 255))  # 1 = transparent = paint here
    assert mask[0, 4:].eq(0).all()


def test_load_image_without_alpha_gives_comfyui_placeholder_mask(ctx):
    Image.new("RGB", (5, 7), (0, 128, 255)).save(ctx.services.folders.input / "b.jpg", quality=100)
    image, mask = I.LoadImage.run(ctx, image="b.jpg")
    assert image.shape == (1, 7, 5, 3)
    assert mask.shape == (1, 64, 64) and not mask.any()


def test_load_animated_gif_gives_a_batch(ctx):
    frames = [Image.new("RGB", (4, 4), (c, 0, 0)) for c in (0, 120, 250)]
    frames[0].save(ctx.services.folders.input / "anim.gif", save_all=True, append_images=frames[1:])
    image, mask = I.LoadImage.run(ctx, image="anim.gif")
    assert image.shape[0] == 3 and mask.shape[0] == 3


def test_load_image_fingerprint_follows_the_file_content(ctx):
    path = ctx.services.folders.input / "a.png"
    write_rgba(path)
    services = ctx.services
    first = I.LoadImage.fingerprint(services, image="a.png")
    assert I.LoadImage.fingerprint(services, image="a.png") == first
    write_rgba(path, alpha_value=200)
    assert I.LoadImage.fingerprint(services, image="a.png") != first
    changed = I.LoadImage.fingerprint(services, image="a.png")
    assert I.LoadImageMask.fingerprint(services, image="a.png", channel="red") == changed


def test_load_image_validation_names_missing_and_escaping_files(ctx):
    write_rgba(ctx.services.folders.input / "a.png")
    assert I.LoadImage.validate_inputs(ctx.services, image="a.png") is None
    assert "missing.png" in I.LoadImage.validate_inputs(ctx.services, image="missing.png")
    assert "outside" in I.LoadImage.validate_inputs(ctx.services, image="../output/x.png")
    assert I.input_images(ctx.services) == ["a.png"]
    assert I.LoadImage.schema.info(ctx.services)["input"]["required"]["image"] == [["a.png"], {"image_upload": True}]


def test_load_image_from_the_output_folder_by_annotation(ctx):
    write_rgba(ctx.services.folders.output / "out.png")
    image, _ = I.LoadImage.run(ctx, image="out.png [output]")
    assert image.shape == (1, 8, 6, 3)


def test_load_image_mask_channels(ctx):
    write_rgba(ctx.services.folders.input / "a.png")
    (alpha,) = I.LoadImageMask.run(ctx, image="a.png", channel="alpha")
    (red,) = I.LoadImageMask.run(ctx, image="a.png", channel="red")
    (green,) = I.LoadImageMask.run(ctx, image="a.png", channel="green")
    assert alpha.shape == (1, 8, 6)
    assert red.eq(1).all() and green.eq(0).all() and alpha[0, 5].eq(0).all()


# --------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_scale_sizes(method):
    img = torch.rand(2, 16, 32, 3)
    (out,) = I.ImageScale.run(image=img, upscale_method=method, width=20, height=12, crop="disabled")
    assert out.shape == (2, 12, 20, 3)
    (by,) = I.ImageScaleBy.run(image=img, upscale_method=method, scale_by=0.5)
    assert by.shape == (2, 8, 16, 3)


def test_scale_zero_side_keeps_aspect_and_center_crop_does_not_stretch():
    img = torch.zeros(1, 16, 32, 3)
    img[:, :, 8:24] = 1  # a white centre square
    (out,) = I.ImageScale.run(image=img, upscale_method="nearest-exact", width=0, height=8, crop="disabled")
    assert out.shape == (1, 8, 16, 3)
    (sq,) = I.ImageScale.run(image=img, upscale_method="nearest-exact", width=8, height=8, crop="center")
    assert sq.eq(1).all()  # the centre crop is the white square


def test_lanczos_keeps_a_flat_image_flat():
    img = torch.full((1, 8, 8, 3), 0.3)
    (out,) = I.ImageScale.run(image=img, upscale_method="lanczos", width=13, height=5, crop="disabled")
    torch.testing.assert_close(out, torch.full((1, 5, 13, 3), 0.3))


def test_scale_to_total_pixels():
    img = torch.rand(1, 16, 32, 3)
    (out,) = I.ImageScaleToTotalPixels.run(image=img, upscale_method="bilinear", megapixels=0.01)
    # 0.01 * 1024**2 = 10485 pixels at 2:1 -> 145 x 72
    assert out.shape == (1, 72, 145, 3)


# --------------------------------------------------------------------------- canvas


def test_pad_for_outpaint_sizes_and_mask_values():
    img = torch.rand(1, 10, 10, 3)
    out, mask = I.ImagePadForOutpaint.run(image=img, left=4, top=0, right=0, bottom=8, feathering=2)
    assert out.shape == (1, 18, 14, 3) and mask.shape == (1, 18, 14)
    torch.testing.assert_close(out[:, :10, 4:], img)
    assert out[:, :, :4].eq(0.5).all() and out[:, 10:].eq(0.5).all()
    assert mask[0, :, :4].eq(1).all() and mask[0, 10:].eq(1).all()
    # inside: ((feathering - d) / feathering)**2 for d < feathering; d = column from the left pad,
    # rows-from-bottom counted from 1 (ComfyUI's H - i)
    torch.testing.assert_close(mask[0, 4, 4:8], torch.tensor([1.0, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(mask[0, 6:10, 9], torch.tensor([0.0, 0.0, 0.0, 0.25]))
    assert mask[0, 0, 6:].eq(0).all()  # no top padding: the top edge is not feathered


def test_pad_without_feathering_or_too_small_image():
    img = torch.rand(1, 3, 3, 3)
    _, mask = I.ImagePadForOutpaint.run(image=img, left=1, top=1, right=1, bottom=1, feathering=2)
    assert mask[0, 1:4, 1:4].eq(0).all() and mask.sum() == 25 - 9


def test_crop_keeps_origin_inside_and_cuts_at_edges():
    img = torch.rand(1, 8, 8, 3)
    (out,) = I.ImageCrop.run(image=img, width=4, height=4, x=6, y=20)
    assert out.shape == (1, 1, 2, 3)
    torch.testing.assert_close(out, img[:, 7:, 6:])


def test_empty_image_colour():
    (out,) = I.EmptyImage.run(width=3, height=2, batch_size=2, color=0xFF8000)
    assert out.shape == (2, 2, 3, 3)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))


def test_invert():
    (out,) = I.ImageInvert.run(image=torch.full((1, 2, 2, 3), 0.25))
    assert out.eq(0.75).all()


# --------------------------------------------------------------------------- combining


def test_batch_resizes_the_second_image():
    (out,) = I.ImageBatch.run(image1=torch.rand(2, 8, 8, 3), image2=torch.rand(1, 16, 32, 3))
    assert out.shape == (3, 8, 8, 3)


@pytest.mark.parametrize("mode,expect", [("normal", 0.8), ("multiply", 0.16), ("screen", 0.84),
                                         ("overlay", 0.32), ("difference", 0.0)])
def test_blend_modes(mode, expect):
    a, b = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 2, 3), 0.8)
    (out,) = I.ImageBlend.run(image1=a, image2=b, blend_factor=1.0, blend_mode=mode)
    torch.testing.assert_close(out, torch.full_like(a, expect))  # difference 0.2 - 0.8 clamps to 0
    (half,) = I.ImageBlend.run(image1=a, image2=b, blend_factor=0.5, blend_mode="normal")
    torch.testing.assert_close(half, torch.full_like(a, 0.5))


def test_composite_masked_pastes_through_the_mask_and_clips():
    dest, src = torch.zeros(1, 4, 4, 3), torch.ones(1, 2, 2, 3)
    mask = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])
    (out,) = I.ImageCompositeMasked.run(destination=dest, source=src, x=3, y=1, resize_source=False, mask=mask)
    torch.testing.assert_close(out[0, :, :, 0], torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    (full,) = I.ImageCompositeMasked.run(destination=dest, source=src, x=0, y=0, resize_source=True)
    assert full.eq(1).all() and not dest.any()


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConfigError, match="upscale method 'sharp'"):
        I.ImageScale.run(image=torch.rand(1, 4, 4, 3), upscale_method="sharp", width=2, height=2, crop="disabled")
