"""Mask nodes against small hand-computed examples (and scipy's grey morphology, which ComfyUI's GrowMask uses)."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from athena.errors import ConfigError
from athena.nodes import mask as M


def dot(h=5, w=5):
    m = torch.zeros(1, h, w)
    m[0, h // 2, w // 2] = 1
    return m


def test_grow_tapered_is_a_diamond_and_square_is_a_box():
    (diamond,) = M.GrowMask.run(mask=dot(), expand=1, tapered_corners=True)
    plus = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(diamond[0, 1:4, 1:4], plus)
    assert diamond.sum() == 5
    (box,) = M.GrowMask.run(mask=dot(), expand=2, tapered_corners=False)
    assert box.sum() == 25
    (two,) = M.GrowMask.run(mask=dot(), expand=2, tapered_corners=True)
    assert two.sum() == 13  # |dy| + |dx| <= 2


def test_negative_expand_shrinks():
    m = torch.zeros(1, 6, 6)
    m[0, 1:5, 1:5] = 1
    (out,) = M.GrowMask.run(mask=m, expand=-1, tapered_corners=False)
    expect = torch.zeros(6, 6)
    expect[2:4, 2:4] = 1
    torch.testing.assert_close(out[0], expect)


@pytest.mark.parametrize("expand,tapered", [(2, True), (3, False), (-2, True), (-1, False)])
def test_grow_matches_scipy_grey_morphology(expand, tapered):
    m = torch.rand(2, 9, 7, generator=torch.Generator().manual_seed(0))
    c = 0 if tapered else 1
    kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    op = scipy.ndimage.grey_dilation if expand > 0 else scipy.ndimage.grey_erosion
    expect = []
    for a in m.numpy():
        for _ in range(abs(expand)):
            a = op(a, footprint=kernel)
        expect.append(torch.from_numpy(a))
    (out,) = M.GrowMask.run(mask=m, expand=expand, tapered_corners=tapered)
    torch.testing.assert_close(out, torch.stack(expect))


def test_feather_ramps_each_edge_linearly():
    ones = torch.ones(1, 3, 6)
    (left,) = M.FeatherMask.run(mask=ones, left=3, top=0, right=0, bottom=0)
    torch.testing.assert_close(left[0, 0], torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1]))
    (right,) = M.FeatherMask.run(mask=ones, left=0, top=0, right=2, bottom=0)
    torch.testing.assert_close(right[0, 1], torch.tensor([1, 1, 1, 1, 1, 0.5]))
    (both,) = M.FeatherMask.run(mask=ones, left=0, top=1, right=0, bottom=3)
    torch.testing.assert_close(both[0, :, 0], torch.tensor([1.0, 2 / 3, 1 / 3]))  # top 1 px is a no-op ramp
    assert ones.eq(1).all()


def test_feather_clamps_to_the_mask_size():
    (out,) = M.FeatherMask.run(mask=torch.ones(4, 4), left=10, top=0, right=0, bottom=0)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.25, 0.5, 0.75, 1.0]))


def test_image_mask_conversions_and_solid_and_invert():
    img = torch.rand(2, 4, 5, 3)
    (green,) = M.ImageToMask.run(image=img, channel="green")
    torch.testing.assert_close(green, img[..., 1])
    with pytest.raises(ConfigError, match="no 'alpha' channel"):
        M.ImageToMask.run(image=img, channel="alpha")
    (back,) = M.MaskToImage.run(mask=green)
    assert back.shape == (2, 4, 5, 3) and torch.equal(back[..., 2], green)
    (solid,) = M.SolidMask.run(value=0.25, width=6, height=3)
    assert solid.shape == (1, 3, 6) and solid.eq(0.25).all()
    (inv,) = M.InvertMask.run(mask=solid)
    assert inv.eq(0.75).all()
