"""A bundle is evaluated and gated with the Decision it ships, not with one re-fitted on val.

The toy bundle's model scores a uniform grey image by its brightness (bright = defect), so
on a dataset of dark good and bright bad images thresholds fitted on val separate the
classes perfectly. The bundle ships a default threshold of 0.99 instead, which lets most
defects pass: evaluation and the gate must report *that* -- the model on the line -- and
show the re-fitted thresholds only beside it, when asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit._edge_bundles import make_toy_bundle

SHIPPED = {"default_threshold": 0.99, "per_recipe": {"vanilla": 0.995}, "temperature": 1.0}


def _grey_dataset(out: Path) -> str:
    """Dark good and bright bad 32x32 images, two recipes, train/val/test (through the real writer)."""
    from lineguard.manifest import encode_png, image_id_of, image_relpath, write_dataset

    rng = np.random.default_rng(0)
    rows, images = [], {}
    for recipe in ("vanilla", "chocolate"):
        for label, (lo, hi) in (("good", (30, 110)), ("bad", (150, 230))):
            for i, level in enumerate(np.linspace(lo, hi, 18)):
                img = np.clip(level + rng.integers(-2, 3, (32, 32, 3)), 0, 255).astype(np.uint8)
                png = encode_png(img)
                image_id = image_id_of(png)
                images[image_id] = png
                split = ("train", "val", "test")[i % 3]
                rows.append({
                    "image_id": image_id, "path": image_relpath(image_id), "label": label, "recipe": recipe,
                    "defect_type": "" if label == "good" else "missing_topping", "split": split,
                    "group_id": image_id[:12], "source_path": f"{recipe}/{label}/{i}.png", "label_source": "folder",
                    "width": 32, "height": 32, "ingested_at": "2026-01-01T00:00:00Z",
                })
    write_dataset(str(out), pd.DataFrame(rows), images)
    return str(out)


@pytest.fixture
def case(tmp_path: Path) -> dict[str, object]:
    from lineguard.config import load_config

    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", "evaluate.bootstrap=0", "evaluate.min_threshold_samples=3",
                             "evaluate.min_test_per_recipe=1", "gate.max_ece=1"])
    return {"bundle": str(make_toy_bundle(tmp_path / "bundle", decision=SHIPPED)),
            "data": _grey_dataset(tmp_path / "ds"), "config": cfg}


def test_evaluating_a_bundle_uses_its_shipped_decision(case: dict[str, object]) -> None:
    from lineguard.edge import Decision, load_bundle
    from lineguard.evaluate import evaluate

    bundle, data, cfg = case["bundle"], case["data"], case["config"]
    result = evaluate(bundle, data, cfg, log=False, report=False, behaviour=False, refit=True)  # type: ignore[arg-type]
    shipped = load_bundle(bundle).decision  # type: ignore[arg-type]
    assert result.decision == shipped and result.decision_source == "bundle"
    # The shipped 0.99 lets defects through: the headline numbers say so.
    overall = result.metrics["overall"]
    assert overall["escape_rate"] > 0.5 and overall["balanced_accuracy"] < 0.8
    assert result.headline()["decision_source"] == "bundle"
    # Re-fitted on val the thresholds would separate the classes -- reported beside, not instead.
    assert result.refit is not None
    fitted = Decision.from_dict(result.refit["decision"])
    assert fitted.fitted_on == "val" and fitted.default_threshold < 0.9
    assert result.refit["overall"]["balanced_accuracy"] == 1.0
    assert any("default threshold 0.9900" in d for d in result.refit["differences"])
    assert any("every metric here uses the shipped ones" in n for n in result.notes)
    # Without refit nothing is fitted at all.
    plain = evaluate(bundle, data, cfg, log=False, report=False, behaviour=False)  # type: ignore[arg-type]
    assert plain.refit is None and plain.metrics["overall"] == overall


def test_gating_a_bundle_judges_its_shipped_decision(case: dict[str, object]) -> None:
    """Through the real release flow (MLflow on SQLite): the bundle fails on the thresholds it ships."""
    from lineguard.edge import load_bundle
    from lineguard.evaluate.release import gate
    from lineguard.gate import decide

    bundle, data, cfg = case["bundle"], case["data"], case["config"]
    outcome = gate(cfg, bundle, data, record=False)  # type: ignore[arg-type]
    assert outcome.champion is None and not outcome.decision.passed
    assert outcome.candidate.decision == load_bundle(bundle).decision  # type: ignore[arg-type]
    assert any("balanced accuracy" in r and "absolute limit" in r for r in outcome.decision.reasons)
    # The same model with val-fitted thresholds would have passed: the gate did not use them.
    refitted = outcome.candidate
    from lineguard.evaluate import evaluate_predictions

    assert refitted.val is not None and refitted.test is not None
    fitted = evaluate_predictions(refitted.val, refitted.test, cfg.evaluate)  # type: ignore[attr-defined]
    assert decide(fitted.summary(), None, cfg.gate).passed  # type: ignore[attr-defined]
