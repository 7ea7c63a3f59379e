"""The golden batch and the parity figures: what "the converted model still computes the same" means.

A :class:`GoldenBatch` is a fixed set of images (from the dataset's val and test splits,
or deterministic synthetic ones) stored in every bundle with the outputs the model must
give on them. :func:`compare_outputs` is the pure comparison used at export, after
compression and by ``lineguard bundle verify``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.predictor import decision_parity
from lineguard.preprocess import PreprocessParams, normalise, resize

if TYPE_CHECKING:
    from lineguard.manifest import Dataset


class ExportError(LineguardError):
    """Export or bundling failed: a parity check, a bad output folder, a model that does not fit."""


# --- golden batch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenBatch:
    """Fixed parity images: uint8 N x H x W x 3 already at the model's input size, with recipes and labels."""

    images: np.ndarray
    recipes: np.ndarray  # unicode, one per image ('' when unknown)
    labels: np.ndarray  # int64 class index, -1 when unknown
    source: str  # "dataset:<version>:<splits>" or "synthetic:<seed>"

    def inputs(self, params: PreprocessParams) -> np.ndarray:
        """The float32 model input (normalise only: the images are already resized)."""
        return np.stack([normalise(img, params) for img in self.images]) if len(self.images) else np.zeros(
            (0, *params.input_shape), np.float32
        )


def synthetic_golden(params: PreprocessParams, size: int, seed: int = 0) -> GoldenBatch:
    """Deterministic synthetic images (smooth colour fields plus noise) when no dataset is at hand."""
    rng = np.random.default_rng(seed)
    h, w = params.size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    imgs = np.empty((size, h, w, 3), np.uint8)
    for i in range(size):
        base = rng.uniform(0, 255, 3)
        grad = rng.uniform(-1, 1, (2, 3)) * 120
        field_ = base + grad[0] * (yy[..., None] / h) + grad[1] * (xx[..., None] / w)
        imgs[i] = np.clip(field_ + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return GoldenBatch(imgs, np.array([""] * size), np.full(size, -1, np.int64), f"synthetic:{seed}")


def golden_batch(
    dataset: Dataset | None, params: PreprocessParams, size: int, seed: int = 0, classes: Sequence[str] | None = None
) -> GoldenBatch:
    """``size`` images drawn reproducibly from the dataset's val and test splits (synthetic if none)."""
    if dataset is None:
        return synthetic_golden(params, size, seed)
    import pandas as pd

    rows = pd.concat([dataset.split("val"), dataset.split("test")], ignore_index=True)
    if rows.empty:
        return synthetic_golden(params, size, seed)
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(size, len(rows)), replace=False))
    rows = rows.iloc[pick].reset_index(drop=True)
    names = list(classes or dataset.classes)
    images = np.stack([resize(img, params) for img in dataset.read_images(rows)])
    labels = np.array([names.index(lbl) if lbl in names else -1 for lbl in rows["label"]], np.int64)
    return GoldenBatch(images, np.array([str(r) for r in rows["recipe"]]), labels, f"dataset:{dataset.version}:val+test")


@dataclass(frozen=True)
class ParityReport:
    """torch vs ONNX (or float vs compressed) on the golden batch.

    ``passed``: every logit within ``atol`` and no decision flip outside the tolerance band
    (images whose margin is within ``2 * atol`` of the threshold are counted in
    ``near_threshold``; see :func:`lineguard.edge.predictor.decision_parity`).
    """

    n: int
    atol: float
    max_abs_logit_diff: float
    max_abs_embedding_diff: float | None  # None: the embeddings differ in width (e.g. a pruned model)
    max_abs_score_diff: float
    decision_agreement: float
    reference: str
    near_threshold: int = 0
    decision_flips: int = 0

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.atol and self.decision_flips == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "atol": self.atol, "reference": self.reference,
            "max_abs_logit_diff": float(self.max_abs_logit_diff),
            "max_abs_embedding_diff": (None if self.max_abs_embedding_diff is None
                                       else float(self.max_abs_embedding_diff)),
            "max_abs_score_diff": float(self.max_abs_score_diff),
            "decision_agreement": float(self.decision_agreement), "near_threshold": self.near_threshold,
            "decision_flips": self.decision_flips, "passed": self.passed,
        }


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    thresholds: np.ndarray | float,
    temperature: float,
    positive_index: int,
    atol: float,
    reference: str,
) -> ParityReport:
    """Pure comparison of two runs of the golden batch: logit/embedding/score gaps and decision agreement."""
    le, la = np.asarray(expected["logits"], np.float64), np.asarray(actual["logits"], np.float64)
    if le.shape != la.shape:
        raise ExportError(f"logits shapes differ: expected {le.shape}, got {la.shape}")
    fig = decision_parity(le, la, thresholds, temperature, positive_index, atol)
    emb_diff: float | None = None
    if "embedding" in expected and "embedding" in actual:
        ee, ea = np.asarray(expected["embedding"], np.float64), np.asarray(actual["embedding"], np.float64)
        if ee.shape == ea.shape:  # a pruned or distilled model has another embedding width: not comparable
            emb_diff = float(np.max(np.abs(ee - ea), initial=0))
    return ParityReport(
        n=len(le),
        atol=atol,
        max_abs_logit_diff=fig["max_abs_logit_diff"],
        max_abs_embedding_diff=emb_diff,
        max_abs_score_diff=fig["max_abs_score_diff"],
        decision_agreement=fig["agreement"],
        reference=reference,
        near_threshold=fig["near_threshold"],
        decision_flips=fig["flips"],
    )


