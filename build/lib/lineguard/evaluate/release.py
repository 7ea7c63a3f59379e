"""Release: register a run, gate a candidate against the champion, promote it.

The flow, and what each step records in the MLflow model registry:

1. ``register(RUN_ID)``: a new version of ``tracking.registered_model`` whose tags hold
   the run's latest evaluation (``eval.*``).
2. ``gate(CANDIDATE, against="champion", data=DATASET)``: evaluates the candidate and the
   champion on the same golden test set (a bundle with the Decision it ships -- the
   thresholds that decide on the line --, a run with one fitted on val), applies
   :func:`lineguard.gate.decide`, points the ``challenger`` alias at the candidate and records the verdict on its version
   (``gate.passed``, ``gate.reasons``, ``gate.champion_version``, ...).
3. ``promote(CANDIDATE)``: moves the ``champion`` alias, but only when the recorded gate
   passed against the *current* champion; ``force=True`` overrides and is recorded
   (``promoted_with_force``) on the version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.evaluate.evaluation import EvaluationResult
    from lineguard.gate import GateDecision
    from lineguard.tracking import ModelVersionRecord


class ReleaseError(LineguardError):
    """A registration, gate or promotion cannot proceed."""


@dataclass
class GateOutcome:
    """The decision plus what was compared and where it was recorded."""

    decision: GateDecision
    candidate: EvaluationResult
    champion: EvaluationResult | None
    candidate_version: str | None
    champion_version: str | None


def _latest_evaluation(config: LineguardConfig, run_id: str) -> dict[str, Any] | None:
    """The headline numbers of the newest evaluation run of ``run_id`` (None if never evaluated)."""
    from lineguard import tracking

    runs = tracking.list_runs(config, max_results=20, filter_string=f"tags.evaluated_run = '{run_id}'")
    for run in runs:
        try:
            data = json.loads(tracking.read_artifact(config, run.run_id, "evaluation/evaluation.json"))
        except LineguardError:
            continue
        overall = data.get("metrics", {}).get("overall", {})
        keep = ("balanced_accuracy", "false_reject_rate", "escape_rate", "ece", "expected_cost", "n")
        return {"evaluation_run": run.run_id, "dataset_version": data.get("dataset_version"),
                **{k: overall.get(k) for k in keep}}
    return None


def register(config: LineguardConfig, run_id: str, name: str | None = None) -> str:
    """Register a training run (run id or ``models:/`` URI) with its latest evaluation; returns the version."""
    from lineguard import tracking

    run_id = tracking.resolve_model_uri(config, run_id)
    return tracking.register(config, run_id, name, evaluation=_latest_evaluation(config, run_id))


def _run_of(config: LineguardConfig, source: str) -> str | None:
    """The training run behind a candidate: a run reference, or a bundle's lineage."""
    from lineguard import tracking
    from lineguard.evaluate.scoring import is_bundle

    if is_bundle(source):
        from lineguard.edge.bundle import load_bundle

        return (load_bundle(source, check_model=False).meta.get("lineage") or {}).get("run_id")
    return tracking.resolve_model_uri(config, source)


def parity_disagreement(config: LineguardConfig, bundle_eval: EvaluationResult, run_id: str,
                        dataset: Any) -> float:
    """Share of test images where a bundle and its float source run decide differently (the bundle's Decision)."""
    from lineguard.evaluate.scoring import load_scorer, predict

    scorer, _ = load_scorer(run_id, config)
    float_pred = predict(scorer, dataset, "test")
    assert bundle_eval.test is not None
    decision = bundle_eval.decision
    float_dec = decision.rejects(decision.scores_from_margins(float_pred.margins), float_pred.recipes)
    return float(np.mean(float_dec != bundle_eval.test_decisions().astype(bool))) if float_dec.size else 0.0


