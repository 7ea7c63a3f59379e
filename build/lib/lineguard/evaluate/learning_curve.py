"""How much data do we need? Train on growing fractions of the training split and extrapolate.

For each fraction (default 10/25/50/100 %) and seed, a stratified subset of the training
split (per recipe and class, whole near-duplicate groups) is trained with
:func:`lineguard.train.train` and measured on the *unchanged* val/test splits with the
same evaluation as everything else. Per recipe, the test balanced accuracy against the
number of training images of that recipe is fitted with a saturating curve

    acc(n) = a - b * n^(-c)        (a = the accuracy more data converges to)

and the fit says whether more images are likely to help and roughly how many more
give the next point of balanced accuracy. The fit falls back to a log-linear trend
when the saturating fit does not converge (few or flat points); both are rough
extrapolations and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset


# --- the curve (pure) ------------------------------------------------------------------------


def saturating(n: Any, a: float, b: float, c: float) -> np.ndarray:
    """acc(n) = a - b * n^-c."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


@dataclass(frozen=True)
class CurveFit:
    """A fitted learning curve: ``method`` is ``saturating``, ``log-linear`` or ``none``."""

    method: str
    a: float = math.nan
    b: float = math.nan
    c: float = math.nan
    slope: float = math.nan  # log-linear: accuracy gained per doubling of the data
    note: str = ""

    def predict(self, n: Any) -> np.ndarray:
        x = np.asarray(n, dtype=np.float64)
        if self.method == "saturating":
            return saturating(x, self.a, self.b, self.c)
        if self.method == "log-linear":
            return self.a + self.slope * np.log2(x)
        return np.full(x.shape, np.nan)


def fit_curve(n: Sequence[float], acc: Sequence[float]) -> CurveFit:
    """Fit acc = a - b n^-c (0 <= a <= 1, b >= 0, 0 < c <= 3); fall back to a log-linear trend."""
    x = np.asarray(n, dtype=np.float64)
    y = np.asarray(acc, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if np.unique(x).size < 2:
        return CurveFit("none", note="fewer than two distinct data sizes: no curve")
    if np.unique(x).size >= 3:
        try:
            import warnings

            from scipy.optimize import curve_fit

            a0 = min(1.0, float(y.max()) + 0.01)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, _ = curve_fit(saturating, x, y, p0=(a0, max(1e-3, a0 - float(y.min())) * x.min() ** 0.5, 0.5),
                                    bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 3.0]), maxfev=20000)
            a, b, c = (float(v) for v in popt)
            residual = float(np.sqrt(np.mean((saturating(x, a, b, c) - y) ** 2)))
            return CurveFit("saturating", a, b, c, note=f"rms residual {residual:.4f}")
        except (RuntimeError, ValueError, ImportError) as exc:
            note = f"saturating fit failed ({type(exc).__name__}); log-linear trend used"
    else:
        note = "two data sizes only: log-linear trend"
    slope, intercept = np.polyfit(np.log2(x), y, 1)
    return CurveFit("log-linear", a=float(intercept), slope=float(slope), note=note)


def images_for_gain(fit: CurveFit, n_now: float, gain: float = 0.01) -> float | None:
    """Images needed (total, per recipe) for ``gain`` more accuracy than the curve gives at ``n_now``.

    None when the curve says the gain is out of reach (it saturates below it) or there is no curve.
    """
    now = float(fit.predict([n_now])[0])
    if not math.isfinite(now):
        return None
    target = now + gain
    if target > 1.0:
        return None
    if fit.method == "saturating":
        if target >= fit.a or fit.b <= 0:
            return None
        return float((fit.b / (fit.a - target)) ** (1.0 / fit.c))
    if fit.method == "log-linear":
        if fit.slope <= 1e-6:
            return None
        return float(n_now * 2 ** (gain / fit.slope))
    return None


