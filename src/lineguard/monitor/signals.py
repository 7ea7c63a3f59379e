"""Per-frame image statistics: what a camera, a lamp or a lens does to a frame, in a few numbers.

Each signal answers one question an operator can act on (docs/monitoring.md): is the
frame darker (``brightness``), flatter (``contrast``), out of focus or smeared
(``sharpness``), washed out or tinted (``colourfulness``, ``saturation``,
``colour_balance``), clipped (``overexposed``, ``underexposed``) or veiled by a dirty lens
or fog (``haze``)?

**One contract.** The signals are computed on *the model's input* -- the frame after the
bundle's preprocessing (resize, colour), the very tensor the edge feeds ONNX Runtime --
by :class:`ImageSignals`, the one function both sides call: export builds the bundle's
reference from the preprocessed training images, the edge runtime reuses the input batch
its predictor already made. So train and edge agree whatever the camera's resolution, and
the signals describe what the model sees (a letterboxed frame's padding included).
Without preprocessing parameters (a reference built by hand, tests) the frame's own pixels
are the input; the reference records which it was (:attr:`ImageSignals.source`).

**Cost.** Written for a per-frame budget of a few percent of one inference: global
statistics on a strided subsample of about ``WORK_PIXELS`` pixels of the input (a view, no
resampling), in one float64 buffer; all means and (co)variances from one 4 x 4 moment
matrix (one BLAS call), the per-pixel ones from channel-wise max / min reductions; sharpness
on a ``SHARP_SIDE`` crop at the input's full resolution from the centre, where the product
is (subsampling would hide exactly the blur it must see), as flat one-dimensional shifts.
Buffers are kept per thread and shape, so a frame allocates almost nothing.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from lineguard import LineguardError
from lineguard.preprocess import PreprocessParams, preprocess

PATCHES = 256  # the signals read this many crosses of five adjacent pixels, spread over the input
# The order of the vector form; every name is a key of frame_signals().
IMAGE_SIGNALS = (
    "brightness", "contrast", "sharpness", "colourfulness", "saturation", "colour_balance",
    "overexposed", "underexposed", "haze",
)
_LUMA = (0.299, 0.587, 0.114)  # BT.601, as lineguard.preprocess's grey
_OVER, _UNDER = 250.0, 5.0  # grey levels of a blown-out (>=) and of a black (<) pixel
_CLIP_EDGES = np.array([_UNDER, _OVER], np.float32)
# The buffer holds pixel + 1: saturation is then one division, (max + 1 - (min + 1)) / (max + 1).
_LIFT = 1.0
# The 4-neighbour Laplacian over a cross's (left, centre, right, up, down) pixels.
_LAPLACIAN = np.array([1.0, -4.0, 1.0, 1.0, 1.0], np.float32)
RAW_PIXELS = "frame pixels"  # ImageSignals.source without preprocessing


class SignalError(LineguardError):
    """An image or model input that signals cannot be computed for (wrong shape or type)."""


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise SignalError(f"image signals need an HxWx3 uint8 RGB image, got {shape} {dtype}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise SignalError(f"image signals need an image of at least 3x3 pixels, got {image.shape[:2]}")


class _Plan:
    """Everything that depends only on the input's layout and shape: which pixels to read, the work buffers."""

    def __init__(self, planar: bool, channels: int, h: int, w: int) -> None:
        # PATCHES crosses (a pixel and its four neighbours) at the centres of a grid of cells of side ``stride``.
        stride = max(3, math.isqrt(h * w // PATCHES))
        ph, pw = max(1, h // stride), max(1, w // stride)
        self.patches = p = ph * pw
        self.n = n = 5 * p
        # Rows: the input's three channels (normalised, so near zero: float32 moments stay exact), and
        # ones (the sums in the moment matrix). Cross-major: the left, centre, right, up and down pixels
        # of every cross each in one contiguous block of ``patches`` values, so cross statistics are row
        # operations; one gather (``index``, into the flattened input) fills it.
        cy = (np.arange(ph) * stride + 1)[:, None].repeat(pw, 1).ravel()
        cx = (np.arange(pw) * stride + 1)[None, :].repeat(ph, 0).ravel()
        ys = np.concatenate([cy, cy, cy, cy - 1, cy + 1])
        xs = np.concatenate([cx - 1, cx, cx + 1, cx, cx])
        chan = np.arange(3)[:, None] if channels == 3 else np.zeros((3, 1), np.int64)
        flat = (chan * (h * w) + ys * w + xs) if planar else ((ys * w + xs) * 3 + chan)
        self.index = np.ascontiguousarray(flat.ravel(), dtype=np.intp)
        self.x = np.ones((4, n), np.float32)
        self.x3 = self.x[:3].reshape(-1)
        # red, green, blue (each + _LIFT), the same negated, and grey, in 0..255 units
        self.pixels = np.empty((7, n), np.float32)
        self.extremes = np.empty((2, n), np.float32)  # darkest channel, minus the brightest, per pixel
        # One buffer, one reduction for three sums: min / max per pixel, darkest of each cross, Laplacian.
        self.sums = np.empty(n + 2 * p, np.float32)
        self.cuts = np.array([0, n, n + p], np.intp)


class ImageSignals:
    """The image signals of model inputs (or frames) for one preprocessing: the train/edge contract.

    ``ImageSignals(params)``: for inputs made by ``params`` (a bundle's preprocessing);
    :meth:`of_input` takes one C x H x W float32 model input as the predictor makes it,
    :meth:`of_image` a decoded HxWx3 uint8 frame (preprocessed here first). A grey model's
    input has one channel: its colour signals are zero (the model cannot see colour).
    ``ImageSignals(None)``: the frame's own pixels, for a reference without a model.
    Safe to share between threads (work buffers are per thread).
    """

    def __init__(self, params: PreprocessParams | None = None) -> None:
        self.params = params
        if params is None:
            # Frame pixels are scaled to about -2..2 on the way in, as a normalised input is.
            scale, shift = np.full(3, 1.0 / 63.75), np.full(3, -2.0)
        else:
            scale = np.asarray(params.scale, np.float64).ravel()
            shift = np.asarray(params.shift, np.float64).ravel()
            if params.channels == 1:
                scale, shift = np.repeat(scale, 3), np.repeat(shift, 3)
        self._channels = 3 if params is None else params.channels
        # input = pixel * scale + shift per channel, so pixel = input * a + b.
        self._a, self._b = 1.0 / scale, -shift / scale
        affine = np.zeros((7, 4))
        affine[[0, 1, 2], [0, 1, 2]] = self._a
        affine[:3, 3] = self._b + _LIFT
        affine[3:6] = -affine[:3]
        affine[6, :3] = np.array(_LUMA) * self._a
        affine[6, 3] = float(np.dot(_LUMA, self._b))
        self._affine = affine.astype(np.float32)  # the pixel rows from the input rows and the ones row
        self._coef = [float(v) for v in (*self._a, *self._b)]
        self._local = threading.local()

    @property
    def source(self) -> str:
        """What the signals are computed on: the preprocessing as JSON, or :data:`RAW_PIXELS`."""
        if self.params is None:
            return RAW_PIXELS
        return json.dumps(self.params.to_dict(), sort_keys=True)

    def _plan(self, planar: bool, channels: int, h: int, w: int) -> _Plan:
        plans: dict[tuple[bool, int, int, int], _Plan] | None = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        key = (planar, channels, h, w)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _Plan(planar, channels, h, w)
        return plan

    def of_image(self, image: np.ndarray) -> np.ndarray:
        """The signals of one decoded HxWx3 uint8 RGB frame as a float64 vector in :data:`IMAGE_SIGNALS` order."""
        _check_image(image)
        if self.params is not None:
            return self.of_input(preprocess(image, self.params))
        # The frame's own pixels, scaled into a normalised input's range on the way in.
        h, w = image.shape[:2]
        p = self._plan(False, 3, h, w)
        np.multiply(np.take(image.reshape(-1), p.index, mode="clip"), 1.0 / 63.75, out=p.x3)
        p.x3 -= 2.0
        return self._signals(p)

    def of_input(self, x: np.ndarray) -> np.ndarray:
        """The signals of one C x H x W model input (a row of the predictor's batch), in :data:`IMAGE_SIGNALS` order."""
        params = self.params
        if (params is None or not isinstance(x, np.ndarray) or x.dtype != np.float32
                or x.shape != params.input_shape):
            want = "a frame (of_image): no preprocessing given" if params is None else \
                f"a float32 model input of shape {params.input_shape}"
            raise SignalError(f"image signals need {want}, got {getattr(x, 'shape', type(x).__name__)} "
                              f"{getattr(x, 'dtype', '')}".rstrip())
        c, h, w = x.shape
        p = self._plan(True, c, h, w)
        np.take(x.reshape(-1), p.index, out=p.x3, mode="clip")
        return self._signals(p)

    def _signals(self, p: _Plan) -> np.ndarray:
        mom = np.dot(p.x, p.x.T).tolist()
        pixels, extremes, sums = p.pixels, p.extremes, p.sums
        n, patches = p.n, p.patches
        np.matmul(self._affine, p.x, out=pixels)
        grey = pixels[6]
        np.minimum.reduce(pixels[:6].reshape(2, 3, n), axis=1, out=extremes)  # min, and -max, over the channels
        lo = extremes[0]
        # Clipped pixels: grey below _UNDER (bin 0) or at least _OVER (bin 2).
        under, _, over = np.bincount(np.searchsorted(_CLIP_EDGES, grey, side="right"), minlength=3).tolist()
        np.divide(lo, extremes[1], out=sums[:n])  # -(min + 1) / (max + 1)
        # Dark channel prior (He et al. 2009): haze lifts the darkest channel of every small patch (a cross).
        np.minimum.reduce(lo.reshape(5, patches), axis=0, out=sums[n: n + patches])
        # Sharpness: variance of the 4-neighbour Laplacian of grey at the crosses' centres, at the input's
        # full resolution -- what blur, smear and defocus take away first.
        lap = sums[n + patches:]
        np.dot(_LAPLACIAN, grey.reshape(5, patches), out=lap)
        neg_ratio, dark, lap_sum = np.add.reduceat(sums, p.cuts).tolist()
        saturation = 1.0 + neg_ratio / n
        haze = (dark / patches - _LIFT) / 255.0
        mean = lap_sum / patches
        sharpness = max(float(np.dot(lap, lap)) / patches - mean * mean, 0.0)
        over, under = over / n, under / n
        # Means and covariances of red, green, blue: those of the input rows, scaled by a, shifted by b.
        a_r, a_g, a_b, b_r, b_g, b_b = self._coef
        s_r, s_g, s_b = mom[3][0] / n, mom[3][1] / n, mom[3][2] / n
        m_r, m_g, m_b = a_r * s_r + b_r, a_g * s_g + b_g, a_b * s_b + b_b
        c_rr = a_r * a_r * (mom[0][0] / n - s_r * s_r)
        c_gg = a_g * a_g * (mom[1][1] / n - s_g * s_g)
        c_bb = a_b * a_b * (mom[2][2] / n - s_b * s_b)
        c_rg = a_r * a_g * (mom[0][1] / n - s_r * s_g)
        c_rb = a_r * a_b * (mom[0][2] / n - s_r * s_b)
        c_gb = a_g * a_b * (mom[1][2] / n - s_g * s_b)
        lr, lg, lb = _LUMA
        grey_var = (lr * lr * c_rr + lg * lg * c_gg + lb * lb * c_bb
                    + 2.0 * (lr * lg * c_rg + lr * lb * c_rb + lg * lb * c_gb))
        # Hasler and Suesstrunk's opponent channels: red - green, (red + green) / 2 - blue.
        rg_var = c_rr + c_gg - 2.0 * c_rg
        yb_var = 0.25 * (c_rr + c_gg + 2.0 * c_rg) + c_bb - c_rb - c_gb
        rg_mean, yb_mean = m_r - m_g, 0.5 * (m_r + m_g) - m_b
        colourfulness = (math.sqrt(max(rg_var, 0.0) + max(yb_var, 0.0))
                         + 0.3 * math.sqrt(rg_mean * rg_mean + yb_mean * yb_mean))
        return np.array([
            lr * m_r + lg * m_g + lb * m_b, math.sqrt(max(grey_var, 0.0)), sharpness, colourfulness,
            saturation, (m_r - m_b) / 255.0, over, under, haze,
        ])


@lru_cache(maxsize=16)
def _signals_for(params: PreprocessParams | None) -> ImageSignals:
    return ImageSignals(params)


def signal_vector(image: np.ndarray, params: PreprocessParams | None = None) -> np.ndarray:
    """The signals of one decoded HxWx3 uint8 RGB frame, as the model of ``params`` sees it (float64 vector).

    ``params`` None: on the frame's own pixels. The edge computes the same numbers from the
    input batch its predictor already made (:meth:`ImageSignals.of_input`).
    """
    return _signals_for(params).of_image(image)


def as_stats(vector: np.ndarray, names: tuple[str, ...] = IMAGE_SIGNALS) -> dict[str, float]:
    """A signal vector as the ``stats`` dict of a prediction record."""
    return dict(zip(names, vector.tolist(), strict=True))


def frame_signals(image: np.ndarray, params: PreprocessParams | None = None) -> dict[str, float]:
    """The signals of one frame by name: the ``stats`` of a prediction record.

    ``brightness`` and ``contrast`` are the mean and standard deviation of the grey level
    (0..255); ``sharpness`` the variance of the Laplacian; ``colourfulness`` Hasler and
    Suesstrunk's metric; ``saturation`` the mean of (max - min) / (max + 1) over the
    channels (HSV saturation, damped on near-black pixels, where it is noise; 0..1);
    ``colour_balance`` (mean red - mean blue) / 255; ``overexposed`` / ``underexposed`` the
    shares of pixels with every channel >= 250 / <= 5; ``haze`` the mean dark channel
    (0..1, rises with haze or a veil).
    """
    return as_stats(signal_vector(image, params))


def vector_from_stats(stats: Mapping[str, float], names: tuple[str, ...] = IMAGE_SIGNALS) -> np.ndarray:
    """A record's ``stats`` dict back to a vector in ``names`` order; a missing signal is NaN."""
    get = stats.get
    return np.array([get(k, np.nan) for k in names], np.float64)


def signals_source(params: PreprocessParams | None) -> str:
    """What :class:`ImageSignals` of ``params`` computes on (recorded in a reference; see :attr:`ImageSignals.source`)."""
    return _signals_for(params).source


