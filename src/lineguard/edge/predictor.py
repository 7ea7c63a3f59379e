"""Run a bundle on decoded images: preprocess, infer, calibrate, decide -- nothing else.

:class:`Predictor` opens the bundle's ONNX model in ONNX Runtime (or OpenVINO, an
optional backend) and turns each image into a :class:`Prediction`: the calibrated
probability of the positive (defect) class, ``softmax(logits / temperature)``, compared
with the recipe's threshold -- both from the bundle's
:class:`~lineguard.edge.decision.Decision`, the record evaluation fitted and export
shipped. An item is rejected when ``score >= threshold``. The model is opened with
:func:`~lineguard.edge.runner.open_runner`, as everywhere else in LineGuard. The hot path is one preprocess call, one session run and a few
float operations, so batch-1 latency is the model's own.

Imports numpy, onnxruntime, the standard library and :mod:`lineguard.preprocess` only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from lineguard import LineguardError
from lineguard.edge.bundle import Bundle, BundleError, load_bundle
from lineguard.edge.runner import BACKENDS, Backend, Runner, open_runner
from lineguard.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    preprocess,
    preprocess_batch,
)

__all__ = ["ACCEPT", "BACKENDS", "REJECT", "Backend", "ImageFileError", "Prediction", "Predictor",
           "decision_parity", "scores_from_logits", "verify_bundle"]

ACCEPT, REJECT = "accept", "reject"
MAX_IMAGE_BYTES = 200_000_000  # what `predict` reads at most per file (config: limits.max_image_bytes)


class ItemError(LineguardError):
    """One item could not be decided; the others go on. ``reason`` is a short tag."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {detail}")


class ImageFileError(ItemError):
    """An image file that cannot be read or decoded; ``reason`` is the decoder's tag."""


class NonFiniteScoreError(ItemError):
    """The model gave a score that is not a number for this item: it is an error, never a decision.

    Failing closed: NaN compared with a threshold is false, so a NaN score would
    otherwise *accept* the item -- a missed defect counted as good.
    """


