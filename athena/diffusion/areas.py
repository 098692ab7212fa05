"""Regional conditioning: several conditionings per CFG side, each on an area and/or mask, for part of the schedule.

ComfyUI's semantics (`comfy/samplers.py`, `calc_cond_batch`): every active entry is evaluated on its crop of the
latent; its x0 estimate is weighted by strength x mask (an area without a mask fades in over up to 8 latent pixels at
each edge that is not on the latent's border, so regions blend), summed into the full latent, and divided by the
summed weights. Entries outside their sigma range are skipped. CFG then combines the positive and negative results.
A single full-area entry per side gives exactly the numbers of a plain `CFGDenoiser`: same batched forward, weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn import functional as F
from typing_extensions import Self

from athena.diffusion.denoisers import CondModel, ModelSampling
from athena.diffusion.guidance import CFGDenoiser, rescaled

FEATHER = 8  # latent pixels over which an area's inner edges fade in (ComfyUI's "fuzz")


class RegionCond(Protocol):
    def cat(self, other: Self) -> Self: ...  # batch-concatenate self then other
    def expand(self, batch: int) -> Self: ...  # the same conditioning for each of `batch` samples
    def crop(self, rows: slice, cols: slice) -> Self: ...  # spatial conditioning (inpaint concat) cut to an area


@dataclass(frozen=True)
class Placement:
    """Where and when one conditioning acts, as ConditioningSetArea/SetMask/SetTimestepRange set it.
    `area` is (h, w, y, x) in latent pixels, or fractions of the latent when `percentage`."""

    area: tuple[float, float, float, float] | None = None
    percentage: bool = False
    strength: float = 1.0
    mask: Tensor | None = field(default=None, compare=False)  # (B, H, W) at any size; resized to the latent
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False  # the area becomes the mask's bounding box
    start_percent: float = 0.0  # of the schedule, 0 = the noisiest step
    end_percent: float = 1.0


@dataclass(frozen=True)
class Region:
    """A placement resolved against one latent size and one model's sigmas."""

    cond: Any
    area: tuple[int, int, int, int] | None  # (h, w, y, x) latent pixels; None = all of it
    strength: float = 1.0
    mask: Tensor | None = field(default=None, compare=False)  # (B, h, w) at the latent's size, times mask_strength
    sigma_start: float = math.inf  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float = 0.0

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def percent_to_sigma(ms: ModelSampling, percent: float) -> float:
    """The sigma reached `percent` of the way through the model's schedule (ComfyUI's `percent_to_sigma`)."""
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    if ms.prediction == "flow":
        return float(ms.sigma(torch.tensor([(1 - percent) * ms.multiplier]))[0])
    if ms.prediction == "edm":
        lo, hi = math.log(ms.sigma_min), math.log(ms.sigma_max)
        return math.exp(lo + (1 - percent) * (hi - lo))
    return float(ms.sigma(torch.tensor([(1 - percent) * (len(ms.sigmas) - 1)]))[0])


def resolve(cond: Any, place: Placement, ms: ModelSampling, size: tuple[int, int]) -> Region:
    """`place` on a latent of `size` (h, w): areas in latent pixels, the mask resized (bilinear), the range as sigmas."""
    H, W = size
    area: tuple[int, int, int, int] | None = None
    if place.area is not None:
        h, w, y, x = place.area
        if place.percentage:
            area = (max(1, round(h * H)), max(1, round(w * W)), round(y * H), round(x * W))
        else:
            area = (int(h), int(w), int(y), int(x))
    mask = None
    if place.mask is not None:
        mask = place.mask.float()
        mask = mask[None] if mask.ndim == 2 else mask.reshape(-1, *mask.shape[-2:])
        if tuple(mask.shape[-2:]) != (H, W):
            mask = F.interpolate(mask[:, None], size=(H, W), mode="bilinear")[:, 0]
        if place.set_area_to_bounds:
            area = _bounds(mask)
        mask = mask * place.mask_strength
    return Region(cond, area, place.strength, mask, percent_to_sigma(ms, place.start_percent),
                  percent_to_sigma(ms, place.end_percent))


def _bounds(mask: Tensor) -> tuple[int, int, int, int]:
    """The bounding box (h, w, y, x) of a mask's nonzero pixels over its batch, at least 8x8 (ComfyUI's minimum)."""
    ys, xs = torch.where(mask.abs().amax(dim=0) != 0)
    if len(ys) == 0:
        return (8, 8, 0, 0)  # an empty mask weighs nothing anywhere; the smallest area keeps it cheap
    y0, x0 = int(ys.min()), int(xs.min())
    return (max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0)


def mirror_areas(sides: list[list[Region]]) -> list[list[Region]]:
    """For every area entry of one side, give the other side an entry on the same area (with the conditioning of its
    smallest entry covering that area), so CFG compares like with like inside each region (ComfyUI's
    `create_cond_with_same_area_if_none`)."""
    out = [list(s) for s in sides]
    for k, side in enumerate(out):
        for region in side:  # entries appended to `side` by an earlier pass are visited too, as in ComfyUI
            for kk, other in enumerate(out):
                if kk != k and region.area is not None:
                    _mirror(other, region)
    return out


