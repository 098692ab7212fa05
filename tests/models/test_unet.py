"""U-Net behaviour with the tiny presets: shapes, dtypes, determinism, the SDXL vector, config validation."""

import pytest
import torch

from athena.errors import ConfigError
from athena.models.unet import TINY_SD1, TINY_SDXL, UNET_PRESETS, UNet, UNetConfig, adm_vector


@pytest.mark.parametrize("name", ["tiny_sd1", "tiny_sd2", "tiny_sdxl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_shape_dtype_determinism(name, dtype):
    cfg = UNET_PRESETS[name]
    torch.manual_seed(0)
    unet = UNet(cfg, dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([1.0, 999.0])
    context = torch.randn(2, 5, cfg.context_dim, generator=g)
    y = torch.randn(2, cfg.adm_in_channels, generator=g) if cfg.adm_in_channels else None
    with torch.no_grad():
        a, b = unet(x, t, context, y), unet(x, t, context, y)
    assert a.shape == x.shape and a.dtype == dtype and torch.equal(a, b) and a.isfinite().all()


def test_low_precision_tracks_fp32():
    torch.manual_seed(0)
    unet = UNet(TINY_SD1).eval()
    x, t, c = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 3, 32)
    with torch.no_grad():
        ref = unet(x, t, c)
        low = unet.to(torch.bfloat16)(x, t, c).float()
    assert ((low - ref).abs().max() / ref.abs().max()).item() < 0.05


def test_sdxl_requires_y_and_builds_it_like_sgm():
    unet = UNet(TINY_SDXL)
    with pytest.raises(ValueError, match="adm_in_channels"):
        unet(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 2, 32))
    y = adm_vector(torch.randn(2, 32), torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2))
    assert y.shape == (2, TINY_SDXL.adm_in_channels)


@pytest.mark.parametrize("bad,match", [
    (dict(transformer_depth=(1,)), "one depth per level"),
    (dict(num_heads=None), "exactly one of num_heads"),
    (dict(model_channels=48), "multiple of 32"),
    (dict(num_heads=7), "not divisible by num_heads"),
])
def test_config_errors_name_the_problem(bad, match):
    with pytest.raises(ConfigError, match=match):
        UNetConfig(**{**TINY_SD1.__dict__, **bad})
