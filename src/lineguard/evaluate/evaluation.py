"""``evaluate``: score val and test, calibrate and choose thresholds on val, measure on test.

The order matters and is fixed: the temperature is fitted on the validation margins,
the cost-minimising thresholds are chosen on the *calibrated* validation scores (per
recipe where there is enough data), and only then are both applied, unchanged, to the
test split. Test images never influence a setting they are measured with.

:func:`evaluate_predictions` is the pure part (arrays in, :class:`EvaluationResult`
out); :func:`evaluate` adds the I/O: loading the model, scoring, the report, MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard.config import EvaluateConfig, LineguardConfig
from lineguard.evaluate import metrics as m
from lineguard.evaluate.scoring import EvaluateError, Predictions, Scorer, load_scorer, predict

if TYPE_CHECKING:
    from lineguard.gate import EvalSummary
    from lineguard.manifest import Dataset


@dataclass
class EvaluationResult:
    """Everything an evaluation found, and the decision settings the model should ship with.

    ``metrics`` holds ``overall``, ``per_recipe`` and ``per_defect`` for the test split
    (calibrated scores, chosen thresholds) plus ``val`` (the same on validation) and
    ``uncalibrated`` (test ECE before temperature scaling).
    """

    source: str
    dataset_version: str
    temperature: float
    thresholds: m.Thresholds
    cost: dict[str, float]
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    test_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    test: Predictions | None = None
    val: Predictions | None = None
    behaviour: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    evaluation_run_id: str | None = None
    report_path: str | None = None

    # --- scores of the test split, for reports and the gate ---------------------------------

    def test_scores(self, calibrated: bool = True) -> np.ndarray:
        assert self.test is not None
        return m.apply_temperature(self.test.margins, self.temperature if calibrated else 1.0)

    def test_thresholds(self) -> np.ndarray:
        assert self.test is not None
        return self.thresholds.for_recipes(self.test.recipes)

    def test_decisions(self) -> np.ndarray:
        return m.decisions(self.test_scores(), self.test_thresholds())

    @property
    def balanced_accuracy(self) -> float | None:
        return self.metrics["overall"].get("balanced_accuracy")

    @property
    def ece(self) -> float | None:
        return self.metrics["overall"].get("ece")

    def per_recipe_balanced_accuracy(self) -> dict[str, float | None]:
        return {r: s.get("balanced_accuracy") for r, s in self.metrics["per_recipe"].items()}

    def summary(self, name: str | None = None, parity_disagreement: float | None = None) -> EvalSummary:
        """The gate's view of this evaluation (with per-image costs for the paired test)."""
        from lineguard.gate import EvalSummary, SliceSummary

        def sl(d: dict[str, Any]) -> SliceSummary:
            return SliceSummary(int(d.get("n") or 0), d.get("balanced_accuracy"), d.get("expected_cost"))

        costs: dict[str, float] | None = None
        recipes: dict[str, str] | None = None
        if self.test is not None:
            c = m.item_costs(self.test.labels, self.test_decisions(), self.cost["false_reject"],
                             self.cost["missed_defect"])
            costs = {str(i): float(v) for i, v in zip(self.test.image_ids, c, strict=True)}
            recipes = {str(i): str(r) for i, r in zip(self.test.image_ids, self.test.recipes, strict=True)}
        return EvalSummary(
            name=name or self.source,
            overall=sl(self.metrics["overall"]),
            per_recipe={r: sl(d) for r, d in self.metrics["per_recipe"].items()},
            ece=self.ece,
            parity_disagreement=parity_disagreement,
            image_costs=costs,
            image_recipes=recipes,
            dataset_version=self.dataset_version,
        )

    def headline(self) -> dict[str, Any]:
        """The few numbers that matter, JSON-ready (bundle.json ``evaluation`` block)."""
        o = self.metrics["overall"]
        return {
            "split": "test",
            "dataset_version": self.dataset_version,
            "n": o.get("n"),
            "balanced_accuracy": o.get("balanced_accuracy"),
            "balanced_accuracy_ci95": o.get("ci", {}).get("balanced_accuracy"),
            "accuracy": o.get("accuracy"),
            "false_reject_rate": o.get("false_reject_rate"),
            "escape_rate": o.get("escape_rate"),
            "expected_cost": o.get("expected_cost"),
            "roc_auc": o.get("roc_auc"),
            "ece": o.get("ece"),
            "ece_uncalibrated": self.metrics.get("uncalibrated", {}).get("ece"),
            "per_recipe": {
                r: {"n": s.get("n"), "balanced_accuracy": s.get("balanced_accuracy"),
                    "false_reject_rate": s.get("false_reject_rate"), "escape_rate": s.get("escape_rate")}
                for r, s in self.metrics["per_recipe"].items()
            },
            "per_defect": {k: v.get("detection_rate") for k, v in self.metrics.get("per_defect", {}).items()},
            "warnings": list(self.warnings),
        }

    def to_bundle_dict(self) -> dict[str, Any]:
        """The ``decision`` and ``evaluation`` blocks of bundle.json."""
        return {
            "decision": {
                "default_threshold": float(self.thresholds.default),
                "per_recipe": {k: float(v) for k, v in sorted(self.thresholds.per_recipe.items())},
                "cost": dict(self.cost),
                "temperature": float(self.temperature),
            },
            "evaluation": self.headline(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything except the per-image arrays (``evaluation.json``)."""
        return {
            "source": self.source,
            "run_id": self.run_id,
            "dataset_version": self.dataset_version,
            "temperature": self.temperature,
            "thresholds": {"default": self.thresholds.default, "per_recipe": self.thresholds.per_recipe,
                           "notes": list(self.thresholds.notes)},
            "cost": self.cost,
            "metrics": self.metrics,
            "test_counts": self.test_counts,
            "behaviour": self.behaviour,
            "warnings": self.warnings,
            "notes": self.notes,
        }


def evaluate_predictions(
    val: Predictions, test: Predictions, config: EvaluateConfig, source: str = "", dataset_version: str = ""
) -> EvaluationResult:
    """Fit temperature and thresholds on ``val``, measure everything on ``test``. Pure."""
    fr, md = config.cost.false_reject, config.cost.missed_defect
    notes: list[str] = []
    if config.calibrate:
        temperature = m.fit_temperature(val.margins, val.labels)
        if val.labels.size == 0 or val.labels.min() == val.labels.max():
            notes.append("validation split lacks a class: no temperature fitted (T = 1)")
    else:
        temperature = 1.0
    val_scores = m.apply_temperature(val.margins, temperature)
    thresholds = m.choose_thresholds(
        val.labels, val_scores, val.recipes, fr, md,
        per_recipe=config.per_recipe_threshold, min_per_class=config.min_threshold_samples,
    )
    notes.extend(thresholds.notes)
    scores = m.apply_temperature(test.margins, temperature)
    per_item = thresholds.for_recipes(test.recipes)
    common: dict[str, Any] = {"false_reject": fr, "missed_defect": md, "bins": config.ece_bins, "seed": config.seed}
    overall = m.summarise(test.labels, scores, per_item, n_resamples=config.bootstrap,
                          ci_metrics=("balanced_accuracy", "accuracy", "false_reject_rate", "escape_rate",
                                      "expected_cost"), **common)
    if config.bootstrap and test.labels.size and 0 < test.labels.sum() < test.labels.size:
        lo, hi = m.bootstrap_ci(test.labels, scores, per_item, lambda y, s, _t: m.roc_auc(y, s),
                                n_resamples=min(config.bootstrap, 300), seed=config.seed)
        overall["ci"]["roc_auc"] = [m.clean(lo), m.clean(hi)]
    metrics: dict[str, Any] = {
        "overall": overall,
        "per_recipe": m.per_slice(test.labels, scores, per_item, test.recipes, n_resamples=config.bootstrap,
                                  **common),
        "per_defect": m.detection_rates(test.labels, scores, per_item, test.defect_types,
                                        n_resamples=config.bootstrap, seed=config.seed),
        "uncalibrated": {
            "ece": m.clean(m.expected_calibration_error(test.labels, m.apply_temperature(test.margins, 1.0),
                                                        config.ece_bins)),
        },
        "val": m.summarise(val.labels, val_scores, thresholds.for_recipes(val.recipes), **common),
        "reliability": {
            "before": m.reliability(test.labels, m.apply_temperature(test.margins, 1.0), config.ece_bins),
            "after": m.reliability(test.labels, scores, config.ece_bins),
        },
    }
    counts, warnings = m.describe_test_set(test.labels, test.recipes, config.min_test_per_recipe)
    for recipe in sorted(set(val.recipes.tolist()) - set(test.recipes.tolist())):
        warnings.append(f"recipe '{recipe}' is in the val split but has no test images")
    return EvaluationResult(
        source=source,
        dataset_version=dataset_version,
        temperature=float(temperature),
        thresholds=thresholds,
        cost={"false_reject": float(fr), "missed_defect": float(md)},
        metrics=metrics,
        warnings=warnings,
        notes=notes,
        test_counts=counts,
        test=test,
        val=val,
    )


def _load_dataset(dataset: Dataset | str) -> Dataset:
    from lineguard.manifest import Dataset as _Dataset
    from lineguard.manifest import load_dataset

    return dataset if isinstance(dataset, _Dataset) else load_dataset(str(dataset))


def evaluate(
    source: str,
    dataset: Dataset | str,
    config: LineguardConfig,
    out: str | None = None,
    log: bool = True,
    report: bool = True,
    behaviour: bool = True,
    progress: bool = False,
    scorer: Scorer | None = None,
) -> EvaluationResult:
    """Evaluate a run (id, ``models:/name@alias``, ``champion``) or a bundle on a dataset.

    Scores the val and test splits, fits temperature and thresholds on val, measures on
    test, runs the behavioural checks, writes ``report.md`` / ``report.html`` /
    ``evaluation.json`` to ``out`` (default ``<workdir>/evaluations/<id>``) and logs
    them to MLflow as an evaluation run (nested under the evaluated run) when ``log``.
    """
    ds = _load_dataset(dataset)
    info: dict[str, Any] = {"kind": "custom", "run_id": None, "name": source}
    if scorer is None:
        scorer, info = load_scorer(source, config)
    val = predict(scorer, ds, "val", progress=progress)
    test = predict(scorer, ds, "test", progress=progress)
    if len(test) == 0:
        raise EvaluateError(f"dataset '{ds.root}' has no test images; re-split it (ingest.split) before evaluating")
    result = evaluate_predictions(val, test, config.evaluate, source=source, dataset_version=ds.version)
    result.run_id = info.get("run_id")
    if info.get("kind") == "bundle":
        _compare_bundle_decisions(result, scorer)
    if behaviour:
        from lineguard.evaluate.behaviour import behaviour_checks

        rows = ds.split("test")
        result.behaviour = behaviour_checks(
            scorer, ds.read_images(rows), result.test_decisions(), result.test.recipes if result.test else [],
            result.test.labels if result.test else [], result.temperature, result.thresholds,
            min_recipe_balanced_accuracy=config.gate.min_recipe_balanced_accuracy,
            per_recipe=result.per_recipe_balanced_accuracy(),
        )
    out_dir = Path(out) if out else Path(config.workdir) / "evaluations" / _slug(info.get("run_id") or source)
    if report:
        from lineguard.evaluate.report import write_report

        result.report_path = str(write_report(result, ds, out_dir, title=info.get("name", source),
                                              gallery=config.evaluate.gallery))
    if log:
        _log_to_mlflow(result, config, out_dir if report else None, info)
    return result


def _compare_bundle_decisions(result: EvaluationResult, scorer: Scorer) -> None:
    """Note when the bundle's own thresholds differ from the ones fitted here."""
    bundle = getattr(scorer, "bundle", None)
    if bundle is None:
        return
    shipped = float(bundle.default_threshold)
    if not math.isclose(shipped, result.thresholds.default, abs_tol=0.05):
        result.notes.append(
            f"the bundle ships default threshold {shipped:.3f}; evaluation on this data chose "
            f"{result.thresholds.default:.3f} (metrics use the latter)"
        )


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return keep.strip("-")[:60] or "evaluation"


def _log_to_mlflow(result: EvaluationResult, config: LineguardConfig, out_dir: Path | None,
                   info: dict[str, Any]) -> None:
    from lineguard import tracking

    tags = {tracking.TAG_KIND: "evaluate", tracking.TAG_DATASET_VERSION: result.dataset_version,
            "evaluated": result.source, "evaluated_kind": info.get("kind", "")}
    parent = info.get("run_id") if info.get("kind") == "run" else None
    if info.get("run_id"):
        tags["evaluated_run"] = str(info["run_id"])
    with tracking.start_run(config, name=f"evaluate {info.get('name', result.source)}", tags=tags,
                            parent_run_id=parent) as run:
        result.evaluation_run_id = run.run_id
        run.log_params({"temperature": result.temperature, "threshold.default": result.thresholds.default,
                        **{f"threshold.{k}": v for k, v in result.thresholds.per_recipe.items()},
                        "cost.false_reject": result.cost["false_reject"],
                        "cost.missed_defect": result.cost["missed_defect"]})
        flat = {f"test_{k}": v for k, v in m.as_float_dict(result.metrics["overall"]).items()}
        for recipe, s in result.metrics["per_recipe"].items():
            flat.update({f"test_{recipe}_{k}": v for k, v in m.as_float_dict(s).items()
                         if k in ("balanced_accuracy", "false_reject_rate", "escape_rate", "expected_cost")})
        unc = result.metrics["uncalibrated"].get("ece")
        if unc is not None:
            flat["test_ece_uncalibrated"] = float(unc)
        run.log_metrics(flat)
        run.log_dict(result.to_dict(), "evaluation/evaluation.json")
        if out_dir is not None and out_dir.is_dir():
            for path in sorted(out_dir.iterdir()):
                if path.is_file():
                    run.log_artifact_bytes(path.read_bytes(), f"evaluation/{path.name}")