def _mirror(side: list[Region], region: Region) -> None:
    assert region.area is not None
    smallest: Region | None = None
    for r in side:
        if r.area is None:
            smallest = smallest or r
        elif _inside(region.area, r.area) and (smallest is None or smallest.area is None
                                                or math.prod(smallest.area[:2]) > math.prod(r.area[:2])):
            smallest = r
    if smallest is None or smallest.area == region.area:
        return
    side.append(replace(region, cond=smallest.cond))


def _inside(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether area `a` lies within area `b` (both (h, w, y, x))."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


# ---------------------------------------------------------------- weights and composition

def weight(region: Region, x: Tensor) -> tuple[tuple[slice, slice], Tensor]:
    """The crop of `x` (B, C, H, W) that `region` sees and its weight there (B, C, h, w)."""
    B, C, H, W = x.shape
    h, w, y, x0 = region.area if region.area is not None else (H, W, 0, 0)
    h, w = min(H - y, h), min(W - x0, w)
    rows, cols = slice(y, y + h), slice(x0, x0 + w)
    if region.mask is not None:
        m = region.mask[:B, rows, cols].to(x.device, torch.float32)
        mult = m[:, None].repeat(B // m.shape[0], C, 1, 1) * region.strength
    else:
        mult = torch.full((B, C, h, w), float(region.strength), device=x.device)
    if region.mask is None and region.area is not None:
        _feather(mult, 2, y, h, H)
        _feather(mult, 3, x0, w, W)
    return (rows, cols), mult


def _feather(mult: Tensor, dim: int, start: int, length: int, full: int) -> None:
    """Fade the weight in over the edges of an area that lie inside the latent (not on its border)."""
    n = min(FEATHER, mult.shape[dim] // 4)
    for t in range(n):
        ramp = (t + 1) / n
        if start != 0:
            mult.narrow(dim, t, 1).mul_(ramp)
        if start + length < full:
            mult.narrow(dim, length - 1 - t, 1).mul_(ramp)


def compose(model: CondModel, sides: Sequence[Sequence[Region]], x: Tensor, sigma: Tensor) -> list[Tensor]:
    """The weighted x0 estimate of each side (a list of regions) at (x, sigma). Entries with the same crop size and
    compatible conditioning run in one batched forward, in side order."""
    s = float(sigma[0])
    todo = [(k, r, *weight(r, x)) for k, side in enumerate(sides) for r in side if r.active(s)]
    out = [torch.zeros_like(x, dtype=torch.float32) for _ in sides]
    total = [torch.full_like(x, 1e-37, dtype=torch.float32) for _ in sides]  # ComfyUI's floor: empty sides give 0
    B = x.shape[0]
    while todo:
        first = todo[0]
        group = [t for t in todo if _batchable(t[1].cond, first[1].cond) and t[3].shape == first[3].shape]
        todo = [t for t in todo if not any(t is g for g in group)]
        conds = [g[1].cond.expand(B) for g in group]
        conds = [c if g[1].area is None else c.crop(*g[2]) for c, g in zip(conds, group)]
        batch = conds[0]
        for c in conds[1:]:
            batch = batch.cat(c)
        xs = torch.cat([x[:, :, rows, cols] for _, _, (rows, cols), _ in group])
        x0s = model(xs, sigma.repeat(len(group)), batch).chunk(len(group))
        for (k, _, (rows, cols), mult), x0 in zip(group, x0s):
            out[k][:, :, rows, cols] += x0 * mult
            total[k][:, :, rows, cols] += mult
    return [(o / t).to(x.dtype) for o, t in zip(out, total)]


def _batchable(a: Any, b: Any) -> bool:
    """Whether two conditionings can share a forward: the same optional parts (y, concat) and token width."""
    if a is b:
        return True

    def parts(c: Any) -> tuple[Any, ...]:
        context = getattr(c, "context", None)
        return (getattr(c, "y", None) is None, getattr(c, "concat", None) is None,
                None if context is None else context.shape[-1])
    return parts(a) == parts(b)


class RegionalCFG(CFGDenoiser):
    """Classifier-free guidance over regional conditioning: `cond`/`uncond` are lists of `Region`s composed with
    `compose`, then x0_u + scale (x0_c - x0_u). At scale 1 the negative side is not evaluated."""

    def __init__(self, model: CondModel, positive: Sequence[Region], negative: Sequence[Region], scale: float, *,
                 rescale: float = 0.0) -> None:
        positive, negative = mirror_areas([list(positive), list(negative)])
        super().__init__(model, positive, negative, scale, rescale=rescale)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.scale == 1.0 and not self.rescale:
            return compose(self.model, [self.cond], x, sigma)[0]
        return self.pair(x, sigma)[0]

    def pair(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x0_u, x0_c = compose(self.model, [self.uncond, self.cond], x, sigma)
        x0 = x0_u + self.scale * (x0_c - x0_u)
        if self.rescale:
            x0 = rescaled(x, sigma, x0, x0_c, self.rescale)
        return x0, x0_u
