"""The edge predictor: calibrated scores, per-recipe thresholds, batches, bad files, and the CLI over it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lineguard import LineguardError
from lineguard.cli import app
from lineguard.edge import ImageFileError, Prediction, Predictor, load_bundle
from lineguard.edge.latency import latency_summary
from lineguard.edge.predictor import scores_from_logits
from tests.unit._edge_bundles import expected_score, grey, make_toy_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # default 0.5, vanilla 0.3, temperature 2
    return make_toy_bundle(tmp_path_factory.mktemp("bundles") / "toy")


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor(bundle_dir, threads=1)


def test_scores_from_logits_applies_temperature() -> None:
    logits = np.array([[0.0, 2.0], [1.0, -1.0]])
    assert scores_from_logits(logits, 1.0, 1) == pytest.approx(1 / (1 + np.exp([-2.0, 2.0])))
    assert scores_from_logits(logits, 2.0, 1) == pytest.approx(1 / (1 + np.exp([-1.0, 1.0])))
    assert scores_from_logits(logits, 1.0, 0) == pytest.approx(1 - 1 / (1 + np.exp([-2.0, 2.0])))


def test_score_is_softmax_with_the_bundle_temperature(predictor: Predictor) -> None:
    for level in (40, 128, 150, 220):
        pred = predictor.predict(grey(level))
        assert isinstance(pred, Prediction)
        assert pred.score == pytest.approx(expected_score(level, temperature=2.0), abs=1e-5)
        assert pred.latency_ms > 0


def test_decisions_use_the_recipe_threshold_else_the_default(predictor: Predictor) -> None:
    level = 105  # score ~0.40: between vanilla's 0.3 and the default 0.5
    score = expected_score(level, 2.0)
    assert 0.3 < score < 0.5
    vanilla = predictor.predict(grey(level), recipe="vanilla")
    chocolate = predictor.predict(grey(level), recipe="chocolate")
    unknown = predictor.predict(grey(level), recipe="no-such-recipe")
    assert isinstance(vanilla, Prediction) and isinstance(chocolate, Prediction) and isinstance(unknown, Prediction)
    assert (vanilla.decision, vanilla.label, vanilla.threshold) == ("reject", "bad", 0.3)
    assert (chocolate.decision, chocolate.label, chocolate.threshold) == ("accept", "good", 0.5)
    assert unknown.decision == "accept" and unknown.threshold == 0.5
    assert vanilla.rejected and not chocolate.rejected


def test_threshold_is_inclusive(tmp_path: Path) -> None:
    level = 128  # x = (128/255 - .5)/.5 ~ 0.004: score just above 0.5
    score = expected_score(level, 1.0)
    b = make_toy_bundle(tmp_path / "b", decision={"default_threshold": round(score, 6) - 1e-6, "temperature": 1.0})
    pred = Predictor(b).predict(grey(level))
    assert isinstance(pred, Prediction) and pred.decision == "reject"


def test_batch_matches_single_and_takes_mixed_sizes(predictor: Predictor) -> None:
    images = [grey(30), grey(200, (48, 20)), grey(105)]
    batch = predictor.predict(images, recipe=["vanilla", None, "vanilla"])
    assert isinstance(batch, list) and len(batch) == 3
    single = predictor.predict(images[2], recipe="vanilla")
    assert isinstance(single, Prediction)
    assert batch[2].score == pytest.approx(single.score, abs=1e-6) and batch[2].decision == single.decision
    stacked = predictor.predict(np.stack([grey(30), grey(105)]), recipe="vanilla")
    assert [p.decision for p in stacked] == ["accept", "reject"]
    assert predictor.predict([]) == []
    with pytest.raises(LineguardError, match="one recipe or one per image"):
        predictor.predict(images, recipe=["vanilla"])


def test_predict_tensor_and_outputs(predictor: Predictor) -> None:
    from lineguard.preprocess import preprocess_batch

    x = preprocess_batch([grey(30), grey(220)], predictor.params)
    out = predictor.outputs(x)
    assert out["logits"].shape == (2, 2) and out["embedding"].shape == (2, 3)
    preds = predictor.predict_tensor(x)
    assert [p.decision for p in preds] == ["accept", "reject"]


def test_predict_file_and_bad_files(predictor: Predictor, tmp_path: Path) -> None:
    good = tmp_path / "dark.png"
    Image.fromarray(grey(20, (40, 40))).save(good)
    pred = predictor.predict_file(good)
    assert pred.decision == "accept"
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    with pytest.raises(ImageFileError, match=r"junk\.png") as err:
        predictor.predict_file(tmp_path / "junk.png")
    assert err.value.reason == "not_an_image"
    with pytest.raises(ImageFileError, match=r"missing\.png"):
        predictor.predict_file(tmp_path / "missing.png")


def test_predictor_rejects_bad_options(bundle_dir: Path) -> None:
    with pytest.raises(LineguardError, match="unknown backend"):
        Predictor(bundle_dir, backend="tensorrt")
    with pytest.raises(LineguardError, match="threads"):
        Predictor(bundle_dir, threads=0)


def test_openvino_backend_matches_ort(bundle_dir: Path, predictor: Predictor) -> None:
    pytest.importorskip("openvino")
    ov = Predictor(bundle_dir, backend="openvino", precision_hint="f32")
    for level in (40, 105, 220):
        a, b = predictor.predict(grey(level), "vanilla"), ov.predict(grey(level), "vanilla")
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert b.score == pytest.approx(a.score, abs=1e-5) and a.decision == b.decision


def test_latency_summary() -> None:
    s = latency_summary([1.0, 2.0, 3.0, 4.0, 100.0], batch=2)
    assert s["median_ms"] == 3.0 and s["mean_ms"] == 22.0 and s["min_ms"] == 1.0
    assert s["p99_ms"] > s["p90_ms"] > s["median_ms"]
    assert s["throughput_per_s"] == pytest.approx(2 * 1000 / 22.0)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_predict_reports_each_file_and_fails_if_any_failed(bundle_dir: Path, tmp_path: Path) -> None:
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    Image.fromarray(grey(230, (40, 40))).save(bright)
    Image.fromarray(grey(20, (40, 40))).save(dark)
    res = runner.invoke(app, ["predict", str(bundle_dir), str(bright), str(dark), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert [(r["file"], r["decision"]) for r in rows] == [(str(bright), "reject"), (str(dark), "accept")]
    (tmp_path / "broken.png").write_bytes(Image.open(bright).tobytes()[:10])
    res = runner.invoke(app, ["predict", str(bundle_dir), str(tmp_path / "broken.png"), str(dark),
                              "--recipe", "vanilla"])
    assert res.exit_code == 1
    assert "broken.png" in res.output and "1 of 2 file(s) could not be decided" in res.output
    assert "ACCEPT" in res.output  # the good file was still decided


def test_cli_bundle_verify_and_info(bundle_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["bundle", "verify", str(bundle_dir)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "decisions agree 100%" in res.output
    res = runner.invoke(app, ["bundle", "info", str(bundle_dir)])
    assert res.exit_code == 0, res.output
    for text in ("toy", "good, bad", "vanilla: 0.3000", "letterbox", "run_id toy", "balanced_accuracy 1.0000"):
        assert text in res.output
    res = runner.invoke(app, ["bundle", "info", str(bundle_dir), "--json"])
    assert json.loads(res.stdout)["schema"] == 2

    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    res = runner.invoke(app, ["bundle", "verify", str(tampered)])
    assert res.exit_code == 1 and "sha256" in res.output


def test_cli_bench_runs_in_a_subprocess(bundle_dir: Path) -> None:
    res = runner.invoke(app, ["bench", str(bundle_dir), "--repeats", "20", "--warmup", "2", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["threads"] == 1 and result["batch"] == 1 and result["repeats"] == 20
    for key in ("model", "end_to_end", "preprocess"):
        assert set(result[key]) >= {"median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s"}
    assert result["frame_size"] == [64, 64]
    res = runner.invoke(app, ["bench", str(bundle_dir), "--repeats", "10", "--warmup", "1", "--batch", "4"])
    assert res.exit_code == 0, res.output
    assert "model only" in res.output and "images/s" in res.output


def test_bench_reports_a_bad_bundle(tmp_path: Path) -> None:
    from lineguard.edge.bench import bench_in_subprocess

    with pytest.raises(LineguardError, match="does not exist"):
        bench_in_subprocess(tmp_path / "nope", repeats=1, warmup=0)


def test_loaded_bundle_is_reused_by_the_predictor(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert Predictor(b).bundle is b


def test_every_prediction_names_the_bundle_that_made_it(predictor: Predictor) -> None:
    """The prediction record carries the bundle's name and version (DESIGN: Prediction record)."""
    single = predictor.predict(grey(200), recipe="vanilla")
    batch = predictor.predict([grey(40), grey(200)])
    assert isinstance(single, Prediction)
    for pred in [single, *batch]:
        assert (pred.bundle_name, pred.bundle_version) == ("toy", "1")
        assert {"bundle_name", "bundle_version", "score", "decision", "latency_ms"} <= set(pred.to_dict())


def test_open_runner_refuses_bad_options_and_files(tmp_path: Path) -> None:
    from lineguard import LineguardError
    from lineguard.edge import ModelLoadError, open_runner

    with pytest.raises(LineguardError, match="unknown backend 'tflite'"):
        open_runner(tmp_path / "m.onnx", "tflite")
    with pytest.raises(LineguardError, match="threads must be an integer >= 0"):
        open_runner(tmp_path / "m.onnx", "ort", -1)
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_runner(tmp_path / "m.onnx")
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load") as err:
        open_runner(tmp_path / "m.onnx")
    assert "\n" not in str(err.value)
