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

**One implementation, batched.** The formulas are written once, over a batch of N frames
(:meth:`ImageSignals.of_inputs`, what the station runs on each inference batch); one frame
(:meth:`ImageSignals.of_input`, :meth:`ImageSignals.of_image`, the reference) is the batch of
one. So export and edge cannot disagree, and a batch costs about the same twenty numpy calls
as one frame: at the edge's sizes those calls' overhead, not the arithmetic, was the cost.

**Cost.** Written for a per-frame budget of a few percent of one inference: global
statistics on a strided subsample of ``5 * PATCHES`` pixels of the input (five strided
copies, no resampling), in one float32 buffer holding every frame of the batch
channel-major; every per-pixel value (lifted channels, centred grey and opponent colours)
from one 6 x 4 affine map (one BLAS call); means and variances from sums of those rows;
sharpness on crosses of adjacent pixels at the input's full resolution (subsampling would
hide exactly the blur it must see). Buffers are kept per thread, shape and batch size, so a
batch allocates almost nothing.
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
_CLIP_MARGIN = 0.01  # grey levels: the clip edges' margin for float rounding (see ImageSignals.__init__)
# The lifted channels are pixel + 1: saturation is then one division, (max + 1 - (min + 1)) / (max + 1).
_LIFT = 1.0
# The 4-neighbour Laplacian over a cross's (left, centre, right, up, down) pixels.
_LAPLACIAN = np.array([1.0, -4.0, 1.0, 1.0, 1.0], np.float32)
_CROSS = ((0, -1), (0, 0), (0, 1), (-1, 0), (1, 0))  # (dy, dx) of a cross's left, centre, right, up, down pixels
RAW_PIXELS = "frame pixels"  # ImageSignals.source without preprocessing
_KEPT_BATCH_SIZES = 4  # work buffers kept per plan: the station's batch size, its last partial batch, ...
# The signals (rows of the result) that are means, and the rows of ImageSignals._means they are.
# The rows of ImageSignals' map of the per-frame sums: the nine signals, then the means (grey, red - green
# centred and not, Laplacian, 0, (red + green) / 2 - blue centred and not, 0) and, paired with them, the
# second moments (grey, red - green, 0, Laplacian, 0, (red + green) / 2 - blue, 0, 0).
_MEANS, _SECOND, _Q_ROWS = slice(9, 17), slice(17, 25), 25
# contrast, sharpness and colourfulness from [sd of grey, sqrt(var rg + var yb), sqrt(mean rg^2 + mean yb^2),
# var of the Laplacian]
_SPREADS = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.3, 0.0]])


