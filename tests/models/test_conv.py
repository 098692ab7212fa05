"""`layers.Conv2d` equals F.conv2d on both of its CPU paths (direct, and im2col + GEMM for wide layers on few pixels)."""

import pytest
import torch
import torch.nn.functional as F

from athena.models.layers import Conv2d, gemm_conv2d


@pytest.mark.parametrize("kernel,stride,padding,dilation,hw", [
    (3, 1, 1, 1, (4, 4)),  # ResBlock conv at SD1.x's 4x4 level
    (3, 2, 1, 1, (8, 8)),  # Downsample
    (3, 1, 2, 2, (5, 7)),  # dilated, odd and non-square
    (2, 1, 0, 1, (6, 3)),  # even kernel, no padding
    (1, 1, 0, 1, (4, 4)),  # 1x1: stays direct
])
def test_gemm_conv_equals_direct_conv_with_gradients(kernel, stride, padding, dilation, hw):
    torch.manual_seed(0)
    conv = Conv2d(1024, 1024, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 1024, *hw, requires_grad=True)
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    want = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_gemm_conv_without_bias():
    torch.manual_seed(0)
    x, w = torch.randn(1, 8, 5, 5), torch.randn(16, 8, 3, 3)
    torch.testing.assert_close(gemm_conv2d(x, w, None, (1, 1), (1, 1), (1, 1)), F.conv2d(x, w, None, 1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cin,cout,hw,batch,gemm", [
    (1280, 1280, 8, 2, True),  # SD1.x 8x8 level: weight-bound
    (2560, 1280, 4, 2, True),
    (1280, 1280, 16, 2, True),  # 512 output pixels: the edge
    (1280, 1280, 16, 4, False),  # 1024 pixels: direct wins
    (320, 320, 64, 2, False),  # SD1.x 64x64 level
    (640, 1280, 8, 2, False),
])
def test_gemm_is_chosen_only_for_wide_layers_on_few_pixels(cin, cout, hw, batch, gemm):
    conv = Conv2d(cin, cout, 3, padding=1, device="meta")
    assert conv._gemm_wins(torch.empty(batch, cin, hw, hw), conv.weight, (1, 1)) is gemm
    assert not conv._gemm_wins(torch.empty(batch, cin, hw, hw, dtype=torch.bfloat16), conv.weight, (1, 1))