def gate(
    config: LineguardConfig,
    candidate: str,
    data: str,
    against: str = "champion",
    out: str | None = None,
    record: bool = True,
    progress: bool = False,
) -> GateOutcome:
    """Evaluate candidate and champion on the same test set and decide (see module docstring)."""
    from lineguard import tracking
    from lineguard.evaluate.evaluation import evaluate, open_dataset
    from lineguard.evaluate.scoring import is_bundle
    from lineguard.gate import decide

    dataset = open_dataset(data)
    cand_run = _run_of(config, candidate)
    champ_record: ModelVersionRecord | None = None
    champ_source: str | None = None
    if against in (tracking.ALIAS_CHAMPION, tracking.ALIAS_CHALLENGER) or against.startswith("models:/"):
        if against.startswith("models:/"):
            champ_source = against
        else:
            champ_record = tracking.get_model_version_by_alias(config, against)
            champ_source = champ_record.run_id if champ_record else None
    else:
        champ_source = against
    cand_eval = evaluate(candidate, dataset, config, out=out, log=True, report=True, progress=progress)
    parity = None
    if is_bundle(candidate) and cand_eval.run_id:
        try:
            parity = parity_disagreement(config, cand_eval, cand_eval.run_id, dataset)
        except LineguardError as exc:
            cand_eval.notes.append(f"parity vs the float run not measured here ({exc}); bundle.json's is used")
    if is_bundle(candidate) and parity is None:
        from lineguard.edge.bundle import load_bundle

        recorded = (load_bundle(candidate, check_model=False).meta.get("parity") or {}).get("decision_agreement")
        parity = None if recorded is None else 1.0 - float(recorded)
    champ_eval = None
    if champ_source is not None:
        champ_eval = evaluate(champ_source, dataset, config, log=True, report=False, behaviour=False,
                              progress=progress)
    decision = decide(
        cand_eval.summary(name=candidate, parity_disagreement=parity),
        champ_eval.summary(name=against if champ_record is None else f"{against} (v{champ_record.version})")
        if champ_eval else None,
        config.gate,
    )
    cand_version = None
    if record and cand_run:
        cand_version = tracking.register(config, cand_run, evaluation=cand_eval.headline() | {"evaluation_run":
                                                                                             cand_eval.evaluation_run_id})
        tracking.set_alias(config, tracking.ALIAS_CHALLENGER, cand_version)
        tracking.set_version_tags(config, cand_version, {
            "gate.passed": str(decision.passed).lower(),
            "gate.reasons": json.dumps(decision.reasons)[:4900],
            "gate.against": against,
            "gate.champion_version": champ_record.version if champ_record else "none",
            "gate.dataset_version": dataset.version,
            "gate.parity_disagreement": "n/a" if parity is None else f"{parity:.4f}",
            "gate.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gate.evaluation_run": cand_eval.evaluation_run_id or "",
        })
    return GateOutcome(decision, cand_eval, champ_eval, cand_version,
                       champ_record.version if champ_record else None)


def _version_of(config: LineguardConfig, candidate: str) -> ModelVersionRecord:
    """The registered version of a candidate: a registry reference, a run reference, or a bundle's run."""
    from lineguard import tracking
    from lineguard.evaluate.scoring import is_bundle

    if is_bundle(candidate):
        run_id = _run_of(config, candidate)
        mv = tracking.find_version(config, run_id) if run_id else None
        if mv is None:
            raise ReleaseError(f"'{candidate}' is not registered; run: lineguard gate {candidate} --data DATASET")
        return mv
    try:
        return tracking.resolve_version(config, candidate)
    except tracking.TrackingError as exc:
        raise ReleaseError(str(exc)) from None


def promote(config: LineguardConfig, candidate: str, force: bool = False) -> ModelVersionRecord:
    """Move the ``champion`` alias to the candidate's version if its recorded gate passed.

    Refused (ReleaseError) when the gate never ran, failed, or ran against a champion
    that has since changed, unless ``force``; a forced promotion is recorded on the version.
    """
    from lineguard import tracking

    mv = _version_of(config, candidate)
    current = tracking.get_model_version_by_alias(config, tracking.ALIAS_CHAMPION, mv.name)
    if current is not None and current.version == mv.version:
        raise ReleaseError(f"version {mv.version} is already the champion")
    passed = mv.tags.get("gate.passed")
    problem = ""
    if passed is None:
        problem = f"version {mv.version} has no gate result; run: lineguard gate {candidate} --data DATASET"
    elif passed != "true":
        reasons = json.loads(mv.tags.get("gate.reasons", "[]") or "[]")
        problem = f"version {mv.version} failed the gate: " + "; ".join(reasons)[:500]
    else:
        gated_against = mv.tags.get("gate.champion_version", "none")
        now = current.version if current else "none"
        if gated_against != now:
            problem = (f"version {mv.version} was gated against champion {gated_against}, but the champion is now "
                       f"{now}; gate it again")
    if problem and not force:
        raise ReleaseError(problem + " (or pass --force, which is recorded on the version)")
    tracking.set_alias(config, tracking.ALIAS_CHAMPION, mv.version, mv.name)
    tracking.set_version_tags(config, mv.version, {
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "promoted_with_force": str(force).lower(),
        "promoted_over_gate_problem": problem[:4900] if problem else "",
        "previous_champion": current.version if current else "none",
    }, mv.name)
    return tracking.get_version(config, mv.version, mv.name)
