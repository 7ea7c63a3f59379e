"""``evaluate``: score val and test, apply a decision, measure on test.

The decision settings (:class:`~lineguard.edge.decision.Decision`: temperature and
per-recipe thresholds) come from one of two places, and the result says which:

- **a bundle ships one**: evaluating or gating a bundle uses the Decision it ships,
  unchanged -- those are the thresholds that decide on the line, so they are the ones
  judged. ``refit=True`` also fits a Decision on this val split and reports both side
  by side (``EvaluationResult.refit``); the headline metrics stay the shipped ones.
- **a run or a custom scorer**: :func:`fit_decision` fits it on val. The order is fixed:
  the temperature is fitted on the validation margins, the cost-minimising thresholds
  are chosen on the *calibrated* validation scores (per recipe where there is enough
  data), and only then are both applied, unchanged, to the test split. Test images
  never influence a setting they are measured with.

:func:`evaluate_predictions` is the pure part (arrays in, :class:`EvaluationResult`
out); :func:`evaluate` adds the I/O: loading the model, scoring, the report, MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard.config import EvaluateConfig, LineguardConfig
from lineguard.edge.decision import Cost, Decision
from lineguard.evaluate import metrics as m
from lineguard.evaluate.scoring import EvaluateError, Predictions, Scorer, load_scorer, predict

if TYPE_CHECKING:
    from lineguard.gate import EvalSummary
    from lineguard.manifest import Dataset

FITTED_ON_VAL = "val"
SHIPPED = "bundle"


@dataclass
class EvaluationResult:
    """Everything an evaluation found, and the decision settings it measured.

    ``decision`` is the Decision every metric here uses; ``decision_source`` says where it
    came from (``"val"``: fitted on this val split; ``"bundle"``: shipped by the evaluated
    bundle). ``cost`` is the cost matrix the expected costs are measured with (the
    configured ``evaluate.cost``). ``metrics`` holds ``overall``, ``per_recipe`` and
    ``per_defect`` for the test split plus ``val`` (the same on validation) and
    ``uncalibrated`` (test ECE before temperature scaling). ``refit``, when asked for,
    holds the Decision fitted on val and the test metrics it would give, beside the shipped ones.
    """

    source: str
    dataset_version: str
    decision: Decision
    decision_source: str
    cost: Cost
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    test_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    test: Predictions | None = None
    val: Predictions | None = None
    behaviour: dict[str, Any] = field(default_factory=dict)
    refit: dict[str, Any] | None = None
    run_id: str | None = None
    evaluation_run_id: str | None = None
    report_path: str | None = None

    # --- scores of the test split, for reports and the gate ---------------------------------

    def test_scores(self, calibrated: bool = True) -> np.ndarray:
        """p(defect) of every test image, with the decision's temperature (or T = 1)."""
        assert self.test is not None
        if not calibrated:
            return m.apply_temperature(self.test.margins, 1.0)
        return self.decision.scores_from_margins(self.test.margins)

    def test_thresholds(self) -> np.ndarray:
        assert self.test is not None
        return self.decision.thresholds_for(self.test.recipes)

    def test_decisions(self) -> np.ndarray:
        """1 = reject, per test image, under :attr:`decision`."""
        assert self.test is not None
        return self.decision.rejects(self.test_scores(), self.test.recipes).astype(np.int64)

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
            c = m.item_costs(self.test.labels, self.test_decisions(), self.cost.false_reject,
                             self.cost.missed_defect)
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
            "decision_source": self.decision_source,
            "per_recipe": {
                r: {"n": s.get("n"), "balanced_accuracy": s.get("balanced_accuracy"),
                    "false_reject_rate": s.get("false_reject_rate"), "escape_rate": s.get("escape_rate")}
                for r, s in self.metrics["per_recipe"].items()
            },
            "per_defect": {k: v.get("detection_rate") for k, v in self.metrics.get("per_defect", {}).items()},
            "warnings": list(self.warnings),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything except the per-image arrays (``evaluation.json``)."""
        return {
            "source": self.source,
            "run_id": self.run_id,
            "dataset_version": self.dataset_version,
            "decision": self.decision.to_dict(),
            "decision_source": self.decision_source,
            "cost": self.cost.to_dict(),
            "refit": self.refit,
            "metrics": self.metrics,
            "test_counts": self.test_counts,
            "behaviour": self.behaviour,
            "warnings": self.warnings,
            "notes": self.notes,
        }


def fit_decision(val: Predictions, config: EvaluateConfig) -> Decision:
    """Pure: the Decision fitted on a validation split -- temperature first, then thresholds.

    The temperature minimises the NLL of the val margins (``evaluate.calibrate``); the
    thresholds minimise the configured cost on the *calibrated* val scores, per recipe
    where every class has ``evaluate.min_threshold_samples`` images. Notes say what fell
    back (a val split without both classes keeps T = 1 and the Bayes threshold).
    """
    fr, md = config.cost.false_reject, config.cost.missed_defect
    notes: list[str] = []
    temperature = 1.0
    if config.calibrate:
        temperature = m.fit_temperature(val.margins, val.labels)
        if val.labels.size == 0 or val.labels.min() == val.labels.max():
            notes.append("validation split lacks a class: no temperature fitted (T = 1)")
    thresholds = m.choose_thresholds(
        val.labels, m.apply_temperature(val.margins, temperature), val.recipes, fr, md,
        per_recipe=config.per_recipe_threshold, min_per_class=config.min_threshold_samples,
        defect_rate=config.cost.defect_rate,
    )
    if config.cost.defect_rate is not None:
        notes.append(f"thresholds minimise the cost at a line defect rate of {config.cost.defect_rate:.1%} "
                     f"(evaluate.cost.defect_rate)")
    return Decision(
        default_threshold=thresholds.default, per_recipe=thresholds.per_recipe, temperature=float(temperature),
        cost=Cost(fr, md), fitted_on=FITTED_ON_VAL, notes=(*notes, *thresholds.notes),
    )


def _test_metrics(test: Predictions, decision: Decision, cost: Cost, config: EvaluateConfig) -> dict[str, Any]:
    """``overall`` and ``per_recipe`` metrics of the test split under ``decision``."""
    scores = decision.scores_from_margins(test.margins)
    per_item = decision.thresholds_for(test.recipes)
    common: dict[str, Any] = {"false_reject": cost.false_reject, "missed_defect": cost.missed_defect,
                              "bins": config.ece_bins, "seed": config.seed}
    overall = m.summarise(test.labels, scores, per_item, n_resamples=config.bootstrap,
                          ci_metrics=("balanced_accuracy", "accuracy", "false_reject_rate", "escape_rate",
                                      "expected_cost"), **common)
    return {
        "overall": overall,
        "per_recipe": m.per_slice(test.labels, scores, per_item, test.recipes, n_resamples=config.bootstrap,
                                  **common),
    }


def evaluate_predictions(
    val: Predictions,
    test: Predictions,
    config: EvaluateConfig,
    source: str = "",
    dataset_version: str = "",
    decision: Decision | None = None,
    refit: bool = False,
) -> EvaluationResult:
    """Measure ``test`` under ``decision`` (a shipped one), or under one fitted on ``val``. Pure.

    With ``decision`` given, nothing is fitted and every metric uses it as shipped;
    ``refit=True`` then also fits one on ``val`` (:func:`fit_decision`) and puts it, with
    the test metrics it would give and the differences, in ``result.refit``.
    """
    cost = Cost(config.cost.false_reject, config.cost.missed_defect)
    notes: list[str] = []
    if decision is None:
        decision, decision_source = fit_decision(val, config), FITTED_ON_VAL
    else:
        decision_source = SHIPPED
        if decision.cost != cost:
            notes.append(f"the shipped thresholds were chosen for cost {decision.cost.to_dict()}; expected costs "
                         f"here are measured with evaluate.cost {cost.to_dict()}")
    notes.extend(decision.notes)
    scores = decision.scores_from_margins(test.margins)
    per_item = decision.thresholds_for(test.recipes)
    val_scores = decision.scores_from_margins(val.margins)
    common: dict[str, Any] = {"false_reject": cost.false_reject, "missed_defect": cost.missed_defect,
                              "bins": config.ece_bins, "seed": config.seed}
    metrics: dict[str, Any] = _test_metrics(test, decision, cost, config)
    overall = metrics["overall"]
    if config.bootstrap and test.labels.size and 0 < test.labels.sum() < test.labels.size:
        lo, hi = m.bootstrap_ci(test.labels, scores, per_item, lambda y, s, _t: m.roc_auc(y, s),
                                n_resamples=min(config.bootstrap, 300), seed=config.seed)
        overall["ci"]["roc_auc"] = [m.clean(lo), m.clean(hi)]
    metrics.update({
        "per_defect": m.detection_rates(test.labels, scores, per_item, test.defect_types,
                                        n_resamples=config.bootstrap, seed=config.seed),
        "uncalibrated": {
            "ece": m.clean(m.expected_calibration_error(test.labels, m.apply_temperature(test.margins, 1.0),
                                                        config.ece_bins)),
        },
        "val": m.summarise(val.labels, val_scores, decision.thresholds_for(val.recipes), **common),
        "reliability": {
            "before": m.reliability(test.labels, m.apply_temperature(test.margins, 1.0), config.ece_bins),
            "after": m.reliability(test.labels, scores, config.ece_bins),
        },
    })
    refit_block = None
    if refit and decision_source == SHIPPED:
        fitted = fit_decision(val, config)
        refit_metrics = _test_metrics(test, fitted, cost, config.model_copy(update={"bootstrap": 0}))
        differences = decision.differences(fitted)
        refit_block = {"decision": fitted.to_dict(), "differences": differences, **refit_metrics}
        if differences:
            notes.append("fitted on this val split, the thresholds would differ from the shipped ones ("
                         + "; ".join(differences) + "); every metric here uses the shipped ones")
    counts, warnings = m.describe_test_set(test.labels, test.recipes, config.min_test_per_recipe)
    for recipe in sorted(set(val.recipes.tolist()) - set(test.recipes.tolist())):
        warnings.append(f"recipe '{recipe}' is in the val split but has no test images")
    return EvaluationResult(
        source=source,
        dataset_version=dataset_version,
        decision=decision,
        decision_source=decision_source,
        cost=cost,
        metrics=metrics,
        warnings=warnings,
        notes=notes,
        test_counts=counts,
        test=test,
        val=val,
        refit=refit_block,
    )


def open_dataset(dataset: Dataset | str) -> Dataset:
    """``dataset`` itself, or the dataset at that folder / URL (:func:`lineguard.manifest.load_dataset`)."""
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
    decision: Decision | None = None,
    refit: bool = False,
) -> EvaluationResult:
    """Evaluate a run (id, ``models:/name@alias``, ``champion``) or a bundle on a dataset.

    Scores the val and test splits and measures test under a Decision: the one a bundle
    ships (or ``decision`` when given), else one fitted on val. ``refit=True`` also fits
    one on val for a bundle and reports both side by side. Runs the behavioural checks,
    writes ``report.md`` / ``report.html`` / ``evaluation.json`` to ``out`` (default
    ``<workdir>/evaluations/<id>``) and logs them to MLflow as an evaluation run (nested
    under the evaluated run) when ``log``.
    """
    ds = open_dataset(dataset)
    info: dict[str, Any] = {"kind": "custom", "run_id": None, "name": source}
    if scorer is None:
        scorer, info = load_scorer(source, config)
    if decision is None and info.get("kind") == "bundle":
        decision = info["decision"]
    val = predict(scorer, ds, "val", progress=progress)
    test = predict(scorer, ds, "test", progress=progress)
    if len(test) == 0:
        raise EvaluateError(f"dataset '{ds.root}' has no test images; re-split it (ingest.split) before evaluating")
    result = evaluate_predictions(val, test, config.evaluate, source=source, dataset_version=ds.version,
                                  decision=decision, refit=refit)
    result.run_id = info.get("run_id")
    if behaviour:
        from lineguard.evaluate.behaviour import behaviour_checks

        rows = ds.split("test")
        result.behaviour = behaviour_checks(
            scorer, ds.read_images(rows), result.test_decisions(), result.test.recipes if result.test else [],
            result.test.labels if result.test else [], result.decision,
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
        d = result.decision
        run.log_params({"temperature": d.temperature, "threshold.default": d.default_threshold,
                        **{f"threshold.{k}": v for k, v in d.per_recipe.items()},
                        "decision_source": result.decision_source,
                        "cost.false_reject": result.cost.false_reject,
                        "cost.missed_defect": result.cost.missed_defect})
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
