"""`lineguard pipeline run` on a tiny toy config: the whole lifecycle, the step cache, --force,
and a failing step that stops the pipeline and is resumed by the next run.

Tiny everything (tests/e2e/_tiny.py) so a run takes seconds of compute.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lineguard.config import LineguardConfig, load_config
from tests.e2e._tiny import TINY


def _config(work: Path, *extra: str) -> LineguardConfig:
    return load_config(None, [*TINY, f"workdir={work}", *extra])


def _runs(cfg: LineguardConfig) -> list[Any]:
    from lineguard import tracking

    return tracking.list_runs(cfg, max_results=500)


@pytest.mark.slow
def test_the_pipeline_runs_end_to_end_then_reuses_every_step_then_reruns_what_force_names(tmp_path: Path) -> None:
    from lineguard import pipeline, tracking
    from lineguard.edge import load_bundle

    cfg = _config(tmp_path / "work")
    lines: list[str] = []
    first = pipeline.run(cfg, say=lines.append)
    plan = ["synth", "ingest", "validate", "train", "evaluate", "export", "compress", "gate", "promote", "release",
            "edge"]
    assert first.ran == plan and first.cached == []

    # The first model faces no champion: the gate's absolute limits decide, and it becomes the champion.
    verdict = first.verdict
    assert verdict["passed"] is True and verdict["champion"] is None
    champion = tracking.get_model_version_by_alias(cfg, tracking.ALIAS_CHAMPION)
    assert champion is not None and champion.version == verdict["version"] == first.outputs["promote"]

    # The release: a bundle the edge's own loader accepts, traced to the run and the dataset.
    release = Path(first.outputs["release"])
    bundle = load_bundle(release / "bundle.tar.gz")
    record = json.loads((release / "release.json").read_text())
    assert bundle.meta["lineage"]["run_id"] == first.outputs["train"] == record["run_id"]
    assert bundle.meta["lineage"]["dataset_version"] == first.outputs["validate"] == record["dataset_version"]
    assert (release / "report.md").read_text().strip()
    assert len(first.edge["predictions"]) == 8 and first.edge["bench"]["model"]["median_ms"] > 0

    # One MLflow parent run, a child run per step; the training run nests under the train step's run.
    runs = _runs(cfg)
    children = {r.tags.get(tracking.TAG_PIPELINE_STEP): r for r in runs
                if r.tags.get("mlflow.parentRunId") == first.parent_run_id}
    assert set(children) == set(plan)
    assert all(c.status == "FINISHED" for c in children.values())
    trained = tracking.load_run(cfg, first.outputs["train"])
    assert trained.tags["mlflow.parentRunId"] == children["train"].run_id

    # Nothing changed: every step is reused, nothing is trained or registered again.
    second = pipeline.run(cfg, say=lines.append)
    assert second.ran == [] and second.cached == plan
    assert second.outputs == first.outputs
    assert len([r for r in _runs(cfg) if r.tags.get(tracking.TAG_KIND) == "train"]) == 1
    cached_children = [r for r in _runs(cfg) if r.tags.get("mlflow.parentRunId") == second.parent_run_id]
    assert {r.tags.get(tracking.TAG_PIPELINE_CACHED) for r in cached_children} == {"true"}

    # --force train reruns training and what uses its output; the data steps stay cached.
    third = pipeline.run(cfg, force=["train"], say=lines.append)
    assert third.cached == ["synth", "ingest", "validate"]
    assert third.ran == plan[3:]
    assert third.outputs["train"] != first.outputs["train"]
    assert third.verdict["champion"] == first.outputs["promote"]  # gated against the first model
    assert any("forced (--force train)" in line for line in lines)

    # A changed config section reruns the steps that read it (and the ones its output feeds).
    fourth = pipeline.run(_config(tmp_path / "work", "evaluate.bootstrap=21"), say=lines.append)
    assert "evaluate" in fourth.ran and "train" in fourth.cached and "export" in fourth.ran
    assert any("changed: config.evaluate" in line for line in lines)


@pytest.mark.slow
def test_a_failing_step_stops_the_pipeline_and_the_next_run_resumes_there(tmp_path: Path) -> None:
    from lineguard import pipeline

    work = tmp_path / "work"
    # Nothing fits a one-nanosecond budget, and the config says fail rather than ship fp32.
    failing = ["compress.budget_ms=0.000001", "compress.on_no_fit=error"]
    sets = [a for kv in [*TINY, f"workdir={work}", *failing] for a in ("--set", kv)]
    result = subprocess.run([sys.executable, "-m", "lineguard.cli", "pipeline", "run", *sets],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "step 'compress' failed" in result.stderr and "no candidate fits" in result.stderr
    assert "Traceback" not in result.stderr
    state = json.loads((work / "pipeline" / "state.json").read_text())
    assert state["failed"]["step"] == "compress" and "compress" not in state["steps"]
    assert not (work / "release").exists()
    with contextlib.closing(sqlite3.connect(work / "mlflow.db")) as db:  # the parent run ended FAILED at 'compress'
        failed = db.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                            "WHERE t.key = 'pipeline.failed_step' AND t.value = 'compress'").fetchall()
    assert failed == [("FAILED",)]

    lines: list[str] = []
    fixed = pipeline.run(_config(work, "compress.budget_ms=0.000001", "compress.on_no_fit=fp32"), say=lines.append)
    assert lines[0].startswith("resuming: the last run stopped at step 'compress'")
    assert fixed.cached == ["synth", "ingest", "validate", "train", "evaluate", "export"]
    assert fixed.ran == ["compress", "gate", "promote", "release", "edge"]
    assert json.loads((work / "pipeline" / "state.json").read_text())["failed"] is None
