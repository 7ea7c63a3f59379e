"""Per-frame image statistics: what a camera, a lamp or a lens does to a frame, in a few numbers.

Each signal answers one question an operator can act on (docs/monitoring.md): is the
frame darker (``brightness``), flatter (``contrast``), out of focus or smeared
(``sharpness``), washed out or tinted (``colourfulness``, ``saturation``,
``colour_balance``), clipped (``overexposed``, ``underexposed``) or veiled by a dirty lens
or fog (``haze``)?

They cost a few percent of one inference: global statistics are computed on a strided
copy of at most ``WORK_SIDE`` x ``WORK_SIDE`` pixels (a view, no resampling), sharpness on
a ``SHARP_SIDE`` crop at native resolution from the centre, where the product is, because
subsampling would hide exactly the blur it must see. The same function builds the
bundle's reference (export) and the edge's per-frame record, so the two are comparable as
long as the camera delivers frames at the training images' resolution.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lineguard import LineguardError

# Global statistics on a strided copy of at most WORK_SIDE x WORK_SIDE pixels; sharpness on a
# SHARP_SIDE square at native resolution. Larger sides cost time and say little more.
WORK_SIDE = 32
SHARP_SIDE = 32
# The order of the vector form; every name is a key of frame_signals().
IMAGE_SIGNALS = (
    "brightness", "contrast", "sharpness", "colourfulness", "saturation", "colour_balance",
    "overexposed", "underexposed", "haze",
)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_OVER, _UNDER = 250.0, 5.0
_HAZE_PATCH = 2  # on the strided copy: a 2x2 patch spans 2 * step pixels of the frame


class SignalError(LineguardError):
    """An image that signals cannot be computed for (wrong shape or type)."""


def _check(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise SignalError(f"image signals need an HxWx3 uint8 RGB image, got {shape} {dtype}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise SignalError(f"image signals need an image of at least 3x3 pixels, got {image.shape[:2]}")


# Rows: grey (luma), red - green, (red + green) / 2 - blue: the moments of all three come from
# one 3x3 channel covariance (Hasler and Suesstrunk's opponent channels for colourfulness).
_MIX = np.array([[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], np.float64)


def signal_vector(image: np.ndarray) -> np.ndarray:
    """The signals of one HxWx3 uint8 RGB frame as a float64 vector in :data:`IMAGE_SIGNALS` order.

    Written for speed (tens of microseconds a frame): a channel-planar float32 copy, all
    means and variances from one 3x3 channel moment matrix, no reduction over the short
    colour axis (slow in numpy).
    """
    _check(image)
    h, w = image.shape[:2]
    step = max(1, -(-max(h, w) // WORK_SIDE))
    planes = np.ascontiguousarray(image[::step, ::step].transpose(2, 0, 1), dtype=np.float32)
    sh, sw = planes.shape[1:]
    n = sh * sw
    flat = planes.reshape(3, n)
    r, g, b = flat
    means = np.array([r.sum(), g.sum(), b.sum()], np.float64) / n
    rr, gg, bb, rg_, rb, gb = np.dot(r, r), np.dot(g, g), np.dot(b, b), np.dot(r, g), np.dot(r, b), np.dot(g, b)
    second = np.array([[rr, rg_, rb], [rg_, gg, gb], [rb, gb, bb]], np.float64) / n
    cov = second - np.outer(means, means)
    mix_means = _MIX @ means
    mix_var = np.maximum(((_MIX @ cov) * _MIX).sum(axis=1), 0.0)
    colourfulness = np.sqrt(mix_var[1] + mix_var[2]) + 0.3 * np.sqrt(mix_means[1] ** 2 + mix_means[2] ** 2)
    grey = np.dot(_LUMA, flat)
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    saturation = float(((hi - lo) / np.maximum(hi, 1.0)).sum()) / n
    # Dark channel prior (He et al. 2009): haze lifts the darkest channel of every patch.
    ph, pw = sh // _HAZE_PATCH, sw // _HAZE_PATCH
    if ph and pw:
        dark = lo.reshape(sh, sw)[: ph * _HAZE_PATCH, : pw * _HAZE_PATCH]
        cols = np.minimum(dark[:, 0::2], dark[:, 1::2])
        patches = np.minimum(cols[0::2], cols[1::2])
        haze = float(patches.sum()) / (patches.size * 255.0)
    else:
        haze = float(lo.min()) / 255.0
    # Sharpness at native resolution on the central crop: variance of the 4-neighbour Laplacian.
    cy, cx, half = h // 2, w // 2, SHARP_SIDE // 2
    crop = image[max(0, cy - half): cy + half, max(0, cx - half): cx + half]
    ch, cw = crop.shape[:2]
    c = np.dot(crop.reshape(-1, 3).astype(np.float32), _LUMA).reshape(ch, cw)
    lap = (c[1:-1, :-2] + c[1:-1, 2:] + c[:-2, 1:-1] + c[2:, 1:-1] - 4.0 * c[1:-1, 1:-1]).ravel()
    m_lap = float(lap.sum()) / lap.size
    return np.array([
        mix_means[0], np.sqrt(mix_var[0]), float(np.dot(lap, lap)) / lap.size - m_lap * m_lap, colourfulness,
        saturation, (means[0] - means[2]) / 255.0,
        np.count_nonzero(grey >= _OVER) / n, np.count_nonzero(grey <= _UNDER) / n, haze,
    ], np.float64)


def frame_signals(image: np.ndarray) -> dict[str, float]:
    """The signals of one frame by name: the ``stats`` of a prediction record.

    ``brightness`` and ``contrast`` are the mean and standard deviation of the grey level
    (0..255); ``sharpness`` the variance of the Laplacian; ``colourfulness`` Hasler and
    Suesstrunk's metric; ``saturation`` the mean HSV saturation (0..1); ``colour_balance``
    (mean red - mean blue) / 255; ``overexposed`` / ``underexposed`` the shares of pixels at
    >= 250 / <= 5 grey; ``haze`` the mean dark channel (0..1, rises with haze or a veil).
    """
    return dict(zip(IMAGE_SIGNALS, (float(v) for v in signal_vector(image)), strict=True))


def vector_from_stats(stats: Mapping[str, float], names: tuple[str, ...] = IMAGE_SIGNALS) -> np.ndarray:
    """A record's ``stats`` dict back to a vector in ``names`` order; a missing signal is NaN."""
    get = stats.get
    return np.array([get(k, np.nan) for k in names], np.float64)
