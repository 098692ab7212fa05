"""Conditioning: ComfyUI's area/mask/timestep composition checked exactly with a stub model whose x0 is known per
entry, the list nodes, CLIPSetLastLayer, and SDXL encoders on the tiny SDXL model."""

import math
from dataclasses import dataclass

import torch

from athena.diffusion.areas import (
    Placement,
    Region,
    RegionalCFG,
    compose,
    mirror_areas,
    percent_to_sigma,
    resolve,
)
from athena.diffusion.denoisers import discrete_sampling
from athena.nodes import conditioning as C
from athena.nodes import loaders as L
from athena.nodes import sampling as S
from athena.pipelines.sample import sample_latent

MS = discrete_sampling()


@dataclass
class Const:
    """A stub conditioning: the stub model's x0 is `value` everywhere (per batch item)."""

    value: torch.Tensor  # (B,)

    def expand(self, batch):
        return Const(self.value.expand(batch)) if len(self.value) == 1 else self

    def cat(self, other):
        return Const(torch.cat([self.value, other.value]))

    def crop(self, rows, cols):
        return self


def stub(x, sigma, cond):
    return cond.value[:, None, None, None].expand_as(x).clone()


def const(v):
    return Const(torch.tensor([float(v)]))


def run(regions, sigma=1.0, size=(16, 16)):
    x = torch.zeros(1, 4, *size)
    return compose(stub, [regions], x, torch.tensor([sigma]))[0][0, 0]


def test_area_entries_average_by_weight_with_feathered_inner_edges():
    full = resolve(const(1), Placement(), MS, (16, 16))
    left = resolve(const(3), Placement(area=(16, 8, 0, 0)), MS, (16, 16))  # the left half
    out = run([full, left])
    # inside the left half both entries weigh 1: (1 + 3) / 2; the area's inner edge (x = 7) fades over
    # min(8, 8 // 4) = 2 columns: weight 1/2 at x = 7 (and 2/2 at x = 6); the right half is the full entry alone
    assert torch.allclose(out[:, :7], torch.tensor(2.0)) and torch.allclose(out[:, 8:], torch.tensor(1.0))
    assert torch.allclose(out[:, 7], torch.tensor((1 + 3 * 0.5) / 1.5))
    # strength scales the weight; an area alone leaves 0 outside it (ComfyUI's 1e-37 floor on the weights)
    strong = resolve(const(3), Placement(area=(16, 8, 0, 0), strength=3.0), MS, (16, 16))
    assert torch.allclose(run([full, strong])[:, 0], torch.tensor((1 + 9) / 4))
    assert torch.allclose(run([left])[:, 12], torch.tensor(0.0))


def test_percentage_area_and_mask_weights():
    half = resolve(const(3), Placement(area=(1.0, 0.5, 0.0, 0.5), percentage=True), MS, (16, 16))
    assert half.area == (16, 8, 0, 8)
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 0.5  # pixel mask, resized to the latent; masks are not feathered
    masked = resolve(const(5), Placement(mask=mask, mask_strength=2.0), MS, (16, 16))
    out = run([resolve(const(1), Placement(), MS, (16, 16)), masked])
    assert torch.allclose(out[:, :8], torch.tensor((1 + 5 * 1.0) / 2)) and torch.allclose(out[:, 8:], torch.tensor(1.0))
    bounds = resolve(const(5), Placement(mask=mask, set_area_to_bounds=True), MS, (16, 16))
    assert bounds.area == (16, 8, 0, 0)


def test_timestep_range_skips_entries_outside_it():
    late = resolve(const(5), Placement(start_percent=0.5), MS, (8, 8))  # only the second half of the schedule
    mid = percent_to_sigma(MS, 0.5)
    assert late.sigma_start == mid and late.sigma_end == 0 and math.isinf(percent_to_sigma(MS, 0.0))
    full = resolve(const(1), Placement(), MS, (8, 8))
    assert torch.allclose(run([full, late], sigma=mid * 2, size=(8, 8)), torch.tensor(1.0))
    assert torch.allclose(run([full, late], sigma=mid / 2, size=(8, 8)), torch.tensor(3.0))


def test_cfg_mirrors_areas_into_the_negative_and_equals_plain_cfg_without_areas():
    pos = [Region(const(2), None), Region(const(4), (8, 8, 0, 0))]
    neg = [Region(const(1), None)]
    _, mirrored = mirror_areas([pos, neg])
    assert [(r.cond.value.item(), r.area) for r in mirrored] == [(1.0, None), (1.0, (8, 8, 0, 0))]
    x, sigma = torch.zeros(1, 4, 16, 16), torch.tensor([1.0])
    guided = RegionalCFG(stub, [Region(const(2), None)], [Region(const(1), None)], 3.0)
    assert torch.equal(guided(x, sigma), torch.full_like(x, 1 + 3 * (2 - 1)))