def advice(fit: CurveFit, n_now: float, acc_now: float | None, gain: float = 0.01) -> str:
    """One sentence: will more images help, and about how many more for ``gain`` more accuracy?"""
    if fit.method == "none":
        return "not enough points to say"
    if acc_now is not None and acc_now >= 0.999:
        return "already at ~100 % on the test split: more images are unlikely to show a gain here"
    need = images_for_gain(fit, n_now, gain)
    ceiling = f"; the curve levels off near {100 * fit.a:.1f} %" if fit.method == "saturating" else ""
    if need is None:
        return f"more images of the same kind are unlikely to add {100 * gain:.0f} point{ceiling}"
    more = max(0, math.ceil(need - n_now))
    return (f"about {more} more training images (≈{math.ceil(need)} in all) for +{100 * gain:.0f} point of "
            f"balanced accuracy{ceiling}")


# --- running it ----------------------------------------------------------------------------


def subset_train(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """The dataset with only ``fraction`` of its training split kept (the rest marked 'unused').

    Sampling is by near-duplicate group, stratified per recipe and label, with at least
    one group per stratum; val and test are untouched, so every subset is measured on
    the same images.
    """
    from lineguard.manifest import HOLDOUT, Dataset, manifest_version

    df = dataset.manifest.copy()
    if fraction >= 1.0:
        return dataset
    rng = np.random.default_rng(seed)
    train = df[df["split"] == "train"]
    keep: set[str] = set()
    for _, stratum in train.groupby(["recipe", "label"], sort=True):
        groups = sorted(set(stratum["group_id"]))
        k = max(1, round(fraction * len(groups)))
        keep.update(rng.choice(groups, size=k, replace=False).tolist())
    drop = (df["split"] == "train") & ~df["group_id"].isin(keep)
    df.loc[drop, "split"] = HOLDOUT
    meta = {**dataset.meta, "subset_of": dataset.version, "train_fraction": fraction, "subset_seed": seed}
    return Dataset(root=dataset.root, manifest=df, version=manifest_version(df), meta=meta)


@dataclass
class LearningCurve:
    """Points (fraction, seed, images per recipe, test balanced accuracy per recipe), fits and advice."""

    points: list[dict[str, Any]] = field(default_factory=list)
    fits: dict[str, CurveFit] = field(default_factory=dict)
    advice: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    figure_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "fits": {k: vars(v) for k, v in self.fits.items()},
            "advice": self.advice,
            "run_id": self.run_id,
        }


def analyse(points: list[dict[str, Any]], gain: float = 0.01) -> tuple[dict[str, CurveFit], dict[str, str]]:
    """Fit one curve per recipe (and 'overall') over the points; advice at the largest size."""
    fits: dict[str, CurveFit] = {}
    notes: dict[str, str] = {}
    keys = [*sorted({k for p in points for k in p["per_recipe"]}), "overall"]
    for key in keys:
        xs, ys = [], []
        for p in points:
            n = p["train_images"] if key == "overall" else p["train_per_recipe"].get(key)
            acc = p["balanced_accuracy"] if key == "overall" else p["per_recipe"].get(key)
            if n and acc is not None:
                xs.append(float(n))
                ys.append(float(acc))
        fit = fit_curve(xs, ys)
        fits[key] = fit
        if xs:
            n_max = max(xs)
            at_max = [y for x, y in zip(xs, ys, strict=True) if x == n_max]
            notes[key] = advice(fit, n_max, float(np.mean(at_max)), gain)
        else:
            notes[key] = "no points"
    return fits, notes