@dataclass(frozen=True, slots=True)
class Prediction:
    """The decision for one image.

    ``score`` is the calibrated probability of the positive class; ``decision`` is
    ``reject`` when ``score >= threshold``; ``label`` is the class the decision stands
    for; ``latency_ms`` is the wall time of the ``predict`` call that produced it
    (preprocessing included; for a batch, the whole batch). ``bundle_name`` and
    ``bundle_version`` name the bundle that decided, whose ``lineage`` block leads back
    to the training run and the dataset version.
    """

    label: str
    score: float
    decision: str
    threshold: float
    recipe: str | None
    latency_ms: float
    bundle_name: str
    bundle_version: str

    @property
    def rejected(self) -> bool:
        return self.decision == REJECT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores_from_logits(logits: np.ndarray, temperature: float, positive_index: int) -> np.ndarray:
    """Calibrated probability of the positive class: softmax(logits / T)[positive], float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e[:, positive_index] / e.sum(axis=1))


def decision_parity(
    expected_logits: np.ndarray,
    actual_logits: np.ndarray,
    thresholds: np.ndarray | float,
    temperature: float,
    positive_index: int,
    atol: float,
) -> dict[str, Any]:
    """Pure: do two runs of the same images decide alike, allowing for the logit tolerance?

    ``agreement`` is the raw fraction of equal decisions. An image whose expected margin
    lies within ``2 * atol`` of the threshold's margin (two logits each moved by up to
    ``atol``) may flip without the runs being out of tolerance; such images are counted
    in ``near_threshold`` and excluded from ``flips``, the decisions that disagree where
    they must not. Parity holds when ``flips == 0`` and every logit is within ``atol``.
    """
    le, la = np.asarray(expected_logits, np.float64), np.asarray(actual_logits, np.float64)
    se, sa = scores_from_logits(le, temperature, positive_index), scores_from_logits(la, temperature, positive_index)
    t = np.broadcast_to(np.asarray(thresholds, np.float64), se.shape)
    same = (se >= t) == (sa >= t)
    if le.ndim == 2 and le.shape[1] == 2 and len(le):
        margin = le[:, positive_index] - le[:, 1 - positive_index]
        tc = np.clip(t, 1e-12, 1 - 1e-12)
        near = np.abs(margin - temperature * np.log(tc / (1 - tc))) <= 2 * atol
    else:
        near = np.abs(se - t) <= atol / float(temperature)
    return {
        "agreement": float(same.mean()) if len(same) else 1.0,
        "near_threshold": int(near.sum()),
        "flips": int((~same & ~near).sum()),
        "max_abs_logit_diff": float(np.max(np.abs(le - la), initial=0.0)),
        "max_abs_score_diff": float(np.max(np.abs(se - sa), initial=0.0)),
    }


class Predictor:
    """Decisions from a bundle. ``Predictor(bundle, threads=1, backend='ort')``.

    ``bundle`` is a :class:`Bundle` or a path (loaded and verified with
    :func:`load_bundle`). ``threads`` is the runtime's intra-op thread count (1 is the
    latency setting for a small model on a small device). ``backend='openvino'`` needs
    the optional openvino package; ``precision_hint`` is passed to it explicitly (``f32``
    by default, ``bf16`` is faster on some CPUs but moves logits by ~1 %).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        threads: int = 1,
        backend: Backend | str = "ort",
        precision_hint: str = "f32",
    ) -> None:
        if threads < 1:
            raise LineguardError(f"threads must be >= 1, got {threads}")
        if backend not in BACKENDS:
            raise LineguardError(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.threads = threads
        self.backend = backend
        self.params = self.bundle.preprocess
        self.decision = self.bundle.decision
        self._runner: Runner = open_runner(self.bundle.model_path, backend, threads, precision_hint)
        self._inv_t = 1.0 / self.decision.temperature
        self._name, self._version = self.bundle.name, self.bundle.version
        self._pos = self.bundle.positive_index
        self._classes = self.bundle.classes
        self._two_class = len(self._classes) == 2
        self._other = 1 - self._pos if self._two_class else -1

    # --- raw model access (benchmarks, parity checks, monitoring) ------------------------------

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Nx3xHxW float32 (already preprocessed) -> N x classes logits."""
        return self._runner.logits(batch)

    def outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All model outputs (``logits``, ``embedding``) for a preprocessed batch."""
        return self._runner.outputs(batch)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated positive-class probabilities for a batch of logits."""
        return scores_from_logits(logits, self.decision.temperature, self._pos)

    # --- decisions -------------------------------------------------------------------------------

    def _decide(self, row: np.ndarray, recipe: str | None, latency_ms: float, item: str = "image") -> Prediction:
        if self._two_class:
            z = (float(row[self._pos]) - float(row[self._other])) * self._inv_t
            if not math.isfinite(z):
                raise NonFiniteScoreError(item, "non_finite_score", f"the model gave logits {row.tolist()}; "
                                          "a score that is not finite is an error, never a decision")
            score = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        else:
            score = float(scores_from_logits(row[None, :], self.decision.temperature, self._pos)[0])
        if not math.isfinite(score):
            raise NonFiniteScoreError(item, "non_finite_score", f"score {score} is not finite; not decided")
        threshold = self.decision.threshold_for(recipe)
        if score >= threshold:
            return Prediction(self.bundle.positive_class, score, REJECT, threshold, recipe, latency_ms,
                              self._name, self._version)
        if self._two_class:
            label = self._classes[self._other]
        else:
            masked = np.array(row, dtype=np.float64)
            masked[self._pos] = -np.inf
            label = self._classes[int(np.argmax(masked))]
        return Prediction(label, score, ACCEPT, threshold, recipe, latency_ms, self._name, self._version)

    def _predict_one(self, image: np.ndarray, recipe: str | None, item: str = "image") -> Prediction:
        t0 = time.perf_counter()
        row = self._runner.logits(preprocess(image, self.params)[None])[0]
        return self._decide(row, recipe, (time.perf_counter() - t0) * 1000.0, item)

    def predict_tensor(
        self, batch: np.ndarray, recipe: str | Sequence[str | None] | None = None
    ) -> list[Prediction]:
        """Decisions for an already preprocessed Nx3xHxW float32 batch (no preprocessing timed)."""
        t0 = time.perf_counter()
        logits = self._runner.logits(batch)
        recipes = _recipes_for(recipe, len(logits))
        ms = (time.perf_counter() - t0) * 1000.0
        return [self._decide(row, r, ms, f"item {i}") for i, (row, r) in enumerate(zip(logits, recipes, strict=True))]

    @overload
    def predict(self, images: np.ndarray, recipe: str | None = None) -> Prediction | list[Prediction]: ...

    @overload
    def predict(
        self, images: Sequence[np.ndarray], recipe: str | Sequence[str | None] | None = None
    ) -> list[Prediction]: ...

    def predict(
        self, images: np.ndarray | Sequence[np.ndarray], recipe: str | Sequence[str | None] | None = None
    ) -> Prediction | list[Prediction]:
        """Decide one decoded HxWx3 uint8 RGB image (-> Prediction) or a batch (-> list).

        A batch is a list of images (any sizes) or an NxHxWx3 array. ``recipe`` selects
        the threshold: one name for all images, or one per image; None or an unknown
        recipe uses the bundle's default threshold.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            if recipe is not None and not isinstance(recipe, str):
                raise LineguardError("a single image takes a single recipe name")
            return self._predict_one(images, recipe)
        t0 = time.perf_counter()
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise LineguardError(f"predict expects an HxWx3 image or a batch, got an array of shape {images.shape}")
        batch = list(images)
        if not batch:
            return []
        x = preprocess_batch(batch, self.params)
        logits = self._runner.logits(x)
        recipes = _recipes_for(recipe, len(batch))
        ms = (time.perf_counter() - t0) * 1000.0
        return [self._decide(row, r, ms, f"item {i}") for i, (row, r) in enumerate(zip(logits, recipes, strict=True))]

    def predict_outputs(
        self, images: Sequence[np.ndarray], recipe: str | Sequence[str | None] | None = None
    ) -> tuple[list[Prediction], dict[str, np.ndarray]]:
        """Decisions for a batch of decoded images plus every model output (``logits``, ``embedding``),
        and the preprocessed batch itself under ``input``.

        One ONNX call yields both: the monitor's embedding signals cost no second inference, and its
        image signals are computed on the very input the model saw (no second preprocessing).
        """
        t0 = time.perf_counter()
        batch = list(images)
        if not batch:
            return [], {}
        x = preprocess_batch(batch, self.params)
        out = {**self._runner.outputs(x), "input": x}
        recipes = _recipes_for(recipe, len(batch))
        ms = (time.perf_counter() - t0) * 1000.0
        preds = [self._decide(row, r, ms, f"item {i}")
                 for i, (row, r) in enumerate(zip(out["logits"], recipes, strict=True))]
        return preds, out

    def predict_file(
        self, path: str | Path, recipe: str | None = None, *, max_bytes: int = MAX_IMAGE_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Prediction:
        """Read, decode and decide one image file; ImageFileError names the file if it is unusable.

        Only a regular file of at most ``max_bytes`` is read (a FIFO or ``/dev/zero`` is
        refused unread) and at most ``max_pixels`` decoded; a non-finite score is a
        :class:`NonFiniteScoreError` for this file.
        """
        p = Path(path)
        data = read_image_file(p, max_bytes)
        try:
            image = decode_image(data, max_pixels)
        except ImageDecodeError as exc:
            raise ImageFileError(str(p), exc.reason, f"not a usable image ({exc})") from None
        return self._predict_one(image, recipe, str(p))


def read_image_file(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file: a regular file within ``max_bytes``, checked on the open descriptor."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageFileError(str(path), "unreadable", f"cannot read file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageFileError(str(path), "not_a_file", "not a regular file (a folder, FIFO or device); refused")
        if st.st_size > max_bytes:
            raise ImageFileError(str(path), "file_too_large", f"{st.st_size:,} bytes, over the limit of {max_bytes:,}")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageFileError(str(path), "unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageFileError(str(path), "file_too_large", f"over the limit of {max_bytes:,} bytes")
    return data


def _recipes_for(recipe: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    if recipe is None or isinstance(recipe, str):
        return [recipe] * n
    recipes = list(recipe)
    if len(recipes) != n:
        raise LineguardError(f"got {len(recipes)} recipes for {n} images; pass one recipe or one per image")
    return recipes


def verify_bundle(bundle: Bundle | str | Path, threads: int = 1, backend: Backend | str = "ort") -> dict[str, Any]:
    """Re-check a bundle on this machine: hashes, schema, model loads, golden-batch parity.

    The golden images are preprocessed here and run through the runtime; every logit must
    be within the bundle's parity tolerance of the expected outputs recorded at export,
    and every decision must be the same. Returns the figures; raises BundleError on any
    failure (hash and schema failures come from :func:`load_bundle`).
    """
    from lineguard.edge.bundle import GOLDEN_FILE
    from lineguard.preprocess import normalise

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    raw_parity = b.meta.get("parity")
    parity: dict[str, Any] = raw_parity if isinstance(raw_parity, dict) else {}
    if GOLDEN_FILE not in b.meta["files"]:
        raise BundleError(f"bundle '{b.source}' has no {GOLDEN_FILE}: parity cannot be re-checked")
    golden = b.load_arrays(GOLDEN_FILE)
    for key in ("images", "expected_logits"):
        if key not in golden:
            raise BundleError(f"bundle '{b.source}': {GOLDEN_FILE} has no '{key}' array")
    images = golden["images"]
    h, w = b.preprocess.size
    if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8:
        raise BundleError(f"bundle '{b.source}': golden images are {images.shape} {images.dtype}, expected Nx{h}x{w}x3 uint8")
    try:
        atol = float(parity.get("atol", 1e-4))
    except (TypeError, ValueError):
        atol = math.nan
    if not (math.isfinite(atol) and 0 < atol <= 1.0):
        raise BundleError(f"bundle '{b.source}': parity tolerance {parity.get('atol')!r} must be a number in (0, 1]")
    predictor = Predictor(b, threads=threads, backend=backend)
    x = np.stack([normalise(img, b.preprocess) for img in images]) if len(images) else np.zeros((0, *b.preprocess.input_shape), np.float32)
    outputs = predictor.outputs(x) if len(x) else {"logits": np.zeros((0, len(b.classes)), np.float32)}
    expected = golden["expected_logits"].astype(np.float64)
    logits = np.asarray(outputs["logits"], np.float64)
    if logits.shape != expected.shape:
        raise BundleError(f"bundle '{b.source}': model gives logits {logits.shape}, golden.npz expects {expected.shape}")
    if len(golden["expected_logits"]) != len(images):
        raise BundleError(f"bundle '{b.source}': {GOLDEN_FILE} has {len(images)} images but "
                          f"{len(golden['expected_logits'])} expected logits")
    recipes = [str(r) or None for r in golden.get("recipes", np.array([""] * len(images)))]
    figures = decision_parity(expected, logits, b.decision.thresholds_for(recipes), b.decision.temperature,
                              b.positive_index, atol)
    emb_diff = None
    if "expected_embedding" in golden and "embedding" in outputs:
        emb_diff = float(np.max(np.abs(outputs["embedding"] - golden["expected_embedding"]), initial=0.0))
    report = {
        "bundle": b.source, "name": b.name, "version": b.version, "precision": b.precision, "backend": backend,
        "n": len(images), "atol": atol, "max_abs_logit_diff": figures["max_abs_logit_diff"],
        "max_abs_embedding_diff": emb_diff, "max_abs_score_diff": figures["max_abs_score_diff"],
        "decision_agreement": figures["agreement"], "near_threshold": figures["near_threshold"],
        "decision_flips": figures["flips"], "files": len(b.meta["files"]), "hashes": "ok",
    }
    report["passed"] = figures["max_abs_logit_diff"] <= atol and figures["flips"] == 0
    if not report["passed"]:
        raise BundleError(
            f"bundle '{b.source}' fails its parity re-check on this machine: max |logit diff| "
            f"{report['max_abs_logit_diff']:.2e} (tolerance {atol:g}), {report['decision_flips']} of {len(images)} "
            "golden decisions differ"
        )
    return report
