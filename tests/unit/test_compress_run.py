"""``compress`` end to end on a tiny tracked run: every candidate built, measured, one bundled.

Small on purpose (48 px, TinyCNN at width 0.25, 1-2 epochs, a few timed runs): it proves the
plumbing (train -> export -> INT8 / prune + fine-tune / distil / OpenVINO -> evaluate -> latency
-> select -> bundle -> MLflow), not the figures, which benchmarks/compress.py measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from lineguard.compress import CompressError, compress
from lineguard.config import LineguardConfig, load_config

pytestmark = pytest.mark.slow


def _config(workdir: Path, **compress_overrides: object) -> LineguardConfig:
    sets = [
        f"workdir={workdir}",
        "preprocess.size=[48,48]",
        "train.model=tinycnn",
        "train.width=0.25",
        "train.epochs=2",
        "train.batch_size=16",
        "train.threads=1",
        "evaluate.bootstrap=0",
        "export.golden_size=16",
        "export.reference_images=32",
        "compress.calibration_images=16",
        "compress.warmup=2",
        "compress.repeats=10",
        "compress.rounds=1",
        "compress.threads=[1]",
        "compress.finetune_epochs=1",
        "compress.student_epochs=1",
    ]
    sets += [f"compress.{k}={json.dumps(v)}" for k, v in compress_overrides.items()]
    return load_config(None, sets)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[LineguardConfig, str, str]:
    from lineguard.manifest import load_dataset
    from lineguard.train import train
    from tests.conftest import make_simple_dataset

    root = tmp_path_factory.mktemp("compress-run")
    make_simple_dataset(root / "ds", per_class=16, recipes=2, size=48)
    config = _config(root / "work")
    result = train(config, load_dataset(str(root / "ds")), progress=False)
    assert result.run_id
    return config, result.run_id, str(root / "ds")


def test_compress_builds_measures_and_bundles(
    tracked: tuple[LineguardConfig, str, str], tmp_path: Path
) -> None:
    from lineguard.edge import Predictor, load_bundle
    from lineguard.tracking import list_runs

    config, run_id, data = tracked
    config = config.model_copy(
        update={"compress": config.compress.model_copy(update={"prune_ratios": [0.5]})}
    )
    out = tmp_path / "small"
    result = compress(run_id, data, config, budget_ms=1000.0, max_drop=1.0, out=out, progress=False)

    names = [c.name for c in result.candidates]
    assert names == ["fp32", "int8-qdq", "fp32-pruned50", "fp32-distilled", "fp32-openvino"]
    for c in result.candidates:
        assert c.size_bytes > 0 and c.macs and c.params
        assert 0 < c.latency[1].median_ms <= c.latency[1].p99_ms
        assert 0.0 <= c.balanced_accuracy <= 1.0 and 0.0 <= c.ece <= 1.0
        assert 0.0 <= c.agreement <= 1.0
    by_name = {c.name: c for c in result.candidates}
    assert by_name["fp32"].agreement == 1.0 and by_name["fp32"].max_score_diff < 1e-5
    assert by_name["fp32-pruned50"].params < by_name["fp32"].params  # type: ignore[operator]
    assert by_name["fp32-distilled"].params < by_name["fp32"].params  # type: ignore[operator]
    assert not by_name["fp32-openvino"].selectable  # compared only: the default deployment runs ONNX Runtime
    assert "f32" in by_name["fp32-openvino"].note and result.openvino_precision == "f32"

    chosen = result.selection.chosen
    assert chosen is not None and chosen.name != "fp32-openvino"
    if chosen.name == "int8-qdq":  # the rule: INT8 only where it measured faster
        assert chosen.latency[1].median_ms < by_name["fp32"].latency[1].median_ms
    bundle = load_bundle(result.bundle)  # type: ignore[arg-type]
    assert bundle.meta["model"]["precision"] == chosen.precision
    assert bundle.meta["evaluation"]["compression"]["candidate"] == chosen.name
    golden = list(bundle.load_arrays("golden.npz")["images"])
    assert len(Predictor(bundle).predict(golden)) == len(golden)  # the edge runs the chosen bundle

    table = (result.workdir / "candidates.md").read_text()
    assert all(f"| {n} |" in table for n in names) and "chosen" in table
    assert result.tracking_run_id in {r.run_id for r in list_runs(config)}


def test_nothing_fits_is_a_clear_error_or_a_stated_fallback(
    tracked: tuple[LineguardConfig, str, str], tmp_path: Path
) -> None:
    config, run_id, data = tracked
    cc = config.compress.model_copy(update={"prune_ratios": [], "distill": False, "openvino": False})
    config = config.model_copy(update={"compress": cc})
    out = tmp_path / "none"
    with pytest.raises(CompressError, match=r"no candidate fits a 1e-06 ms budget.*nothing was bundled"):
        compress(run_id, data, config, budget_ms=1e-6, max_drop=0.0, out=out, progress=False)
    assert not out.exists()
    table = (Path(config.workdir) / "compress" / run_id / "candidates.md").read_text()
    assert "over budget" in table and "| int8-qdq |" in table

    # the stated fallback: bundle fp32 anyway, and say so in the selection, the notes and the table
    fallback = config.model_copy(update={"compress": cc.model_copy(update={"on_no_fit": "fp32"})})
    result = compress(run_id, data, fallback, budget_ms=1e-6, max_drop=0.0, out=out, progress=False)
    assert result.selection.fallback and result.selection.chosen is not None
    assert result.selection.chosen.name == "fp32"
    assert result.selection.reasons["fp32"].startswith("FALLBACK")
    assert any("fp32 model was bundled" in n for n in result.notes) and "FALLBACK" in result.table_markdown
    from lineguard.edge import load_bundle

    assert load_bundle(out).meta["model"]["precision"] == "fp32"


def test_bad_options_are_refused_before_any_work(tracked: tuple[LineguardConfig, str, str]) -> None:
    config, run_id, data = tracked
    with pytest.raises(CompressError, match="--max-drop is a fraction"):
        compress(run_id, data, config, max_drop=3.0, progress=False)
    bad = config.model_copy(update={"compress": config.compress.model_copy(update={"budget_threads": 2})})
    with pytest.raises(CompressError, match="budget_threads"):
        compress(run_id, data, bad, progress=False)
