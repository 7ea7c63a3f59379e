"""Turning a model into scores on a dataset split: the float run model or an exported bundle.

A :class:`Scorer` maps decoded images to *margins* z, with p(bad) = sigmoid(z / T);
the margin is the model's raw (uncalibrated) evidence for the defect class, so
temperature scaling and thresholds are fitted afterwards on plain arrays. Both scorers
preprocess with :func:`lineguard.preprocess.preprocess_batch`, the one preprocessing
path, with the parameters the model was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lineguard import LineguardError
from lineguard.preprocess import PreprocessParams, preprocess_batch

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset


class EvaluateError(LineguardError):
    """Evaluation cannot run: unknown model source, unusable dataset split."""


class Scorer(Protocol):
    """Anything that turns decoded HxWx3 uint8 images into defect margins."""

    name: str
    classes: tuple[str, ...]
    preprocess: PreprocessParams

    def margins(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def margins_from_class_logits(logits: np.ndarray, positive_index: int) -> np.ndarray:
    """N x C logits -> log p(pos) - log(1 - p(pos)); for two classes simply l_pos - l_other."""
    lg = np.asarray(logits, dtype=np.float64)
    if lg.ndim != 2:
        raise EvaluateError(f"model output must be N x classes logits, got shape {lg.shape}")
    if lg.shape[1] == 2:
        return lg[:, positive_index] - lg[:, 1 - positive_index]
    log_p = lg - np.logaddexp.reduce(lg, axis=1, keepdims=True)
    pos = log_p[:, positive_index]
    rest = np.logaddexp.reduce(np.delete(log_p, positive_index, axis=1), axis=1)
    return np.asarray(pos - rest)


@dataclass
class TorchScorer:
    """The float PyTorch model of a training run."""

    name: str
    model: Any
    classes: tuple[str, ...]
    positive_class: str
    preprocess: PreprocessParams
    batch_size: int = 64

    def margins(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(preprocess_batch(images[i : i + self.batch_size], self.preprocess))
                out.append(self.model(x).float().cpu().numpy())
        logits = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return margins_from_class_logits(logits, self.classes.index(self.positive_class))


@dataclass
class BundleScorer:
    """An exported bundle, run as the edge runs it: :func:`lineguard.edge.runner.open_runner`, 1 thread."""

    name: str
    bundle: Any
    classes: tuple[str, ...]
    positive_class: str
    preprocess: PreprocessParams
    batch_size: int = 64
    _runner: Any = None

    def margins(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from lineguard.edge.runner import open_runner

        if self._runner is None:
            self._runner = open_runner(self.bundle.model_path, "ort", threads=1)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = preprocess_batch(images[i : i + self.batch_size], self.preprocess)
            out.append(np.asarray(self._runner.logits(x), dtype=np.float32))
        logits = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return margins_from_class_logits(logits, self.classes.index(self.positive_class))


def is_bundle(source: str) -> bool:
    """A bundle folder (with bundle.json) or a .tar.gz archive of one."""
    p = Path(source)
    return (p.is_dir() and (p / "bundle.json").is_file()) or (p.is_file() and source.endswith((".tar.gz", ".tgz")))


def load_scorer(source: str, config: LineguardConfig) -> tuple[Scorer, dict[str, Any]]:
    """A scorer for a bundle path, a run id, ``models:/name@alias`` or ``champion``, plus lineage info.

    The info dict holds ``kind`` (run or bundle), ``run_id`` (the run the model came
    from, when known), ``name`` (a short label for reports) and, for a bundle, ``decision``
    (the :class:`~lineguard.edge.decision.Decision` it ships). A run must have recorded its
    preprocessing (``model.json``); it is never replaced by the current config's.
    """
    if is_bundle(source):
        from lineguard.edge.bundle import load_bundle

        bundle = load_bundle(source)
        lineage = bundle.meta.get("lineage", {}) or {}
        name = f"bundle {bundle.name or Path(source).name} v{bundle.version}".strip()
        scorer = BundleScorer(name, bundle, tuple(bundle.classes), bundle.positive_class, bundle.preprocess)
        return scorer, {"kind": "bundle", "run_id": lineage.get("run_id"), "name": name, "path": source,
                        "precision": bundle.precision, "decision": bundle.decision}
    if Path(source).exists():
        raise EvaluateError(f"'{source}' is a path but not a bundle (no bundle.json); pass a bundle, a run id "
                            f"or models:/NAME@ALIAS")
    from lineguard import tracking

    run_id = tracking.resolve_model_uri(config, source)
    model, meta = tracking.load_model_from_run(config, run_id)
    classes = tuple(str(c) for c in meta.get("classes", ("good", "bad")))
    positive = str(meta.get("positive_class", classes[-1]))
    if "preprocess" not in meta:
        raise EvaluateError(f"run {run_id} recorded no preprocessing parameters (model/model.json has no "
                            "'preprocess'); it cannot be scored the way it was trained -- retrain it")
    params = PreprocessParams.from_dict(meta["preprocess"])
    name = f"run {run_id[:8]}" + (f" ({source})" if source != run_id else "")
    return TorchScorer(name, model, classes, positive, params), {"kind": "run", "run_id": run_id, "name": name}


@dataclass(frozen=True)
class Predictions:
    """One split scored: per image its id, path, 0/1 label, recipe, defect type and margin."""

    image_ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    recipes: np.ndarray
    defect_types: np.ndarray
    margins: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.size)


def predict(
    scorer: Scorer, dataset: Dataset, split: str, progress: bool = False, positive_class: str | None = None
) -> Predictions:
    """Score every image of one split of ``dataset``."""
    rows = dataset.split(split)
    positive = positive_class or dataset.positive_class
    if positive not in scorer.classes:
        raise EvaluateError(
            f"the model's classes {list(scorer.classes)} do not include the dataset's positive class '{positive}'"
        )
    labels = (rows["label"].astype(str) == positive).to_numpy().astype(np.int64)
    images = dataset.read_images(rows, progress=progress)
    margins = scorer.margins(images) if len(images) else np.zeros(0)
    return Predictions(
        image_ids=rows["image_id"].astype(str).to_numpy(),
        paths=rows["path"].astype(str).to_numpy(),
        labels=labels,
        recipes=rows["recipe"].astype(str).to_numpy(),
        defect_types=rows["defect_type"].astype(str).to_numpy(),
        margins=np.asarray(margins, dtype=np.float64),
    )
