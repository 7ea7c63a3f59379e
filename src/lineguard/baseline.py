"""The non-deep baseline: hand-crafted colour/shape/texture features + a classical classifier.

It answers "could a traditional method do it?" before anyone trusts a CNN. Images are
resized with :func:`lineguard.preprocess.resize` (the same contract as training and
the edge), turned into a fixed-length vector by :func:`image_features` (a pure
function), and scikit-learn classifiers -- logistic regression and histogram gradient
boosting -- are fitted on the train split with a small grid searched on the val split.
The chosen one is scored on the test split, overall and per recipe, and the run is
tracked in MLflow like any other (tag ``lineguard.kind=baseline``).

Features (per image, a 3x3 grid of regions plus the whole image):
HSV colour histograms per region, RGB mean/std per region, edge density and mean
gradient per region, an orientation histogram of gradients per region (HOG-lite),
local variance statistics and a rotation-invariant local-binary-pattern histogram.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError

if TYPE_CHECKING:
    from rich.console import Console

    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset
    from lineguard.preprocess import PreprocessParams


class BaselineError(LineguardError):
    """The dataset cannot be used for the baseline (no split rows, one class only, ...)."""


GRID = 3  # regions per side
HUE_BINS, SAT_BINS, VAL_BINS = 12, 4, 4
ORIENT_BINS = 8
EDGE_THRESHOLD = 0.1  # gradient magnitude (0..1 image scale) that counts as an edge

# the grid searched on the val split: (name, estimator factory, parameter grid)
CANDIDATE_GRID: dict[str, list[dict[str, Any]]] = {
    "logistic_regression": [{"C": c} for c in (0.01, 0.1, 1.0, 10.0)],
    # One boosting point: 15 and 31 leaves scored the same on val on the toy set, each fit costs ~20 s on 2 cores.
    "hist_gradient_boosting": [{"learning_rate": 0.15, "max_leaf_nodes": 31}],
}


# --- features (pure) -----------------------------------------------------------------------------


def _regions(h: int, w: int, grid: int = GRID) -> list[tuple[slice, slice]]:
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(grid) for j in range(grid)]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWx3 float32 HSV, each channel in [0, 1)."""
    x = rgb.astype(np.float32) / 255.0
    maxc, minc = x.max(axis=2), x.min(axis=2)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return np.stack([hue, sat, maxc], axis=2).astype(np.float32)