class SignalError(LineguardError):
    """An image or model input that signals cannot be computed for (wrong shape or type)."""


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise SignalError(f"image signals need an HxWx3 uint8 RGB image, got {shape} {dtype}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise SignalError(f"image signals need an image of at least 3x3 pixels, got {image.shape[:2]}")


class _Work:
    """The buffers of one batch size: the gathered input rows, the per-pixel rows, the per-frame sums."""

    def __init__(self, batch: int, n: int, patches: int) -> None:
        # Rows: the input's three channels (normalised, so near zero: float32 sums stay exact) and ones;
        # channel-major, then frame, then the cross-major pixel order of one frame, so every per-frame
        # sum runs over a contiguous block of n values.
        self.x = np.ones((4, batch * n), np.float32)
        self.x3 = self.x[:3].reshape(3, batch, n)
        # Per sampled pixel (0..255 units): red, green, blue (each + _LIFT); then the rows summed per frame:
        # centred grey, red - green, (red + green) / 2 - blue, (min + 1) / (max + 1), black and blown-out flags.
        self.pixels = np.empty((9, batch * n), np.float32)
        self.extremes = np.empty((2, batch * n), np.float32)  # darkest and brightest channel, per pixel
        # Per cross: its darkest channel, the Laplacian of grey at its centre, and its square.
        self.crosses = np.empty((3, batch, patches), np.float32)
        # Per frame: the sums of the summed pixel rows (0-5), of the centred rows' squares (6-8), of the
        # cross rows (9-11); row 12 stays ones (the shifts of ImageSignals' map).
        self.sums = np.ones((13, batch), np.float32)


class _Plan:
    """Everything that depends only on the input's layout and shape: which pixels to read, the work buffers."""

    def __init__(self, h: int, w: int, means: np.ndarray) -> None:
        # PATCHES crosses (a pixel and its four neighbours) at the centres of a grid of cells of side ``stride``.
        stride = max(3, math.isqrt(h * w // PATCHES))
        ph, pw = max(1, h // stride), max(1, w // stride)
        self.patches = p = ph * pw
        self.n = 5 * p
        self.grid = (stride, ph, pw)
        # Cross-major: the left, centre, right, up and down pixels of every cross each in one contiguous
        # block of ``patches`` values, so cross statistics are row operations.
        cy = (np.arange(ph) * stride + 1)[:, None].repeat(pw, 1).ravel()
        cx = (np.arange(pw) * stride + 1)[None, :].repeat(ph, 0).ravel()
        ys = np.concatenate([cy + dy for dy, _ in _CROSS])
        xs = np.concatenate([cx + dx for _, dx in _CROSS])
        # One frame's pixels are gathered by flat position (3 x 1 x n): an HxWx3 frame's (of_image without
        # preprocessing), and a C x H x W input's (a batch of one: one gather costs less than five copies).
        self.index = ((ys * w + xs) * 3 + np.arange(3)[:, None]).astype(np.intp)[:, None, :]
        self.planar_index = {c: ((np.arange(3) if c == 3 else np.zeros(3, np.int64))[:, None] * (h * w)
                                 + ys * w + xs).astype(np.intp)[:, None, :] for c in (1, 3)}
        # The sums to means: the pixel rows' sums divided by the n pixels, the crosses' by the patches.
        self.means = means * np.repeat([1.0 / self.n, 1.0 / p, 1.0], [9, 3, 1])
        self._work: dict[int, _Work] = {}

    def gather(self, batch: np.ndarray, work: _Work) -> None:
        """Copy the sampled values of an N x C x H x W batch into ``work``'s rows: five strided copies (one per
        pixel of the cross), whole batch and every channel each (a grey input's one channel fills all three);
        one frame by one gather (measured after an inference: 13 us against 21 for the copies)."""
        if len(batch) == 1:
            np.take(batch.reshape(-1), self.planar_index[batch.shape[1]], out=work.x3, mode="clip")
            return
        stride, ph, pw = self.grid
        cells = work.x3.reshape(3, len(batch), 5, ph, pw)
        channels = batch.transpose(1, 0, 2, 3)
        for k, (dy, dx) in enumerate(_CROSS):
            oy, ox = 1 + dy, 1 + dx
            np.copyto(cells[:, :, k], channels[:, :, oy:oy + ph * stride:stride, ox:ox + pw * stride:stride])

    def work(self, batch: int) -> _Work:
        work = self._work.get(batch)
        if work is None:
            if len(self._work) >= _KEPT_BATCH_SIZES:
                self._work.pop(next(iter(self._work)))
            work = self._work[batch] = _Work(batch, self.n, self.patches)
        return work


class ImageSignals:
    """The image signals of model inputs (or frames) for one preprocessing: the train/edge contract.

    ``ImageSignals(params)``: for inputs made by ``params`` (a bundle's preprocessing);
    :meth:`of_inputs` takes a batch of N x C x H x W float32 model inputs as the predictor
    makes them, :meth:`of_input` one C x H x W row of it, :meth:`of_image` a decoded HxWx3
    uint8 frame (preprocessed here first). A grey model's input has one channel: its colour
    signals are zero (the model cannot see colour). ``ImageSignals(None)``: the frame's own
    pixels, for a reference without a model. Safe to share between threads (work buffers are
    per thread).
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
        # input = pixel * scale + shift per channel, so pixel = input * a + b.
        a, b = 1.0 / scale, -shift / scale
        luma = np.array(_LUMA)
        # Centred rows (the pixel value minus b's share: near zero, so float32 sums of squares stay
        # exact): grey, and Hasler and Suesstrunk's opponent colours red - green, (red + green) / 2 - blue.
        centred = np.array([luma, [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
        affine = np.zeros((6, 4))
        affine[[0, 1, 2], [0, 1, 2]] = a
        affine[:3, 3] = b + _LIFT
        affine[3:6, :3] = centred * a
        self._affine = affine.astype(np.float32)  # the pixel rows from the input rows and the ones row
        # What the centring took away: the means of grey, red - green and (red + green) / 2 - blue are
        # those of the centred rows plus these.
        offsets = centred @ b
        # On centred grey; a hundredth of a grey level below 5 and 250, so that a pixel of exactly 5 is not
        # black and one of exactly 250 is blown out whatever the float32 rounding (a grey model's pixels
        # sit on whole grey levels: a batch and its frames alone must count them alike).
        self._clip_edges = np.array([_UNDER - _CLIP_MARGIN - offsets[0], _OVER - _CLIP_MARGIN - offsets[0]],
                                    np.float32)
        # The per-frame sums (the rows of _Work.sums; the plan divides each by its count) to the result.
        # Rows of the result (_Q_ROWS): the nine signals in IMAGE_SIGNALS order (those that are means
        # final, contrast, sharpness and colourfulness zero here), then the means and the second
        # moments the variances need, paired so that one subtraction and one addition give them all.
        means = np.zeros((_Q_ROWS, 13))
        for row, col in [(0, 0), (5, 2), (6, 5), (7, 4), (8, 9),  # the signals that are means
                         (9, 0), (10, 1), (11, 1), (12, 10), (14, 2), (15, 2),  # the means of _MEANS
                         (17, 6), (18, 7), (20, 11), (22, 8)]:  # the second moments of _SECOND
            means[row, col] = 1.0
        means[4, 3] = -1.0  # saturation: 1 - (min + 1) / (max + 1)
        means[5, 1] = 0.5  # colour balance: red - blue = (red + green) / 2 - blue + (red - green) / 2
        means[[5, 8]] /= 255.0
        # The shifts (the column of the ones row): the centring undone, saturation's 1 -, haze's lift.
        means[[0, 11, 15], 12] = offsets[0], offsets[1], offsets[2]
        means[4, 12] = 1.0  # saturation: 1 - (min + 1) / (max + 1)
        means[5, 12] = (offsets[2] + 0.5 * offsets[1]) / 255.0
        means[8, 12] = -_LIFT / 255.0  # haze: the darkest channel of a cross, unlifted, 0..1
        self._means = means
        self._local = threading.local()

    @property
    def source(self) -> str:
        """What the signals are computed on: the preprocessing as JSON, or :data:`RAW_PIXELS`."""
        if self.params is None:
            return RAW_PIXELS
        return json.dumps(self.params.to_dict(), sort_keys=True)

    def _plan(self, h: int, w: int) -> _Plan:
        plans: dict[tuple[int, int], _Plan] | None = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        plan = plans.get((h, w))
        if plan is None:
            plan = plans[(h, w)] = _Plan(h, w, self._means)
        return plan

    def of_image(self, image: np.ndarray) -> np.ndarray:
        """The signals of one decoded HxWx3 uint8 RGB frame as a float64 vector in :data:`IMAGE_SIGNALS` order."""
        _check_image(image)
        if self.params is not None:
            return self.of_input(preprocess(image, self.params))
        # The frame's own pixels, scaled into a normalised input's range on the way in.
        h, w = image.shape[:2]
        plan = self._plan(h, w)
        work = plan.work(1)
        np.multiply(np.take(image.reshape(-1), plan.index, mode="clip"), 1.0 / 63.75, out=work.x3)
        work.x3 -= 2.0
        return self._signals(plan, work, 1)[0]

    def of_input(self, x: np.ndarray) -> np.ndarray:
        """The signals of one C x H x W model input (a row of the predictor's batch), in :data:`IMAGE_SIGNALS` order.

        The batch of one: the same code as :meth:`of_inputs`, so a frame alone and in a batch agree.
        """
        batch = x[None] if isinstance(x, np.ndarray) and x.ndim == 3 else x
        return self._of_batch(batch, x, one=True)[0]

    def of_inputs(self, batch: np.ndarray) -> np.ndarray:
        """The signals of a batch of N x C x H x W model inputs (the predictor's ``input``): N x 9 float64.

        Row i holds the signals of input i in :data:`IMAGE_SIGNALS` order, the numbers :meth:`of_input`
        gives that input alone (to float rounding), for about the cost of one: every step runs once
        over the whole batch.
        """
        return self._of_batch(batch, batch, one=False)

    def _of_batch(self, batch: np.ndarray, given: object, one: bool) -> np.ndarray:
        params = self.params
        if (params is None or not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4
                or batch.shape[1:] != params.input_shape or len(batch) == 0):
            if params is None:
                want = "a frame (of_image): no preprocessing given"
            elif one:
                want = f"a float32 model input of shape {params.input_shape}"
            else:
                want = f"a float32 batch of model inputs of shape (N, {', '.join(map(str, params.input_shape))}), N >= 1"
            raise SignalError(f"image signals need {want}, got {getattr(given, 'shape', type(given).__name__)} "
                              f"{getattr(given, 'dtype', '')}".rstrip())
        frames, _, h, w = batch.shape
        plan = self._plan(h, w)
        work = plan.work(frames)
        plan.gather(batch, work)
        return self._signals(plan, work, frames)

    def _signals(self, plan: _Plan, work: _Work, frames: int) -> np.ndarray:
        """The signals of ``frames`` inputs whose sampled values ``work.x3`` holds: frames x 9 float64.

        Every per-pixel value is a row of one buffer, every per-frame sum one reduction of a block
        of rows, and the signals an affine map of those sums and a few square roots: about twenty
        numpy calls whatever the batch size.
        """
        n, patches = plan.n, plan.patches
        pixels, extremes, crosses, sums = work.pixels, work.extremes, work.crosses, work.sums
        np.matmul(self._affine, work.x, out=pixels[:6])
        grey, centred = pixels[3], pixels[3:6].reshape(3, frames, n)
        np.minimum.reduce(pixels[:3], axis=0, out=extremes[0])  # the darkest channel, per pixel
        np.maximum.reduce(pixels[:3], axis=0, out=extremes[1])  # the brightest
        lo = extremes[0]
        np.divide(lo, extremes[1], out=pixels[6])  # (min + 1) / (max + 1)
        # Clipped pixels: grey below _UNDER or at least _OVER (grey is centred: the edges are too).
        np.less(grey, self._clip_edges[0], out=pixels[7])
        np.greater_equal(grey, self._clip_edges[1], out=pixels[8])
        np.add.reduce(pixels[3:9].reshape(6, frames, n), axis=2, out=sums[:6])
        np.einsum("kfj,kfj->kf", centred, centred, out=sums[6:9])
        # Dark channel prior (He et al. 2009): haze lifts the darkest channel of every small patch (a cross).
        np.minimum.reduce(lo.reshape(frames, 5, patches), axis=1, out=crosses[0])
        # Sharpness: variance of the 4-neighbour Laplacian of grey at the crosses' centres, at the input's
        # full resolution -- what blur, smear and defocus take away first.
        np.matmul(_LAPLACIAN, grey.reshape(frames, 5, patches), out=crosses[1])
        np.multiply(crosses[1], crosses[1], out=crosses[2])
        np.add.reduce(crosses, axis=2, out=sums[9:12])
        # The signals that are means, the means and second moments (one map), then the spreads.
        q = np.matmul(plan.means, sums)
        mean, second = q[_MEANS], q[_SECOND]
        np.multiply(mean, mean, out=mean)
        np.subtract(second, mean, out=second)  # variances; minus the squared means of rg and yb
        np.abs(second, out=second)  # (a variance below 0 is float rounding: as small either way)
        np.add(second[:4], second[4:], out=second[:4])  # [var grey, var rg + var yb, rg^2 + yb^2, var lap]
        np.sqrt(second[:3], out=second[:3])
        # contrast, sharpness, and Hasler and Suesstrunk's colourfulness
        np.matmul(_SPREADS, second[:4], out=q[1:4])
        return q[:len(IMAGE_SIGNALS)].T.copy()


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


