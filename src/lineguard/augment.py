"""Training-only augmentation, as batched tensor ops on images already at model size.

Training decodes and resizes every image once with :mod:`lineguard.preprocess` and keeps
the uint8 tensors in memory; each batch is then augmented here on whole ``(N, 3, H, W)``
tensors (one ``grid_sample`` for all geometric changes, a few elementwise ops for colour)
so two CPU cores are not spent in per-image Python. :func:`normalise_batch` is the
tensor twin of :func:`lineguard.preprocess.normalise` (same float32 constants), so with
augmentation off the training input equals ``preprocess.preprocess()`` output.

Every magnitude in :class:`~lineguard.config.AugmentConfig` is multiplied by
``strength``; ``strength=0`` turns augmentation off entirely (flips included).
Randomness comes only from the ``torch.Generator`` passed in, so runs are reproducible.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from lineguard.config import AugmentConfig
    from lineguard.preprocess import PreprocessParams

# ITU-R BT.601 luma, the same weights as preprocess.image_stats.
_LUMA = (0.299, 0.587, 0.114)


def is_identity(config: AugmentConfig) -> bool:
    """True when :func:`augment_batch` would return its input unchanged."""
    if config.strength == 0:
        return True
    magnitudes = (config.rotate_deg, config.scale, config.translate, config.brightness, config.contrast,
                  config.saturation, config.hue, config.noise)
    probabilities = (config.hflip, config.vflip, config.rot90, config.blur, config.cutout)
    return not any(magnitudes) and not any(probabilities)


def normalise_batch(images: torch.Tensor, params: PreprocessParams) -> torch.Tensor:
    """``(N, C, H, W)`` pixels on the 0..255 scale (uint8 or float) -> normalised float32.

    Numerically the same as :func:`lineguard.preprocess.normalise`: ``x * scale + shift``
    with the float32 constants precomputed in :class:`PreprocessParams`.
    """
    scale = torch.from_numpy(params.scale).to(images.device)
    shift = torch.from_numpy(params.shift).to(images.device)
    return images.to(torch.float32) * scale + shift


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _coin(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _affine(x: torch.Tensor, config: AugmentConfig, s: float, pad: float, gen: torch.Generator) -> torch.Tensor:
    """Random rotation, zoom and shift per image, in one ``grid_sample``; uncovered area = ``pad``."""
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -1, 1, gen, dev) * math.radians(min(180.0, config.rotate_deg * s))
    zoom = 1.0 + _uniform(n, -1, 1, gen, dev) * min(0.9, config.scale * s)
    shift = min(0.9, config.translate * s)
    tx, ty = _uniform(n, -shift, shift, gen, dev) * 2, _uniform(n, -shift, shift, gen, dev) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = _affine_grid(theta, x.shape[2], x.shape[3])
    # Sample (x - pad) with zero padding, then add pad back: the border gets the letterbox colour.
    out = F.grid_sample(x - pad, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + pad


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` with broadcast arithmetic
    (PyTorch's CPU kernel for it costs as much as the ``grid_sample`` itself)."""
    ys = ((torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    xs = ((torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack([gx, gy], dim=3)


def _colour(x: torch.Tensor, config: AugmentConfig, s: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter fused into one per-image 3x3 colour matrix.

    All four are linear in the pixels (contrast blends towards the image's mean grey,
    saturation towards each pixel's grey, hue rotates chroma in YIQ space), so
    ``x' = M x + offset`` with one batched matrix product; grey pixels stay grey.
    """
    n, dev = x.shape[0], x.device
    ones = torch.ones(n, device=dev)
    b = _uniform(n, -1, 1, gen, dev) * min(0.95, config.brightness * s) + 1 if config.brightness else ones
    c = _uniform(n, -1, 1, gen, dev) * min(0.95, config.contrast * s) + 1 if config.contrast else ones
    if x.shape[1] == 1:  # grey: brightness and contrast only (saturation and hue have nothing to act on)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        bv, cv = b.view(n, 1, 1, 1), c.view(n, 1, 1, 1)
        return x * (bv * cv) + (1 - cv) * bv * mean
    sat = _uniform(n, -1, 1, gen, dev) * min(0.95, config.saturation * s) + 1 if config.saturation else ones
    luma = torch.tensor(_LUMA, device=dev, dtype=x.dtype)
    eye = torch.eye(3, device=dev, dtype=x.dtype)
    grey = luma.view(1, 3).expand(3, 3)  # row i: pixel -> its grey value
    m = sat.view(n, 1, 1) * eye + (1 - sat).view(n, 1, 1) * grey  # saturation
    if config.hue:
        h = _uniform(n, -1, 1, gen, dev) * min(0.5, config.hue * s) * 2 * math.pi
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           device=dev, dtype=x.dtype)
        cos, sin = torch.cos(h), torch.sin(h)
        one, zero = torch.ones_like(h), torch.zeros_like(h)
        rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                           torch.stack([zero, sin, cos], 1)], 1)
        m = torch.linalg.inv(yiq) @ rot @ yiq @ m
    m = m * (b * c).view(n, 1, 1)
    # contrast blends towards the mean grey of the brightened image; a grey constant is kept by M's other parts
    mean_grey = (x.mean(dim=(2, 3)) @ luma).view(n, 1, 1)
    offset = (1 - c).view(n, 1, 1) * b.view(n, 1, 1) * mean_grey
    h_, w_ = x.shape[2], x.shape[3]
    out = torch.bmm(m, x.reshape(n, 3, h_ * w_)).view(n, 3, h_, w_)
    return out.add_(offset.view(n, 1, 1, 1))


def _blur(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A light 3x3 Gaussian blur on a random subset of the batch."""
    chosen = _coin(x.shape[0], p, gen, x.device)
    if not bool(chosen.any()):
        return x
    k1 = torch.tensor([0.25, 0.5, 0.25], device=x.device, dtype=x.dtype)
    c = x.shape[1]
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(x[chosen], (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    out = x.clone()
    out[chosen] = blurred
    return out


def _cutout(x: torch.Tensor, p: float, s: float, pad: float, gen: torch.Generator) -> torch.Tensor:
    """Erase one rectangle (up to ~1/4 of each side at strength 1) in a random subset of images."""
    n, _, h, w = x.shape
    dev = x.device
    chosen = _coin(n, p, gen, dev).view(n, 1, 1)
    frac = min(0.6, 0.25 * s)
    ch = (_uniform(n, 0.1, 1.0, gen, dev) * frac * h).long().clamp(min=1).view(n, 1, 1)
    cw = (_uniform(n, 0.1, 1.0, gen, dev) * frac * w).long().clamp(min=1).view(n, 1, 1)
    cy = (torch.rand(n, generator=gen, device=dev) * h).long().view(n, 1, 1)
    cx = (torch.rand(n, generator=gen, device=dev) * w).long().view(n, 1, 1)
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    mask = chosen & ((yy - cy).abs() <= ch // 2) & ((xx - cx).abs() <= cw // 2)
    return torch.where(mask.unsqueeze(1), torch.full_like(x, pad), x)


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, pad_value: float = 0.0
) -> torch.Tensor:
    """Augment ``(N, C, H, W)`` uint8 images (C = 3 or 1); returns float32 on the 0..255 scale, clipped.

    Order: flips and quarter turns, affine (rotate/scale/translate), colour jitter, blur, noise, cutout.
    Flips and quarter turns together make the 8 symmetries of a square, right for surfaces and
    textures that have no "up"; a quarter turn of a non-square input is a half turn (both flips).
    ``pad_value`` fills the area uncovered by the affine warp and the cutout patch, so it
    looks like the letterbox padding the model sees at inference.
    """
    x = images.to(torch.float32)
    if is_identity(config):
        return x
    s = config.strength
    n, dev = x.shape[0], x.device
    if config.hflip:
        flip = _coin(n, config.hflip, generator, dev).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    if config.vflip:
        flip = _coin(n, config.vflip, generator, dev).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(2), x)
    if config.rot90:
        turn = _coin(n, config.rot90, generator, dev).view(n, 1, 1, 1)
        turned = x.transpose(2, 3).flip(3) if x.shape[2] == x.shape[3] else x.flip(2).flip(3)
        x = torch.where(turn, turned, x)
    if config.rotate_deg or config.scale or config.translate:
        x = _affine(x, config, s, float(pad_value), generator)
    if config.brightness or config.contrast or config.saturation or config.hue:
        x = _colour(x, config, s, generator)
    if config.blur:
        x = _blur(x, min(1.0, config.blur * s), generator)
    if config.noise:
        # Luminance noise (one plane shared by the channels): a third of the random numbers of RGB noise.
        plane = torch.randn((n, 1, *x.shape[2:]), generator=generator, device=dev)
        x = x + plane * (min(0.5, config.noise * s) * 255.0)
    if config.cutout:
        x = _cutout(x, min(1.0, config.cutout), s, float(pad_value), generator)
    return x.clamp_(0.0, 255.0)
