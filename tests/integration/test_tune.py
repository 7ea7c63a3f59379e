"""Hyperparameter search: the search space, pruning, nested MLflow runs, and several worker
processes sharing one Optuna study in a real SQLite storage.

Tiny everything (32 px, width 0.25, 2 epochs) so the real trainings take seconds.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest

from lineguard.config import load_config
from lineguard.tune import (
    ATTR_PARENT_RUN,
    TAG_STUDY,
    TrialRecord,
    TuneError,
    apply_params,
    best_trial,
    redact,
    space_fingerprint,
    suggest,
    tune,
)

TINY = ["tune.epochs=2", "tune.size=[32]", "tune.width=[0.25]", "tune.models=[tinycnn]",
        "train.batch_size=16", "train.threads=1"]


def _config(tmp_path: Path, *extra: str) -> Any:
    return load_config(None, [f"workdir={tmp_path / 'work'}", *TINY, *extra])


# --- the pure parts ---------------------------------------------------------------------------------


def test_suggest_covers_the_space_and_fixes_single_choices(tmp_path: Path) -> None:
    cfg = load_config(None, ["tune.models=[tinycnn,resnet18]", "tune.size=[64]", "tune.lr=[0.001,0.001]"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_models = set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, cfg.tune)
        seen_models.add(params["model"])
        assert params["size"] == 64 and params["lr"] == 0.001  # single choices are not searched
        assert cfg.tune.weight_decay[0] <= params["weight_decay"] <= cfg.tune.weight_decay[1]
        assert params["width"] in cfg.tune.width
        assert "size" not in trial.params and "lr" not in trial.params
        study.tell(trial, 0.5)
    assert seen_models == {"tinycnn", "resnet18"}


def test_apply_params_makes_a_valid_full_config(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=30"])
    params = {"model": "tinycnn", "width": 0.5, "size": 96, "lr": 0.002, "weight_decay": 0.01,
              "augment_strength": 0.7}
    out = apply_params(cfg, params)
    assert (out.train.model, out.train.width, out.train.lr, out.train.weight_decay) == ("tinycnn", 0.5, 0.002, 0.01)
    assert out.preprocess.size == (96, 96) and out.augment.strength == 0.7
    assert out.train.epochs == 30  # the best config trains for the full length
    assert apply_params(cfg, params, epochs=3).train.epochs == 3
    # it round-trips through YAML as a lineguard.yaml
    path = tmp_path / "best.yaml"
    path.write_text(out.to_yaml())
    assert load_config(path) == out


def test_fingerprint_changes_with_the_space() -> None:
    a = load_config(None, []).tune
    assert space_fingerprint(a) == space_fingerprint(load_config(None, ["tune.trials=99"]).tune)
    assert space_fingerprint(a) != space_fingerprint(load_config(None, ["tune.size=[64]"]).tune)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql+psycopg2://lg:s3cret@db:5432/optuna") == "postgresql+psycopg2://lg:***@db:5432/optuna"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_best_trial_breaks_ties_by_val_loss() -> None:
    def rec(n: int, state: str, value: float | None, loss: float | None) -> TrialRecord:
        return TrialRecord(n, state, value, {}, f"run{n}", loss, 2, 1.0)

    trials = [rec(0, "COMPLETE", 0.99, 0.3), rec(1, "COMPLETE", 1.0, 0.2), rec(2, "COMPLETE", 1.0, 0.1),
              rec(3, "PRUNED", None, None), rec(4, "FAIL", None, None)]
    best = best_trial(trials)
    assert best is not None and best.number == 2
    assert best_trial([rec(0, "PRUNED", None, None)]) is None


def test_unknown_model_in_space_is_refused(simple_dataset, tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="unknown model"):
        tune(_config(tmp_path, "tune.models=[tinycnn,vgg16]"), simple_dataset, trials=1)


# --- pruning, with a scripted stand-in for the training loop ------------------------------------------


@dataclass
class _FakeResult:
    val_metrics: dict[str, float]
    run_id: str
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def test_median_pruner_stops_poor_trials(simple_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials whose per-epoch val balanced accuracy falls below the median are pruned mid-run."""
    import lineguard.train

    curves = iter([[0.9, 0.95, 0.97, 0.98], [0.9, 0.96, 0.98, 0.99], [0.5, 0.5, 0.5, 0.5], [0.95, 0.97, 0.99, 1.0]])
    epochs_run: list[int] = []

    def fake_train(config: Any, dataset: Any, *, on_epoch: Any = None, **kwargs: Any) -> _FakeResult:
        curve, history = next(curves), []
        for epoch, value in enumerate(curve, start=1):
            history.append({"epoch": float(epoch), "val_balanced_accuracy": value})
            epochs_run.append(epoch)
            on_epoch(epoch, history[-1])  # raises optuna.TrialPruned when below the median
        return _FakeResult({"balanced_accuracy": max(curve), "loss": 0.1}, f"run{len(epochs_run)}", 4, history)

    monkeypatch.setattr(lineguard.train, "train", fake_train)
    cfg = _config(tmp_path, "tune.epochs=4", "tune.prune_startup_trials=2", "tune.prune_warmup_epochs=2")
    result = tune(cfg, simple_dataset, trials=4)
    states = [t.state for t in result.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert result.trials[2].epochs == 2  # epoch 1 is warm-up; pruned at epoch 2
    assert result.best.number == 3 and result.best.value == 1.0
    assert len(epochs_run) == 4 + 4 + 2 + 4


# --- real trainings, real stores ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_logs_nested_runs_and_writes_a_usable_best_config(simple_dataset, tmp_path: Path) -> None:
    from lineguard import tracking

    cfg = _config(tmp_path)
    out = tmp_path / "best.yaml"
    result = tune(cfg, simple_dataset, trials=2, out=str(out))
    assert len(result.trials) == 2 and result.new_trials == 2
    assert all(t.state == "COMPLETE" and t.epochs >= 1 for t in result.trials)

    best_cfg = load_config(out)  # a complete lineguard.yaml, usable with `lineguard train --config`
    assert best_cfg.train.model == "tinycnn" and best_cfg.preprocess.size == (32, 32)
    assert best_cfg.train.lr == pytest.approx(result.best.params["lr"])
    assert best_cfg.train.epochs == cfg.train.epochs

    parent = tracking.load_run(cfg, result.parent_run_id)
    assert parent.tags[tracking.TAG_KIND] == "tune"
    assert parent.metrics["trials"] == 2
    assert "tune/best.yaml" in tracking.list_artifacts(cfg, result.parent_run_id, "tune")
    children = [r for r in tracking.list_runs(cfg) if r.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert sorted(r.run_id for r in children) == sorted(t.run_id for t in result.trials)
    assert all(r.tags[TAG_STUDY] == "lineguard" for r in children)

    # the study refuses trials from another search space or another dataset version
    with pytest.raises(TuneError, match="search space"):
        tune(_config(tmp_path, "tune.size=[48]"), simple_dataset, trials=1)


@pytest.mark.slow
def test_worker_processes_share_one_sqlite_study(simple_dataset, tmp_path: Path) -> None:
    """`lineguard tune --workers 2 --trials 4`: two worker processes, 2 trials each, one SQLite study."""
    from lineguard import tracking

    storage = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    sets = [a for s in [f"workdir={tmp_path / 'work'}", *TINY] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "lineguard.cli", "tune", "--data", str(simple_dataset.root), "--storage", storage,
           "--study", "shared", "--trials", "4", "--workers", "2", "--out", str(tmp_path / "b.yaml"), *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.user_attrs["worker"] for t in study.trials) == [0, 0, 1, 1]  # 2 trials from each worker
    assert "best config written to" in proc.stdout
    parent = study.user_attrs[ATTR_PARENT_RUN]
    cfg = _config(tmp_path)
    children = [r for r in tracking.list_runs(cfg) if r.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 4
    assert sum(r.tags.get(tracking.TAG_KIND) == "tune" for r in tracking.list_runs(cfg)) == 1  # one parent run
    assert load_config(tmp_path / "b.yaml").train.model == "tinycnn"