def learning_curve(
    config: LineguardConfig,
    dataset: Dataset | str,
    fractions: Sequence[float] | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    out: str | None = None,
    log: bool = True,
    progress: bool = False,
) -> LearningCurve:
    """Train on growing fractions of the training split and report the curve (see module docstring)."""
    from pathlib import Path

    from rich.console import Console

    from lineguard import train as train_mod
    from lineguard.evaluate.evaluation import evaluate_predictions, open_dataset
    from lineguard.evaluate.scoring import TorchScorer, predict

    ds = open_dataset(dataset)
    ec = config.evaluate
    fractions = sorted(fractions or ec.learning_curve_fractions)
    n_seeds = seeds or ec.learning_curve_seeds
    n_epochs = epochs or ec.learning_curve_epochs or config.train.epochs
    quiet = config.evaluate.model_copy(update={"bootstrap": 0})
    console = Console(quiet=not progress)
    points: list[dict[str, Any]] = []
    for fraction in fractions:
        for s in range(n_seeds):
            sub = subset_train(ds, fraction, seed=1000 * s + round(fraction * 100))
            cfg = config.model_copy(update={"train": config.train.model_copy(
                update={"epochs": n_epochs, "seed": config.train.seed + s})})
            console.print(f"learning curve: {100 * fraction:.0f} % of train, seed {s}")
            result = train_mod.train(cfg, sub, track=False, progress=progress, console=console)
            positive = sub.positive_class
            scorer = TorchScorer(f"{fraction}-{s}", result.model, tuple(result.classes), positive, result.preprocess)
            ev = evaluate_predictions(predict(scorer, sub, "val"), predict(scorer, sub, "test"), quiet)
            train_rows = sub.split("train")
            points.append({
                "fraction": fraction,
                "seed": s,
                "train_images": len(train_rows),
                "train_per_recipe": {str(k): int(v) for k, v in train_rows.groupby("recipe").size().items()},
                "balanced_accuracy": ev.balanced_accuracy,
                "per_recipe": ev.per_recipe_balanced_accuracy(),
            })
    fits, notes = analyse(points)
    curve = LearningCurve(points=points, fits=fits, advice=notes)
    out_dir = Path(out) if out else Path(config.workdir) / "learning-curves" / ds.version
    out_dir.mkdir(parents=True, exist_ok=True)
    png = figure_learning_curve(curve)
    figure = out_dir / "learning_curve.png"
    figure.write_bytes(png)
    curve.figure_path = str(figure)
    if log:
        from lineguard import tracking

        with tracking.start_run(config, name="learning-curve",
                                tags={tracking.TAG_KIND: "learning-curve",
                                      tracking.TAG_DATASET_VERSION: ds.version}) as run:
            curve.run_id = run.run_id
            run.log_params({"fractions": fractions, "seeds": n_seeds, "epochs": n_epochs,
                            "model": config.train.model})
            for i, p in enumerate(points):
                if p["balanced_accuracy"] is not None:
                    run.log_metrics({"test_balanced_accuracy": p["balanced_accuracy"],
                                     "train_images": p["train_images"]}, step=i)
            run.log_dict(curve.to_dict(), "learning_curve/learning_curve.json")
            run.log_artifact_bytes(png, "learning_curve/learning_curve.png")
    import json

    (out_dir / "learning_curve.json").write_text(json.dumps(curve.to_dict(), indent=2, default=str))
    return curve


def figure_learning_curve(curve: LearningCurve) -> bytes:
    """Test balanced accuracy vs training images per recipe, with the spread over seeds and the fits."""
    from lineguard.evaluate.report import figure_png, new_figure

    recipes = sorted(k for k in curve.fits if k != "overall")
    fig, ax = new_figure(figsize=(7, 4.2))
    for i, recipe in enumerate(recipes):
        colour = f"C{i % 10}"
        by_n: dict[int, list[float]] = {}
        for p in curve.points:
            n, acc = p["train_per_recipe"].get(recipe), p["per_recipe"].get(recipe)
            if n and acc is not None:
                by_n.setdefault(int(n), []).append(float(acc))
        if not by_n:
            continue
        ns = np.array(sorted(by_n))
        mean = np.array([np.mean(by_n[n]) for n in ns])
        lo = np.array([np.min(by_n[n]) for n in ns])
        hi = np.array([np.max(by_n[n]) for n in ns])
        ax.errorbar(ns, mean, yerr=[mean - lo, hi - mean], fmt="o", color=colour, capsize=3, label=recipe)
        fit = curve.fits[recipe]
        if fit.method != "none":
            grid = np.geomspace(ns.min(), ns.max() * 4, 60)
            ax.plot(grid, np.clip(fit.predict(grid), 0, 1), "--", color=colour, lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="training images per recipe", ylabel="test balanced accuracy",
           title="Learning curve (dashed: fit, extrapolated to 4x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)
