"""Tensor operations behind the image, mask and latent nodes, on ComfyUI's layouts.

IMAGE is (B, H, W, C) in [0, 1], channels last; MASK is (B, H, W) in [0, 1]; latents and anything resized are
(B, C, H, W). The rules (rounding, which edge a ramp starts from, what happens off the canvas) follow ComfyUI,
because a workflow moved between the two must give the same picture; where ComfyUI has an off-by-one that is
plainly unintended, the docstring says what we do instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from athena.errors import ConfigError

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROPS = ("disabled", "center")
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")

# --------------------------------------------------------------------------- resizing


def resize(x: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """(B, C, H, W) -> (B, C, height, width). `crop="center"` first cuts the source to the target's aspect ratio,
    so nothing is stretched (ComfyUI's `common_upscale`)."""
    if width < 1 or height < 1:
        raise ConfigError(f"cannot resize to {width}x{height}; both sides must be at least 1 pixel")
    if crop == "center":
        h, w = x.shape[-2:]
        old, new = w / h, width / height
        dx = round((w - w * new / old) / 2) if old > new else 0
        dy = round((h - h * old / new) / 2) if old < new else 0
        x = x[..., dy:h - dy, dx:w - dx]
    elif crop != "disabled":
        raise ConfigError(f"crop {crop!r} is not one of {CROPS}")
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ConfigError(f"upscale method {method!r} is not one of {LATENT_METHODS + ('lanczos',)}")
    return F.interpolate(x, size=(height, width), mode=method)


def resize_image(image: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """`resize` for a channels-last IMAGE."""
    return resize(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def _neighbours(n_old: int, n_new: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each output sample along one axis: the two source indices around it and the fraction between them
    (half-pixel centres, clamped at the borders, as bilinear interpolation places them)."""
    pos = ((torch.arange(n_new, device=device, dtype=torch.float64) + 0.5) * n_old / n_new - 0.5).clamp(0, n_old - 1)
    lo = pos.floor().long()
    return lo, (lo + 1).clamp(max=n_old - 1), (pos - lo).float()


def _slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of the channel vectors a, b (N, C) by t (N, 1); the length is interpolated
    linearly. Nearly parallel or opposite vectors fall back to a straight lerp (the angle is then meaningless)."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(dot)
    so = torch.sin(omega).clamp_min(1e-12)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so
    out = direction * (na * (1 - t) + nb * t)
    degenerate = (dot.abs() > 1 - 1e-5) | (na == 0) | (nb == 0)
    return torch.where(degenerate, a * (1 - t) + b * t, out)


def _bislerp_axis(x: Tensor, n_new: int, dim: int) -> Tensor:
    """Resize (B, C, H, W) along `dim` (2 or 3) by slerping the two neighbouring channel vectors."""
    lo, hi, t = _neighbours(x.shape[dim], n_new, x.device)
    a, b = x.index_select(dim, lo).movedim(1, -1), x.index_select(dim, hi).movedim(1, -1)  # channels last
    shape = [1, 1, 1, 1]
    shape[dim - 1] = n_new  # the resized axis moved down by one when the channels went last
    t = t.view(shape).expand(*a.shape[:-1], 1)
    c = a.shape[-1]
    return _slerp(a.reshape(-1, c), b.reshape(-1, c), t.reshape(-1, 1)).reshape(a.shape).movedim(-1, 1)


def bislerp(x: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resizing that slerps between neighbouring channel vectors instead of averaging them, keeping a
    latent's per-pixel norm (ComfyUI's "bislerp"; width first, then height). Parallel vectors are lerped, where
    ComfyUI keeps the first one, so the norm still interpolates."""
    dtype = x.dtype
    x = _bislerp_axis(x.float(), width, 3)
    return _bislerp_axis(x, height, 2).to(dtype)


def lanczos(x: Tensor, width: int, height: int) -> Tensor:
    """Pillow's Lanczos (a=3, antialiased when shrinking) on each channel in float, clamped to [0, 1]. ComfyUI
    rounds to 8 bits first; working in float keeps what the 8 bits would lose (at most 1/255)."""
    out = torch.empty(*x.shape[:2], height, width)
    for i, image in enumerate(x.detach().float().cpu().numpy()):
        for c, plane in enumerate(image):
            resized = Image.fromarray(plane, mode="F").resize((width, height), Image.Resampling.LANCZOS)
            out[i, c] = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy())
    return out.clamp(0, 1).to(x.device, x.dtype)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return round(width * scale), round(height * scale)


def total_pixels_size(width: int, height: int, megapixels: float) -> tuple[int, int]:
    """The size with the aspect ratio of (width, height) and about `megapixels` * 1024**2 pixels."""
    return scaled_size(width, height, math.sqrt(int(megapixels * 1024 * 1024) / (width * height)))


# --------------------------------------------------------------------------- batches


def fit_batch(x: Tensor, n: int) -> Tensor:
    """x with its batch repeated (cycling) or cut to n."""
    if x.shape[0] == n:
        return x
    return x.repeat(math.ceil(n / x.shape[0]), *([1] * (x.ndim - 1)))[:n]


def as_masks(mask: Tensor) -> Tensor:
    """Any (H, W), (B, H, W) or (B, 1, H, W) mask as (B, H, W)."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def with_alpha_like(dest: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Match the channel counts of two IMAGEs: the source drops an alpha the destination lacks, the destination
    gains an opaque alpha when only the source has one."""
    if dest.shape[-1] < source.shape[-1]:
        return dest, source[..., :dest.shape[-1]]
    if dest.shape[-1] > source.shape[-1]:
        return F.pad(dest, (0, 1), value=1.0), source
    return dest, source


# --------------------------------------------------------------------------- compositing


def paste(dest: Tensor, source: Tensor, x: int, y: int, mask: Tensor | None = None, resize_source: bool = False) -> Tensor:
    """A copy of dest (B, C, H, W) with source pasted at (x, y) through mask (1 = source), clipped to the
    canvas; x and y may be negative. The source and mask are resized (bilinear) to the source's size and
    their batches cycled to the destination's (ComfyUI's `composite`)."""
    out = dest.clone()
    source = source.to(out)
    if resize_source:
        source = F.interpolate(source, size=out.shape[-2:], mode="bilinear")
    source = fit_batch(source, out.shape[0])
    sh, sw = source.shape[-2:]
    m = torch.ones_like(source[:, :1]) if mask is None else fit_batch(
        F.interpolate(mask.to(out).reshape(-1, 1, *mask.shape[-2:]), size=(sh, sw), mode="bilinear"), out.shape[0])
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, out.shape[-1]), min(y + sh, out.shape[-2])
    if x1 <= x0 or y1 <= y0:
        return out
    src = (slice(None), slice(None), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    region = out[..., y0:y1, x0:x1]
    out[..., y0:y1, x0:x1] = m[src] * source[src] + (1 - m[src]) * region
    return out


def edge_ramp(h: int, w: int, feather: int, top: bool, bottom: bool, left: bool, right: bool) -> Tensor:
    """(h, w) weights rising linearly from 1/feather to 1 over `feather` pixels at the chosen edges; corners
    multiply (LatentComposite's feathering)."""
    def axis(n: int, lo: bool, hi: bool) -> Tensor:
        i = torch.arange(n, dtype=torch.float32)
        r = torch.ones(n)
        if lo:
            r = r * ((i + 1) / feather).clamp(max=1)
        if hi:
            r = r * ((n - i) / feather).clamp(max=1)
        return r
    return axis(h, top, bottom)[:, None] * axis(w, left, right)[None, :]


def composite_latent(to: Tensor, source: Tensor, x: int, y: int, feather: int) -> Tensor:
    """source pasted into a copy of `to` at latent pixel (x, y), its inner edges feathered over `feather` latent
    pixels (edges flush with the canvas are not feathered)."""
    H, W = to.shape[-2:]
    source = source[..., :max(H - y, 0), :max(W - x, 0)]
    h, w = source.shape[-2:]
    if feather == 0 or h == 0 or w == 0:
        mask = None
    else:
        mask = edge_ramp(h, w, feather, y != 0, y + h < H, x != 0, x + w < W)[None, None].expand(source.shape[0], 1, h, w)
    return paste(to, source, x, y, mask)


def blend(a: Tensor, b: Tensor, factor: float, mode: str) -> Tensor:
    """ImageBlend: a mixed with `mode`(a, b) by factor, clamped to [0, 1]; b is resized (bicubic, centre crop)
    to a's size first."""
    if a.shape != b.shape:
        b = resize_image(b, a.shape[2], a.shape[1], "bicubic", "center")
    if mode == "normal":
        mixed = b
    elif mode == "multiply":
        mixed = a * b
    elif mode == "screen":
        mixed = 1 - (1 - a) * (1 - b)
    elif mode == "overlay":
        mixed = torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    elif mode == "soft_light":  # the W3C compositing formula
        d = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, a.sqrt())
        mixed = torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (d - a))
    elif mode == "difference":
        mixed = a - b
    else:
        raise ConfigError(f"blend mode {mode!r} is not one of {BLEND_MODES}")
    return (a * (1 - factor) + mixed * factor).clamp(0, 1)


def pad_for_outpaint(image: Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[Tensor, Tensor]:
    """The IMAGE on a grey (0.5) canvas grown by the given pixels, and the (1, H', W') mask of what to paint:
    1 on the new border, and inside the old image ((feathering - d) / feathering)**2 within `feathering`
    pixels of a padded side (d = distance to it). No feathering if the image is not over twice as large."""
    B, H, W, C = image.shape
    canvas = torch.full((B, H + top + bottom, W + left + right, C), 0.5, dtype=torch.float32)
    canvas[:, top:top + H, left:left + W] = image
    mask = torch.ones(H + top + bottom, W + left + right)
    inner = torch.zeros(H, W)
    if 0 < feathering and 2 * feathering < min(H, W):
        i, j = torch.arange(H)[:, None], torch.arange(W)[None, :]
        d = torch.full((H, W), max(H, W))
        for pad, dist in ((top, i), (bottom, H - i), (left, j), (right, W - j)):
            if pad:
                d = torch.minimum(d, dist.expand(H, W))
        inner = torch.where(d < feathering, ((feathering - d) / feathering) ** 2, 0.0)
    mask[top:top + H, left:left + W] = inner
    return canvas, mask[None]


def solid_image(width: int, height: int, batch: int, color: int) -> Tensor:
    """A (batch, height, width, 3) IMAGE of the 0xRRGGBB colour."""
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255
    return rgb.expand(batch, height, width, 3).clone()


def crop_image(image: Tensor, width: int, height: int, x: int, y: int) -> Tensor:
    """ImageCrop: the window at (x, y), its origin kept inside the image and its size cut at the edges."""
    x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width]


# --------------------------------------------------------------------------- masks


def solid_mask(value: float, width: int, height: int) -> Tensor:
    return torch.full((1, height, width), float(value), dtype=torch.float32)


def _dilate(m: Tensor, tapered: bool) -> Tensor:
    """One step of grey dilation of (B, H, W) by a 3x3 square, or a plus shape when `tapered`."""
    if not tapered:
        return F.max_pool2d(m[:, None], 3, stride=1, padding=1)[:, 0]
    p = F.pad(m, (1, 1, 1, 1), value=float("-inf"))
    H, W = m.shape[-2:]
    shifts = (p[:, 1:H + 1, 1:W + 1], p[:, :H, 1:W + 1], p[:, 2:, 1:W + 1], p[:, 1:H + 1, :W], p[:, 1:H + 1, 2:])
    return torch.stack(shifts).amax(0)


def grow_mask(mask: Tensor, expand: int, tapered_corners: bool) -> Tensor:
    """GrowMask: |expand| steps of grey dilation (expand > 0) or erosion (< 0) with a 3x3 neighbourhood, the
    corners left out when `tapered_corners` (so growth is diamond-shaped). Pixels off the image are ignored."""
    m = as_masks(mask).float()
    sign = 1.0 if expand >= 0 else -1.0
    m = m * sign
    for _ in range(abs(expand)):
        m = _dilate(m, tapered_corners)
    return m * sign


def feather_mask(mask: Tensor, left: int, top: int, right: int, bottom: int) -> Tensor:
    """FeatherMask: each chosen edge fades in linearly, its outermost row or column scaled by 1/n and the n-th by
    1. (ComfyUI's right and bottom loops index from -0, so its first column/row also gets 1/n and its outermost
    right/bottom line 2/n; here the ramp is the mirror of the left/top one.)"""
    m = as_masks(mask).clone()
    H, W = m.shape[-2:]
    left, right, top, bottom = min(left, W), min(right, W), min(top, H), min(bottom, H)
    cols, rows = torch.ones(W), torch.ones(H)
    for ramp, n, at_end in ((cols, left, False), (cols, right, True), (rows, top, False), (rows, bottom, True)):
        if n:
            r = torch.arange(1, n + 1, dtype=torch.float32) / n
            if at_end:
                ramp[len(ramp) - n:] *= r.flip(0)
            else:
                ramp[:n] *= r
    return m * rows[:, None] * cols[None, :]


# --------------------------------------------------------------------------- VAE pixels


def crop_to_multiple(image: Tensor, f: int) -> Tensor:
    """An IMAGE cut (centred) to sides that are multiples of the VAE's downscale f, as ComfyUI's VAE.encode."""
    H, W = image.shape[1:3]
    h, w = H // f * f, W // f * f
    dy, dx = (H % f) // 2, (W % f) // 2
    return image[:, dy:dy + h, dx:dx + w]


def to_vae_input(image: Tensor, f: int) -> Tensor:
    """IMAGE (B, H, W, C) in [0, 1] -> (B, 3, h, w) in [-1, 1], h and w cut to multiples of f; alpha dropped."""
    return crop_to_multiple(image[..., :3], f).movedim(-1, 1) * 2 - 1


def from_vae_output(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> IMAGE (B, H, W, 3) float32 in [0, 1] on the CPU."""
    return ((x.float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()


def inpaint_input(image: Tensor, mask: Tensor, f: int, grow: int) -> tuple[Tensor, Tensor]:
    """VAEEncodeForInpaint's inputs: the IMAGE (cut to multiples of f) with the masked pixels set to grey, so
    the encoder sees no trace of what is to be replaced, and the noise mask (B, 1, h, w) in pixels, grown by a
    `grow`-pixel box so the sampler repaints a seam around it."""
    H, W = image.shape[1:3]
    m = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=(H, W), mode="bilinear")
    h, w = H // f * f, W // f * f
    dy, dx = (H % f) // 2, (W % f) // 2
    image, m = crop_to_multiple(image[..., :3], f), m[..., dy:dy + h, dx:dx + w].round()
    keep = (1 - m).movedim(1, -1)  # (B, h, w, 1)
    pixels = (image - 0.5) * keep + 0.5
    if grow > 0:
        # a box of side `grow`; an even box reaches one pixel further up/left, as ComfyUI's padded convolution
        m = F.max_pool2d(m, grow, stride=1, padding=grow // 2)[..., :h, :w]
    return pixels, m


# --------------------------------------------------------------------------- latents


def blend_latents(a: Tensor, b: Tensor, factor: float) -> Tensor:
    """LatentBlend: a * factor + b * (1 - factor) (note: the factor weighs the *first* input, unlike ImageBlend),
    b resized (bicubic, centre crop) to a's size first."""
    if a.shape != b.shape:
        b = resize(b, a.shape[-1], a.shape[-2], "bicubic", "center")
    return a * factor + b * (1 - factor)


def size_keeping_aspect(w: int, h: int, width: int, height: int) -> tuple[int, int]:
    """(width, height) with a 0 side computed from the other and the aspect ratio of (w, h)."""
    if width == 0:
        return max(1, round(w * height / h)), height
    if height == 0:
        return width, max(1, round(h * width / w))
    return width, height