def entries(ctx, name="tiny_sd1.safetensors"):
    model, clip, _ = L.CheckpointLoaderSimple.run(ctx, name)
    return model, clip


def test_list_nodes(ctx):
    _, clip = entries(ctx)
    a, = C.CLIPTextEncode.run("a cat", clip)
    b, = C.CLIPTextEncode.run("a dog", clip)
    both, = C.ConditioningCombine.run(a, b)
    assert len(both) == 2 and both[0] is a[0]
    avg, = C.ConditioningAverage.run(a, b, 0.25)
    torch.testing.assert_close(avg[0].cond.context, a[0].cond.context * 0.25 + b[0].cond.context * 0.75)
    cat, = C.ConditioningConcat.run(a, b)
    assert cat[0].cond.context.shape[1] == 154
    zero, = C.ConditioningZeroOut.run(a)
    assert not zero[0].cond.context.any()
    area, = C.ConditioningSetArea.run(a, 64, 128, 8, 16, 0.5)
    assert area[0].place.area == (16, 8, 2, 1) and area[0].place.strength == 0.5 and a[0].place.area is None
    ranged, = C.ConditioningSetTimestepRange.run(area, 0.2, 0.8)
    assert (ranged[0].place.start_percent, ranged[0].place.end_percent, ranged[0].place.area) == (0.2, 0.8, (16, 8, 2, 1))


def test_clip_set_last_layer(ctx):
    _, clip = entries(ctx)
    skipped, = C.CLIPSetLastLayer.run(clip, -2)
    e, = C.CLIPTextEncode.run("a cat", skipped)[0]
    assert torch.equal(e.cond.context, clip.pipe.encode_prompt("a cat", clip_skip=-2).context)


def test_area_prompt_changes_only_near_its_area(ctx):
    model, clip = entries(ctx)
    pos, = C.CLIPTextEncode.run("a cat", clip)
    neg, = C.CLIPTextEncode.run("", clip)
    other, = C.ConditioningSetArea.run(C.CLIPTextEncode.run("a dog", clip)[0], 64, 64, 0, 0, 1.0)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    base, = S.KSampler.run(ctx, model, 1, 2, 7.0, "euler", "normal", pos, neg, latent, 1.0)
    both, = S.KSampler.run(ctx, model, 1, 2, 7.0, "euler", "normal", C.ConditioningCombine.run(pos, other)[0], neg,
                           latent, 1.0)
    diff = (both["samples"] - base["samples"]).abs()[0].mean(0)
    assert diff[:8, :8].mean() > 0 and diff[12:, 12:].max() < diff[:8, :8].mean() * 0.5


def test_sdxl_text_encoders(ctx):
    model, clip = entries(ctx, "tiny_sdxl.safetensors")
    pos, = C.CLIPTextEncode.run("a cat", clip)
    neg, = C.CLIPTextEncode.run("", clip)
    latent = {"samples": torch.zeros(1, 4, 4, 4)}
    out, = S.KSampler.run(ctx, model, 2, 2, 5.0, "euler", "normal", pos, neg, latent, 1.0)
    pipe = model.pipe  # a plain text encode on SDXL takes its size conditioning from the latent (32 x 32 px)
    ref = sample_latent(pipe.unet, pipe.encode_prompt("a cat", width=32, height=32),
                        pipe.encode_prompt("", width=32, height=32), torch.zeros(1, 4, 4, 4), seed=2, steps=2,
                        guidance=5.0)
    assert torch.equal(out["samples"], ref / pipe.family.latent_scale)
    xl, = C.CLIPTextEncodeSDXL.run(clip, 32, 32, 0, 0, 32, 32, "a cat", "a cat")
    assert torch.equal(xl[0].cond.context, pos[0].cond.context)
    out_xl, = S.KSampler.run(ctx, model, 2, 2, 5.0, "euler", "normal", xl, neg, latent, 1.0)
    assert torch.equal(out_xl["samples"], out["samples"])
    split, = C.CLIPTextEncodeSDXL.run(clip, 1024, 1024, 0, 0, 1024, 1024, "a cat " * 40, "a dog")
    assert split[0].cond.context.shape[1] == 154  # clip_l padded with an empty window to clip_g's two
    out2, = S.KSampler.run(ctx, model, 2, 2, 5.0, "euler", "normal", split, neg, latent, 1.0)
    assert out2["samples"].shape == (1, 4, 4, 4) and not torch.equal(out2["samples"], out["samples"])