def _hist(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalised histogram of values in [0, 1)."""
    idx = np.clip((values * bins).astype(np.int64), 0, bins - 1).ravel()
    counts = np.bincount(idx, weights=None if weights is None else weights.ravel(), minlength=bins)
    total = counts.sum()
    return (counts / total if total > 0 else counts).astype(np.float32)


def image_features(image: np.ndarray) -> np.ndarray:
    """A fixed-length float32 feature vector of an HxWx3 uint8 RGB image (see the module docstring).

    Pure and deterministic; the length depends only on the constants above
    (see :func:`feature_names`), not on the image size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BaselineError(f"image_features expects an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if min(h, w) < GRID * 2:
        raise BaselineError(f"image_features needs at least {GRID * 2}x{GRID * 2} pixels, got {w}x{h}")
    hsv = _rgb_to_hsv(image)
    rgb = image.astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)

    # gradients (central differences) and their orientation, folded to [0, pi)
    gy, gx = np.gradient(gray)
    mag = np.hypot(gx, gy)
    orient = (np.arctan2(gy, gx) % np.pi) / np.pi

    # local variance in 3x3 windows
    pad = np.pad(gray, 1, mode="edge")
    windows = np.stack([pad[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    local_var = windows.var(axis=0)

    # rotation-invariant LBP: how many of the 8 neighbours are brighter (0..8)
    centre = windows[4]
    brighter = (windows[[0, 1, 2, 3, 5, 6, 7, 8]] > centre + 1.0 / 255.0).sum(axis=0)

    parts: list[np.ndarray] = []
    for ys, xs in [*_regions(h, w), (slice(0, h), slice(0, w))]:
        region_hsv = hsv[ys, xs]
        sat = region_hsv[..., 1]
        # hue is only meaningful where there is colour: weight it by saturation
        parts.append(_hist(region_hsv[..., 0], HUE_BINS, weights=sat))
        parts.append(_hist(sat, SAT_BINS))
        parts.append(_hist(region_hsv[..., 2], VAL_BINS))
        region_rgb = rgb[ys, xs].reshape(-1, 3)
        parts.append(region_rgb.mean(axis=0))
        parts.append(region_rgb.std(axis=0))
        region_mag = mag[ys, xs]
        parts.append(np.array([(region_mag > EDGE_THRESHOLD).mean(), region_mag.mean(), region_mag.std()], np.float32))
        parts.append(_hist(orient[ys, xs], ORIENT_BINS, weights=region_mag))
        region_var = local_var[ys, xs]
        parts.append(np.array([region_var.mean(), region_var.std(), np.sqrt(region_var).mean()], np.float32))
    parts.append(np.bincount(brighter.ravel(), minlength=9).astype(np.float32) / brighter.size)
    return np.concatenate(parts).astype(np.float32)


def feature_names() -> list[str]:
    """Names of the entries of :func:`image_features`, in order."""
    names: list[str] = []
    for region in [f"r{i}{j}" for i in range(GRID) for j in range(GRID)] + ["all"]:
        names += [f"{region}.hue{b}" for b in range(HUE_BINS)]
        names += [f"{region}.sat{b}" for b in range(SAT_BINS)]
        names += [f"{region}.val{b}" for b in range(VAL_BINS)]
        names += [f"{region}.{c}_mean" for c in "rgb"] + [f"{region}.{c}_std" for c in "rgb"]
        names += [f"{region}.edge_density", f"{region}.grad_mean", f"{region}.grad_std"]
        names += [f"{region}.orient{b}" for b in range(ORIENT_BINS)]
        names += [f"{region}.lvar_mean", f"{region}.lvar_std", f"{region}.lstd_mean"]
    names += [f"lbp{k}" for k in range(9)]
    return names


def features_matrix(images: Iterable[np.ndarray], params: PreprocessParams) -> np.ndarray:
    """Resize each image with the preprocessing contract, then stack :func:`image_features`."""
    from lineguard.preprocess import resize

    rows = [image_features(resize(img, params)) for img in images]
    return np.stack(rows) if rows else np.empty((0, len(feature_names())), np.float32)


# --- metrics (pure) ------------------------------------------------------------------------------


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (NaN when empty)."""
    classes = np.unique(y_true)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


def slice_metrics(y_true: np.ndarray, y_pred: np.ndarray, recipes: Sequence[str]) -> dict[str, Any]:
    """Balanced accuracy and accuracy overall and per recipe."""
    recipe_arr = np.asarray(recipes)
    per_recipe = {
        str(r): balanced_accuracy(y_true[recipe_arr == r], y_pred[recipe_arr == r]) for r in sorted(set(recipes))
    }
    return {
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "n": len(y_true),
        "per_recipe": per_recipe,
    }


# --- the baseline run ----------------------------------------------------------------------------


@dataclass
class Candidate:
    """One fitted grid point and its val score."""

    classifier: str
    params: dict[str, Any]
    val_balanced_accuracy: float
    fit_seconds: float


@dataclass
class BaselineResult:
    """The chosen classical model and its scores; ``model`` is the fitted scikit-learn pipeline."""

    run_id: str | None
    classifier: str
    params: dict[str, Any]
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    candidates: list[Candidate]
    num_features: int
    feature_seconds: float
    seconds: float
    dataset_version: str
    model: Any = field(repr=False, default=None)


def _make_estimator(name: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic_regression":
        return make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed, **params)
        )
    if name == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(
            max_iter=100, class_weight="balanced", random_state=seed, early_stopping=False, **params
        )
    raise BaselineError(f"unknown baseline classifier '{name}'; valid: {', '.join(CANDIDATE_GRID)}")


def _split_arrays(
    dataset: Dataset, split: str, params: PreprocessParams, classes: list[str], progress: bool, console: Console
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = dataset.split(split)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(rows["label"]) - set(index))
    if unknown:
        raise BaselineError(f"dataset '{dataset.root}' split {split} has labels {unknown} not in {classes}")
    paths: Iterable[str] = list(rows["path"])
    if progress and len(rows):
        from rich.progress import track

        paths = track(paths, description=f"features ({split})", transient=True, console=console)
    x = features_matrix((dataset.read_image(p) for p in paths), params)
    y = np.array([index[c] for c in rows["label"]], dtype=np.int64)
    return x, y, [str(r) for r in rows["recipe"]]


def _safe_metric_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def baseline(
    config: LineguardConfig,
    dataset: Dataset,
    *,
    track: bool = True,
    run_name: str | None = None,
    grid: dict[str, list[dict[str, Any]]] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> BaselineResult:
    """Fit the feature + classical-classifier baseline; pick by val balanced accuracy; score on test.

    ``config.preprocess`` decides the image size (the same contract as the CNN);
    ``config.train.seed`` seeds the classifiers. When ``track`` the run is recorded in
    MLflow with params, the candidate table and test metrics overall and per recipe.
    ``grid`` replaces :data:`CANDIDATE_GRID` (classifier name -> list of parameter dicts).
    """
    from rich.console import Console

    from lineguard.train import preprocess_params

    console = console or Console()
    t0 = time.perf_counter()
    classes = dataset.classes
    if len(classes) < 2:
        raise BaselineError(f"dataset '{dataset.root}' has only the class(es) {classes}; the baseline needs two")
    for split in ("train", "val"):
        if len(dataset.split(split)) == 0:
            raise BaselineError(f"dataset '{dataset.root}' has no {split} split rows; re-ingest it with splits")
    params = preprocess_params(config)
    seed = config.train.seed

    t_feat = time.perf_counter()
    x_train, y_train, _ = _split_arrays(dataset, "train", params, classes, progress, console)
    x_val, y_val, r_val = _split_arrays(dataset, "val", params, classes, progress, console)
    x_test, y_test, r_test = _split_arrays(dataset, "test", params, classes, progress, console)
    feature_seconds = time.perf_counter() - t_feat
    if len(np.unique(y_train)) < 2:
        raise BaselineError(f"dataset '{dataset.root}': the train split holds one class only; the baseline needs two")

    from threadpoolctl import threadpool_limits

    candidates: list[Candidate] = []
    best: tuple[float, int, Any] | None = None
    # one thread: these fits are small, and OpenMP spin-waiting on a shared machine makes
    # gradient boosting 10-50x slower; it also keeps the result identical across machines
    with threadpool_limits(limits=1):
        for name, points in (grid or CANDIDATE_GRID).items():
            for grid_params in points:
                t_fit = time.perf_counter()
                estimator = _make_estimator(name, grid_params, seed).fit(x_train, y_train)
                score = balanced_accuracy(y_val, estimator.predict(x_val))
                candidates.append(Candidate(name, dict(grid_params), score, time.perf_counter() - t_fit))
                # ties keep the first (simplest) candidate: logistic regression, smallest C
                if best is None or score > best[0]:
                    best = (score, len(candidates) - 1, estimator)
    if best is None:
        raise BaselineError("the baseline grid is empty; give at least one classifier and parameter set")
    chosen, model = candidates[best[1]], best[2]
    val_metrics = slice_metrics(y_val, model.predict(x_val), r_val)
    test_metrics = slice_metrics(y_test, model.predict(x_test), r_test) if len(y_test) else {}

    result = BaselineResult(
        run_id=None, classifier=chosen.classifier, params=chosen.params, val_metrics=val_metrics,
        test_metrics=test_metrics, candidates=candidates, num_features=int(x_train.shape[1]),
        feature_seconds=feature_seconds, seconds=0.0, dataset_version=dataset.version, model=model,
    )
    result.seconds = time.perf_counter() - t0
    if track:
        result.run_id = _log_run(config, dataset, result, run_name, len(y_train))
    return result


def _log_run(config: LineguardConfig, dataset: Dataset, result: BaselineResult, run_name: str | None,
             train_images: int) -> str:
    from lineguard import tracking

    tags = {tracking.TAG_KIND: "baseline", tracking.TAG_MODEL: f"baseline:{result.classifier}"}
    with tracking.start_run(config, name=run_name or "baseline", tags=tags) as run:
        run.log_text(config.to_yaml(), tracking.CONFIG_ARTIFACT)
        data = config.to_dict()
        run.log_params(tracking.flatten({"preprocess": data["preprocess"]}))
        run.log_params({
            "baseline.classifier": result.classifier,
            **{f"baseline.{k}": v for k, v in result.params.items()},
            "baseline.num_features": result.num_features,
            "baseline.grid": GRID,
            "seed": config.train.seed,
            "dataset_version": dataset.version,
            "train_images": train_images,
        })
        run.log_dataset(dataset)
        run.log_environment()
        metrics: dict[str, float] = {
            "val_balanced_accuracy": result.val_metrics["balanced_accuracy"],
            "feature_seconds": result.feature_seconds,
            "train_seconds": result.seconds,
        }
        if result.test_metrics:
            metrics["test_balanced_accuracy"] = result.test_metrics["balanced_accuracy"]
            metrics["test_accuracy"] = result.test_metrics["accuracy"]
            for recipe, value in result.test_metrics["per_recipe"].items():
                metrics[f"test_balanced_accuracy.{_safe_metric_name(recipe)}"] = value
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        run.log_dict([c.__dict__ for c in result.candidates], "baseline/candidates.json")
        run.log_dict({"val": result.val_metrics, "test": result.test_metrics}, "baseline/metrics.json")
        run.log_dict(feature_names(), "baseline/feature_names.json")
        return run.run_id


def candidates_table(result: BaselineResult) -> Any:
    """A rich Table of the grid (val) and the chosen model's test scores per recipe."""
    from rich.table import Table

    table = Table(title=f"baseline: hand-crafted features ({result.num_features}) + classical classifier")
    table.add_column("classifier")
    table.add_column("params")
    table.add_column("val bal. acc", justify="right")
    table.add_column("fit s", justify="right")
    for c in result.candidates:
        chosen = c.classifier == result.classifier and c.params == result.params
        style = "bold green" if chosen else None
        params = ", ".join(f"{k}={v}" for k, v in c.params.items())
        table.add_row(c.classifier, params, f"{c.val_balanced_accuracy:.4f}", f"{c.fit_seconds:.2f}", style=style)
    return table


def scores_table(result: BaselineResult) -> Any:
    """A rich Table of the chosen model's test balanced accuracy, overall and per recipe."""
    from rich.table import Table

    table = Table(title=f"test split: {result.classifier}")
    table.add_column("slice")
    table.add_column("balanced accuracy", justify="right")
    if result.test_metrics:
        table.add_row("all", f"{result.test_metrics['balanced_accuracy']:.4f}", style="bold")
        for recipe, value in result.test_metrics["per_recipe"].items():
            table.add_row(recipe, f"{value:.4f}")
    return table
