"""torch -> ONNX parity on a golden batch (stated tolerance, identical decisions) and the export step.

Tolerance: max |logit difference| <= 1e-4 (``ExportConfig.atol``) and 100 % identical
decisions on the golden batch, for every architecture the edge is expected to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lineguard import export as ex
from lineguard.edge import load_bundle
from lineguard.edge.predictor import Predictor, scores_from_logits, verify_bundle
from lineguard.preprocess import PreprocessParams, preprocess_batch
from tests.conftest import make_simple_dataset

torch = pytest.importorskip("torch")
ATOL = 1e-4
PARAMS = PreprocessParams(size=(64, 64))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return make_simple_dataset(tmp_path_factory.mktemp("data") / "ds", per_class=10, recipes=2, size=64)


def _spread_head(model: torch.nn.Module, inputs: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """Random init gives logits ~0 (every score 0.5): set the last layer so that the margins on
    ``inputs`` have median 0 and std 2, i.e. both decisions occur, none of them a near tie."""
    from lineguard.models import last_layer_prefix

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    layer = model.get_submodule(last_layer_prefix(model))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.bias.zero_()
        logits = model(torch.from_numpy(inputs)).numpy()
        margins = logits[:, 1] - logits[:, 0]
        scale = 2.0 / max(float(margins.std()), 1e-6)
        layer.weight.mul_(scale)
        layer.bias.copy_(torch.tensor([0.0, -float(np.median(margins)) * scale]))
    return model


@pytest.mark.parametrize("name", ["tinycnn", "mobilenetv3_small"])
def test_onnx_matches_torch_on_the_golden_batch(name: str, dataset, tmp_path: Path) -> None:
    from lineguard.models import create_model

    torch.manual_seed(0)
    golden = ex.golden_batch(dataset, PARAMS, 16)
    model = _spread_head(create_model(name, 2), golden.inputs(PARAMS))
    result = ex.export_onnx(model, PARAMS, tmp_path / "m.onnx", opset=18, golden=golden, atol=ATOL)
    p = result.parity
    assert p.passed and p.n == 16
    assert p.max_abs_logit_diff <= ATOL and p.decision_agreement == 1.0
    assert p.max_abs_embedding_diff <= 1e-3
    scores = scores_from_logits(result.expected["logits"], 1.0, 1)
    assert 0 < (scores >= 0.5).sum() < 16, "the golden batch must exercise both decisions"

    import onnx

    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits", "embedding"]
    assert result.outputs["embedding"] == [None, model.num_features]
    # dynamic batch: 1 and 5 images give the same logits as torch
    for n in (1, 5):
        x = golden.inputs(PARAMS)[:n]
        got = ex.onnx_outputs(tmp_path / "m.onnx", x)
        want = ex.torch_outputs(model, x)
        assert got["logits"].shape == (n, 2)
        assert np.abs(got["logits"] - want["logits"]).max() <= ATOL


def test_compare_outputs_catches_gaps_and_flipped_decisions() -> None:
    expected = {"logits": np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 0.01]]), "embedding": np.zeros((3, 4))}
    same = ex.compare_outputs(expected, expected, 0.5, 1.0, 1, ATOL, "torch-fp32")
    assert same.passed and same.max_abs_logit_diff == 0.0
    moved = {"logits": expected["logits"] + np.array([[0, 0], [0, 0], [0, -0.02]]), "embedding": np.ones((3, 4))}
    report = ex.compare_outputs(expected, moved, 0.5, 1.0, 1, ATOL, "torch-fp32")
    assert not report.passed
    assert report.max_abs_logit_diff == pytest.approx(0.02)
    assert report.decision_agreement == pytest.approx(2 / 3)
    assert report.max_abs_embedding_diff == 1.0
    assert report.decision_flips == 1 and report.near_threshold == 0
    # a flip within the tolerance band (margin within 2 * atol of the threshold) is allowed, and counted
    tie = {"logits": np.array([[0.0, 0.00005]])}
    flipped = {"logits": np.array([[0.0, -0.00004]])}
    tie_report = ex.compare_outputs(tie, flipped, 0.5, 1.0, 1, ATOL, "torch-fp32")
    assert tie_report.passed and tie_report.decision_agreement == 0.0 and tie_report.near_threshold == 1
    assert report.to_dict()["passed"] is False


def test_golden_batch_is_reproducible_and_from_val_and_test(dataset) -> None:
    a = ex.golden_batch(dataset, PARAMS, 8)
    b = ex.golden_batch(dataset, PARAMS, 8)
    assert a.images.shape == (8, 64, 64, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and list(a.recipes) == list(b.recipes)
    assert set(a.labels) <= {0, 1} and a.source.startswith("dataset:")
    held_out = set(dataset.split("val")["recipe"]) | set(dataset.split("test")["recipe"])
    assert set(a.recipes) <= held_out
    synth = ex.golden_batch(None, PARAMS, 4)
    assert synth.source == "synthetic:0" and np.array_equal(synth.images, ex.synthetic_golden(PARAMS, 4).images)
    assert np.allclose(a.inputs(PARAMS), preprocess_batch(list(a.images), PARAMS))


def test_reference_statistics_is_pure_and_complete() -> None:
    rng = np.random.default_rng(0)
    stats = [{"brightness": float(v), "sharpness": float(2 * v)} for v in rng.uniform(0, 255, 50)]
    block, arrays = ex.reference_statistics(stats, rng.normal(size=(50, 8)), rng.uniform(0, 1, 30),
                                            np.array([0, 1] * 15), ("good", "bad"))
    assert block["image_stats"]["n"] == 50
    b = block["image_stats"]["brightness"]
    assert set(b) == {"mean", "std", "quantiles", "hist"} and sum(b["hist"]["counts"]) == 50
    assert list(b["quantiles"]) == [str(q) for q in ex.QUANTILES]
    assert sum(block["score_hist"]["per_class"]["good"]) == 15
    assert block["embedding"]["dim"] == 8 and arrays["embedding_cov"].shape == (8, 8)
    assert arrays["embedding_sample"].shape == (50, 8) and arrays["image_stats"].shape == (50, 2)
    assert all(a.dtype != object for a in arrays.values())


def test_export_command_builds_a_verified_bundle_from_a_tracked_run(dataset, tmp_path: Path) -> None:
    """The whole step: a tracked run -> `lineguard export RUN --data DS --out B --tar` -> a bundle the edge trusts."""
    from lineguard import tracking
    from lineguard.cli import app
    from lineguard.config import load_config
    from lineguard.models import create_model

    overrides = [f"workdir={tmp_path / 'work'}", "preprocess.size=[64,64]", "export.golden_size=12",
                 "evaluate.bootstrap=0", "export.reference_images=16"]
    config = load_config(None, overrides)
    torch.manual_seed(0)
    model = _spread_head(create_model("tinycnn", 2), ex.golden_batch(dataset, PARAMS, 16).inputs(PARAMS))
    meta = {"model": "tinycnn", "width": 1.0, "classes": dataset.classes, "positive_class": "bad",
            "preprocess": PARAMS.to_dict(), "dataset_version": dataset.version}
    with tracking.start_run(config, name="export-test") as run:
        run.log_model(model, meta)
        run.set_tags({tracking.TAG_GIT_COMMIT: "abc123"})
    out = tmp_path / "bundles" / "cones"
    args = ["export", run.run_id, "--data", dataset.root, "--out", str(out), "--tar", "--version", "7"]
    for o in overrides:
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    archive = out.with_name("cones.tar.gz")
    assert archive.is_file() and "bundle written" in res.output
    assert not [p for p in archive.parent.iterdir() if p.name.startswith(".")], "temp files left behind"

    b = load_bundle(archive)
    m = b.meta
    assert m["version"] == "7" and m["model"]["precision"] == "fp32" and m["model"]["opset"] == 18
    assert m["lineage"]["run_id"] == run.run_id and m["lineage"]["dataset_version"] == dataset.version
    assert m["lineage"]["git_commit"] == "abc123"
    assert m["recipes"] == dataset.recipes and m["classes"] == ["good", "bad"]
    assert 0.0 <= m["decision"]["default_threshold"] <= 1.0 and m["decision"]["temperature"] > 0
    assert m["decision"]["fitted_on"] == "val"
    assert m["evaluation"]["n"] == len(dataset.split("test"))
    assert set(m["evaluation"]) >= {"balanced_accuracy", "ece", "per_recipe"}
    assert m["parity"]["passed"] and m["parity"]["n"] == 12 and m["parity"]["atol"] == ATOL
    assert m["reference"]["image_stats"]["n"] == 16  # sampled from the 24 training images
    assert set(m["reference"]["score_hist"]["per_class"]) == {"good", "bad"}
    ref = b.load_arrays("reference.npz")
    assert ref["embedding_mean"].shape == (model.num_features,)
    assert verify_bundle(archive)["passed"]

    # the edge decides like the float model on the test split
    rows = dataset.split("test")
    images = dataset.read_images(rows)
    preds = Predictor(b).predict(images, recipe=list(rows["recipe"]))
    logits = ex.torch_outputs(model, preprocess_batch(images, PARAMS))["logits"]
    scores = scores_from_logits(logits, b.decision.temperature, 1)
    assert np.allclose([p.score for p in preds], scores, atol=1e-5)
    assert [p.decision == "reject" for p in preds] == [s >= b.decision.threshold_for(r) for s, r in zip(scores, rows["recipe"], strict=True)]

    res = CliRunner().invoke(app, ["export", run.run_id, "--data", dataset.root, "--out", str(archive),
                                   "--set", f"workdir={tmp_path / 'work'}"])
    assert res.exit_code != 0 and "already exists" in str(res.exception)
    assert json.loads(json.dumps(m)) == m


def test_compare_outputs_with_another_embedding_width_compares_logits_only() -> None:
    """A pruned or distilled candidate has a narrower embedding: parity is judged on logits and decisions."""
    expected = {"logits": np.array([[0.0, 1.0], [0.0, -1.0]]), "embedding": np.zeros((2, 8))}
    pruned = {"logits": expected["logits"].copy(), "embedding": np.zeros((2, 4))}
    report = ex.compare_outputs(expected, pruned, 0.5, 1.0, 1, ATOL, "base-bundle")
    assert report.passed and report.max_abs_embedding_diff is None
    assert report.to_dict()["max_abs_embedding_diff"] is None
