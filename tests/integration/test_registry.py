"""Registry round trip against a real MLflow SQLite store: register, gate, promote, load by alias.

Two tiny models (1 epoch) are trained and tracked for real; the gate policy is loosened
for the first promotion and tightened for the second, so both the pass and the fail
paths go through MLflow's registry, the version tags and the aliases.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_simple_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LENIENT = [
    "gate.min_balanced_accuracy=0", "gate.min_recipe_balanced_accuracy=0", "gate.max_ece=1", "gate.tolerance=1",
]
TINY = [
    "train.model=tinycnn", "train.width=0.25", "train.epochs=1", "train.threads=1", "train.batch_size=16",
    "preprocess.size=[32,32]", "evaluate.bootstrap=50", "evaluate.min_test_per_recipe=1", "evaluate.gallery=4",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from lineguard.config import load_config
    from lineguard.train import train

    root = tmp_path_factory.mktemp("registry")
    dataset = make_simple_dataset(root / "ds", per_class=10, recipes=2, size=32)
    overrides = [f"workdir={root / 'work'}", *TINY]
    cfg = load_config(None, overrides)
    runs = [train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})}), dataset,
                  progress=False).run_id for s in (0, 1)]
    return {"root": root, "data": str(root / "ds"), "overrides": overrides, "runs": runs}


def test_register_gate_promote_and_load_by_alias(store: dict[str, object]) -> None:
    from lineguard import tracking
    from lineguard.config import load_config
    from lineguard.evaluate.release import ReleaseError, gate, promote, register

    overrides = list(store["overrides"])  # type: ignore[call-overload]
    cfg = load_config(None, [*overrides, *LENIENT])
    first, second = store["runs"]  # type: ignore[misc]
    data = str(store["data"])

    version = register(cfg, first)
    assert version == "1"
    assert register(cfg, first) == "1"  # idempotent
    with pytest.raises(ReleaseError, match="no gate result"):
        promote(cfg, first)

    # First model: no champion, absolute limits (loosened here), recorded on the version.
    outcome = gate(cfg, first, data)
    assert outcome.decision.passed, outcome.decision.reasons
    assert outcome.decision.champion is None
    assert outcome.candidate_version == "1"
    mv = tracking.get_version(cfg, "1")
    assert mv.tags["gate.passed"] == "true" and mv.tags["gate.champion_version"] == "none"
    assert "challenger" in mv.aliases
    assert mv.tags["eval.dataset_version"] == outcome.candidate.dataset_version

    champion = promote(cfg, first)
    assert "champion" in champion.aliases and champion.tags["promoted_with_force"] == "false"
    assert tracking.resolve_model_uri(cfg, "champion") == first
    assert tracking.resolve_model_uri(cfg, f"models:/{cfg.tracking.registered_model}@champion") == first
    assert tracking.resolve_model_uri(cfg, f"models:/{cfg.tracking.registered_model}/1") == first
    model, meta = tracking.load_model_from_run(cfg, tracking.resolve_model_uri(cfg, "champion"))
    assert meta["classes"] == ["good", "bad"] and model is not None

    # Second model under a strict policy: compared with the champion on the same images, and refused.
    strict = load_config(None, [*overrides, "gate.max_ece=0"])
    outcome2 = gate(strict, second, data)
    assert not outcome2.decision.passed
    assert outcome2.decision.champion is not None and "v1" in outcome2.decision.champion
    assert any(c.name == "cost" for c in outcome2.decision.checks)  # the paired comparison ran
    assert outcome2.champion is not None
    assert outcome2.champion.dataset_version == outcome2.candidate.dataset_version
    mv2 = tracking.get_version(strict, "2")
    assert mv2.tags["gate.passed"] == "false" and mv2.tags["gate.champion_version"] == "1"
    assert json.loads(mv2.tags["gate.reasons"])
    assert tracking.get_model_version_by_alias(strict, "challenger").version == "2"  # type: ignore[union-attr]
    with pytest.raises(ReleaseError, match="failed the gate"):
        promote(strict, second)
    assert tracking.resolve_model_uri(strict, "champion") == first

    forced = promote(strict, second, force=True)
    assert forced.tags["promoted_with_force"] == "true" and "failed the gate" in forced.tags["promoted_over_gate_problem"]
    assert forced.tags["previous_champion"] == "1"
    assert tracking.resolve_model_uri(strict, "champion") == second


def test_cli_gate_exits_1_on_failure_and_errors_are_one_line(store: dict[str, object]) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    sets: list[str] = []
    for o in [*store["overrides"], "gate.max_ece=0"]:  # type: ignore[misc]
        sets += ["--set", o]
    runner = CliRunner()
    result = runner.invoke(app, ["gate", str(store["runs"][1]), "--data", str(store["data"]),  # type: ignore[index]
                                 "--against", str(store["runs"][0]), *sets])  # type: ignore[index]
    assert result.exit_code == 1, result.output
    assert "GATE FAILED" in result.output and "FAIL ece" in result.output

    from lineguard import tracking
    from lineguard.config import load_config

    cfg = load_config(None, list(store["overrides"]))  # type: ignore[call-overload]
    with pytest.raises(tracking.TrackingError, match="neither a run id nor an alias"):
        tracking.resolve_model_uri(cfg, "no-such-alias")


def test_learning_curve_runs_and_is_tracked(store: dict[str, object]) -> None:
    from lineguard import tracking
    from lineguard.config import load_config
    from lineguard.evaluate.learning_curve import learning_curve

    cfg = load_config(None, list(store["overrides"]))  # type: ignore[call-overload]
    curve = learning_curve(cfg, str(store["data"]), fractions=[0.5, 1.0], seeds=1, epochs=1,
                           out=str(store["root"] / "lc"))  # type: ignore[operator]
    assert [p["fraction"] for p in curve.points] == [0.5, 1.0]
    assert curve.points[0]["train_images"] < curve.points[1]["train_images"]
    assert set(curve.advice) == {"recipe_0", "recipe_1", "overall"}
    assert curve.figure_path and curve.run_id
    record = tracking.load_run(cfg, curve.run_id)
    assert record.tags[tracking.TAG_KIND] == "learning-curve"
    assert "learning_curve/learning_curve.png" in tracking.list_artifacts(cfg, curve.run_id, "learning_curve")
