"""Sampling nodes against the pipeline they wrap: KSampler equals `sample_latent`; custom sampling and
KSamplerAdvanced splits equal KSampler; batch_index noise; noise masks; progress and cancellation."""

import pytest
import torch

from athena.diffusion.samplers import SAMPLERS
from athena.errors import Cancelled
from athena.nodes import conditioning as C
from athena.nodes import loaders as L
from athena.nodes import sampling as S
from athena.pipelines.ksampler import prepare_noise, sampler_fn, sampler_names
from athena.pipelines.sample import noise_for, sample_latent


def setup(ctx, name="tiny_sd1.safetensors"):
    model, clip, vae = L.CheckpointLoaderSimple.run(ctx, name)
    pos, = C.CLIPTextEncode.run("a red fox", clip)
    neg, = C.CLIPTextEncode.run("", clip)
    return model, clip, vae, pos, neg


def empty(b=1):
    return {"samples": torch.zeros(b, 4, 4, 4)}


def ksampler(ctx, model, pos, neg, latent, **kw):
    args = {"seed": 3, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0} | kw
    return S.KSampler.run(ctx, model, args["seed"], args["steps"], args["cfg"], args["sampler_name"],
                          args["scheduler"], pos, neg, latent, args["denoise"])[0]


@pytest.mark.parametrize("sampler,cfg", [("euler", 7.0), ("dpmpp_2m", 1.0)])
def test_ksampler_equals_sample_latent(ctx, models_dir, sampler, cfg):
    model, _, _, pos, neg = setup(ctx)
    out = ksampler(ctx, model, pos, neg, empty(), sampler_name=sampler, cfg=cfg)["samples"]
    pipe = model.pipe
    ref = sample_latent(pipe.unet, pipe.encode_prompt("a red fox"), pipe.encode_prompt(""), torch.zeros(1, 4, 4, 4),
                        seed=3, steps=3, sampler=sampler, guidance=cfg)
    assert torch.equal(out, ref / pipe.family.latent_scale)  # raw VAE latent out, bit for bit
    assert ctx.reports == [(1, 3), (2, 3), (3, 3)]


def test_img2img_denoise_scales_latent_in_and_out(ctx):
    model, _, _, pos, neg = setup(ctx)
    raw = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    out = ksampler(ctx, model, pos, neg, {"samples": raw}, denoise=0.5)["samples"]
    pipe, scale = model.pipe, model.pipe.family.latent_scale
    ref = sample_latent(pipe.unet, pipe.encode_prompt("a red fox"), pipe.encode_prompt(""), raw * scale, seed=3,
                        steps=3, denoise=0.5)
    torch.testing.assert_close(out, ref / scale, rtol=1e-6, atol=1e-6)
    assert torch.equal(ksampler(ctx, model, pos, neg, {"samples": raw}, denoise=0.0)["samples"], raw)  # nothing to do


def test_custom_sampling_and_advanced_split_equal_ksampler(ctx):
    model, _, _, pos, neg = setup(ctx)
    full = ksampler(ctx, model, pos, neg, empty(), steps=4)["samples"]
    sigmas, = S.BasicScheduler.run(model, "normal", 4, 1.0)
    out, denoised = S.SamplerCustomAdvanced.run(ctx, S.RandomNoise.run(3)[0], S.CFGGuider.run(model, pos, neg, 7.0)[0],
                                                S.KSamplerSelect.run("euler")[0], sigmas, empty())
    assert torch.equal(out["samples"], full) and denoised["samples"].shape == full.shape
    out2, _ = S.SamplerCustom.run(ctx, model, True, 3, 7.0, pos, neg, S.KSamplerSelect.run("euler")[0], sigmas, empty())
    assert torch.equal(out2["samples"], full)
    high, low = S.SplitSigmas.run(sigmas, 2)
    part, _ = S.SamplerCustom.run(ctx, model, True, 3, 7.0, pos, neg, S.KSamplerSelect.run("euler")[0], high, empty())
    rest, _ = S.SamplerCustom.run(ctx, model, False, 3, 7.0, pos, neg, S.KSamplerSelect.run("euler")[0], low, part)
    torch.testing.assert_close(rest["samples"], full, rtol=1e-5, atol=1e-5)
    adv = {"steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    first, = S.KSamplerAdvanced.run(ctx, model, "enable", 3, *adv.values(), pos, neg, empty(), 0, 2, "enable")
    second, = S.KSamplerAdvanced.run(ctx, model, "disable", 3, *adv.values(), pos, neg, first, 2, 10000, "disable")
    torch.testing.assert_close(second["samples"], full, rtol=1e-5, atol=1e-5)
    assert torch.equal(first["samples"], part["samples"])


def test_batch_index_noise_is_the_full_batch_noise():
    full = prepare_noise((3, 4, 2, 2), 9)
    assert torch.equal(full, noise_for((3, 4, 2, 2), 9))
    assert torch.equal(prepare_noise((2, 4, 2, 2), 9, [2, 0]), full[[2, 0]])


def test_noise_mask_keeps_the_unmasked_latent(ctx):
    model, _, _, pos, neg = setup(ctx)
    raw = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 16:] = 1  # repaint the right half (pixel-size mask, as SetLatentNoiseMask stores it)
    out = ksampler(ctx, model, pos, neg, {"samples": raw, "noise_mask": mask})
    assert "noise_mask" in out
    torch.testing.assert_close(out["samples"][..., :2], raw[..., :2], rtol=1e-5, atol=1e-5)
    assert (out["samples"][..., 2:] - raw[..., 2:]).abs().mean() > 0.05


def test_cancel_stops_sampling_and_removes_loras(ctx):
    model, clip, _, pos, neg = setup(ctx)
    model, _ = L.LoraLoader.run(ctx, model, clip, "fox.safetensors", 1.0, 1.0)
    before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    ctx.cancel.cancel()
    with pytest.raises(Cancelled):
        ksampler(ctx, model, pos, neg, empty())
    assert all(torch.equal(v, model.pipe.unet.state_dict()[k]) for k, v in before.items())


def test_sampler_names_and_gpu_aliases():
    names = sampler_names()
    assert names[0] == "euler" and "dpmpp_2m_sde_gpu" in names and "dpmpp_3m_sde_gpu" in names
    assert all(n in names for n in SAMPLERS)
    assert sampler_fn("dpmpp_sde_gpu") is SAMPLERS["dpmpp_sde"]


def test_model_patches(ctx):
    model, _, _, pos, neg = setup(ctx)
    base = ksampler(ctx, model, pos, neg, empty())["samples"]
    rescaled, = S.RescaleCFG.run(model, 0.7)
    assert not torch.equal(ksampler(ctx, rescaled, pos, neg, empty())["samples"], base)
    v, = S.ModelSamplingDiscrete.run(model, "v_prediction", False)
    assert v.sampling.prediction == "v" and not torch.equal(ksampler(ctx, v, pos, neg, empty())["samples"], base)
    eps, = S.ModelSamplingDiscrete.run(model, "eps", False)
    assert torch.equal(ksampler(ctx, eps, pos, neg, empty())["samples"], base)
    turbo, = S.SDTurboScheduler.run(model, 2, 1.0)
    assert len(turbo) == 3 and turbo[-1] == 0 and turbo[0] > turbo[1]
