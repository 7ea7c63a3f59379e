"""Tracked training against a real MLflow SQLite store: run contents, model rebuild, reproduce,
transfer learning with rehearsal, distillation, the collapse warning and the runs CLI.

One tiny tracked run (module fixture) is shared; everything is 32 px, width 0.5, few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lineguard import tracking
from lineguard.config import load_config
from lineguard.train import COLLAPSE_WARNING, TrainResult, reproduce, train
from tests.conftest import make_simple_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["train.model=tinycnn", "train.width=0.5", "preprocess.size=[32,32]", "train.batch_size=16",
        "train.threads=1", "train.epochs=3", "train.lr=0.01"]


def _cfg(work: Path, *extra: str) -> Any:
    return load_config(None, [f"workdir={work}", *TINY, *extra])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tracked")
    ds = make_simple_dataset(root / "ds", per_class=14, recipes=2, size=40)
    cfg = _cfg(root / "work")
    result = train(cfg, ds, run_name="first", progress=False)
    return {"root": root, "ds": ds, "cfg": cfg, "result": result}


def test_run_records_everything_needed(store: dict[str, Any]) -> None:
    cfg, result, ds = store["cfg"], store["result"], store["ds"]
    assert cfg.tracking_uri().startswith("sqlite:///") and Path(cfg.workdir, "mlflow.db").is_file()
    rec = tracking.load_run(cfg, result.run_id)
    assert rec.status == "FINISHED" and rec.name == "first"
    # params: model, augmentations, hyperparameters, seed, preprocessing
    for key, value in {"train.model": "tinycnn", "train.seed": "0", "train.lr": "0.01", "augment.hflip": "0.5",
                       "preprocess.size": "[32, 32]", "dataset_version": ds.version}.items():
        assert rec.params[key] == value, key
    # lineage tags
    assert rec.tags["dataset_version"] == ds.version and rec.tags["dataset_url"] == str(ds.root)
    assert rec.tags["init_from"] == "" and rec.tags["teacher"] == "" and rec.tags["git_commit"]
    # metrics per epoch + final
    cl = tracking.client(cfg)
    assert [m.step for m in cl.get_metric_history(result.run_id, "val_balanced_accuracy")] == [1, 2, 3]
    assert rec.metrics["final_val_balanced_accuracy"] == pytest.approx(result.val_metrics["balanced_accuracy"])
    assert "test_balanced_accuracy" in rec.metrics
    # artifacts
    arts = set(tracking.list_artifacts(cfg, result.run_id))
    assert {"config.yaml", "model/model.safetensors", "model/model.json", "dataset/manifest.parquet",
            "dataset/dataset.json", "plots/confusion_matrix.png", "plots/learning_curves.png", "history.json",
            "environment/environment.json", "environment/requirements.txt"} <= arts
    assert not any(a.endswith((".pkl", ".pt", ".pth")) for a in arts)
    assert tracking.read_artifact(cfg, result.run_id, "plots/confusion_matrix.png")[:4] == b"\x89PNG"
    env = json.loads(tracking.read_artifact(cfg, result.run_id, "environment/environment.json"))
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["python"]
    assert b"torch==" in tracking.read_artifact(cfg, result.run_id, "environment/requirements.txt")
    # the dataset as an MLflow dataset input, digest = dataset version
    run_inputs = cl.get_run(result.run_id).inputs
    assert run_inputs is not None
    inputs = run_inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == ds.version
    assert inputs[0].tags[0].value == "training"
    # artifacts live under <workdir>/mlartifacts
    assert Path(cfg.workdir, "mlartifacts").is_dir()
    # the config as resolved: the auto recipe's derived values applied, explicit keys kept, and the recipe itself
    recorded = tracking.load_run_config(cfg, result.run_id)
    assert recorded == result.config and recorded.train.model == "tinycnn" and recorded.preprocess.size == (32, 32)
    recipe = json.loads(tracking.read_artifact(cfg, result.run_id, "recipe.json"))
    assert {"profile", "choices"} <= set(recipe)


def test_model_rebuilds_from_the_run_alone(store: dict[str, Any]) -> None:
    cfg, result = store["cfg"], store["result"]
    model, meta = tracking.load_model_from_run(cfg, result.run_id)
    assert meta["model"] == "tinycnn" and meta["classes"] == ["good", "bad"] and meta["preprocess"]["size"] == [32, 32]
    x = torch.randn(3, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-6)


def test_reproduce_gives_the_same_metrics(store: dict[str, Any]) -> None:
    out = reproduce(store["cfg"], store["result"].run_id, progress=False)
    assert out.new_run_id and out.new_run_id != store["result"].run_id
    assert "final_val_balanced_accuracy" in out.differences and "test_balanced_accuracy" in out.differences
    assert out.max_abs_difference == 0.0
    assert tracking.load_run(store["cfg"], out.new_run_id).tags["reproduces"] == store["result"].run_id


def test_reproduce_refuses_a_replaced_dataset(store: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from lineguard.train import TrainError

    root, cfg = store["root"], store["cfg"]
    ds_path = tmp_path / "moving"
    shutil.copytree(store["ds"].root, ds_path)
    from lineguard.manifest import load_dataset

    result = train(_cfg(Path(cfg.workdir), "train.epochs=1"), load_dataset(str(ds_path)), progress=False)
    shutil.rmtree(ds_path)
    make_simple_dataset(ds_path, per_class=10, recipes=1, size=40, seed=5)
    with pytest.raises(TrainError, match="now holds version"):
        reproduce(cfg, str(result.run_id), progress=False)
    assert root.exists()


def test_fine_tune_a_new_recipe_from_a_run_with_rehearsal(store: dict[str, Any], tmp_path: Path) -> None:
    cfg, first = store["cfg"], store["result"]
    new = make_simple_dataset(tmp_path / "new", per_class=8, recipes=3, size=40, seed=9)
    ft_cfg = _cfg(Path(cfg.workdir), f"train.init_from={first.run_id}", "train.freeze_epochs=1", "train.epochs=2",
                  "train.rehearsal=5", "train.model=mobilenetv3_small", "preprocess.size=[48,48]")
    result = train(ft_cfg, new, progress=False)
    # the init run's architecture and preprocessing win over the config (its weights must fit)
    assert result.config.train.model == "tinycnn" and result.preprocess.size == (32, 32)
    rec = tracking.load_run(cfg, str(result.run_id))
    assert rec.tags["init_from"] == first.run_id and rec.tags["init_run_id"] == first.run_id
    assert rec.tags["rehearsal_dataset"] == store["ds"].version
    n_new = len(new.split("train"))
    assert int(rec.params["train_images"]) == n_new + 10  # 5 old images per class mixed in


def test_distillation_from_a_teacher_run(store: dict[str, Any]) -> None:
    cfg, teacher = store["cfg"], store["result"]
    student_cfg = _cfg(Path(cfg.workdir), f"train.teacher={teacher.run_id}", "train.width=0.25", "train.epochs=2",
                       "train.distill_weight=0.7")
    result: TrainResult = train(student_cfg, store["ds"], progress=False)
    rec = tracking.load_run(cfg, str(result.run_id))
    assert rec.tags["teacher"] == teacher.run_id and rec.params["train.distill_weight"] == "0.7"
    losses = [h["train_loss"] for h in result.history]
    assert all(v == v and v >= 0 for v in losses)


def test_collapse_to_one_class_is_warned_and_tagged(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from lineguard import models

    real = models.create_model

    def always_good(name: str, num_classes: int, width: float = 1.0, weights: str | None = None,
                    in_chans: int = 3) -> Any:
        model = real(name, num_classes, width, weights, in_chans)
        last = dict(model.named_modules())[models.last_layer_prefix(model)]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([10.0, -10.0]))
        return model

    monkeypatch.setattr(models, "create_model", always_good)
    cfg = _cfg(Path(store["cfg"].workdir), "train.epochs=1", "train.lr=1e-9")
    result = train(cfg, store["ds"], progress=False)
    assert result.val_metrics["balanced_accuracy"] == 0.5 and result.warnings == [COLLAPSE_WARNING]
    assert tracking.load_run(cfg, str(result.run_id)).tags["lineguard.warning"] == COLLAPSE_WARNING
    assert "predicts (almost) only one class" in " ".join(capsys.readouterr().out.split())


def test_runs_cli_list_and_show(store: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    work, run_id = store["cfg"].workdir, store["result"].run_id
    listed = CliRunner().invoke(app, ["runs", "list", "--set", f"workdir={work}"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and "tinycnn" in listed.output and store["ds"].version in listed.output
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--set", f"workdir={work}"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "model/model.safetensors" in shown.output and "final_val_balanced_accuracy" in shown.output


def test_unreachable_tracking_server_is_one_clear_error(store: dict[str, Any]) -> None:
    cfg = _cfg(Path(store["cfg"].workdir), "tracking.uri=http://127.0.0.1:9")
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.load_run(cfg, store["result"].run_id)


def test_train_cli_records_a_run(store: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    work = store["cfg"].workdir
    sets = [a for s in [*TINY, "train.epochs=1", f"workdir={work}"] for a in ("--set", s)]
    out = CliRunner().invoke(app, ["train", "--data", str(store["ds"].root), *sets, "--name", "from-cli",
                                   "--device", "cpu"], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    run_id = out.output.split("run id:")[1].split()[0]
    rec = tracking.load_run(store["cfg"], run_id)
    assert rec.name == "from-cli" and rec.params["train.device"] == "cpu"


def test_a_recipe_head_run_rebuilds_and_fine_tunes_onto_a_new_recipe(store: dict[str, Any], tmp_path: Path) -> None:
    from lineguard.models import grouped_head

    cfg, ds = store["cfg"], store["ds"]
    first = train(_cfg(Path(cfg.workdir), "train.recipe_head_min=1", "train.epochs=1"), ds, progress=False)
    old_recipes = sorted(set(ds.split("train")["recipe"]))
    model, meta = tracking.load_model_from_run(cfg, str(first.run_id))
    head = grouped_head(model)
    assert head is not None and head.group_names == old_recipes == meta["head_recipes"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), first.model.eval()(x))
    new = make_simple_dataset(tmp_path / "new", per_class=8, recipes=3, size=40, seed=9)
    added = sorted(set(new.split("train")["recipe"]) - set(old_recipes))
    result = train(_cfg(Path(cfg.workdir), f"train.init_from={first.run_id}", "train.epochs=1", "train.rehearsal=5"),
                   new, progress=False)
    # fine-tuning keeps the recipe head even below recipe_head_min: the old recipes first, the new ones after
    assert result.model_meta["head_recipes"] == old_recipes + added


def test_a_few_new_images_are_repeated_to_match_the_rehearsal(store: dict[str, Any], tmp_path: Path) -> None:
    cfg, first, old = store["cfg"], store["result"], store["ds"]
    new = make_simple_dataset(tmp_path / "few", per_class=3, recipes=1, size=40, seed=11)
    n_new, n_old = len(new.split("train")), len(old.split("train"))  # rehearsal=1000 takes every old image
    assert 0 < n_new < n_old
    result = train(_cfg(Path(cfg.workdir), f"train.init_from={first.run_id}", "train.epochs=1",
                        "train.rehearsal=1000"), new, progress=False)
    rec = tracking.load_run(cfg, str(result.run_id))
    assert int(rec.params["train_images"]) == n_new * -(-n_old // n_new) + n_old


def test_fine_tuning_on_the_next_version_of_the_dataset_rehearses_nothing(store: dict[str, Any], tmp_path: Path) -> None:
    """The loop back: v2 holds v1's images (one relabelled); rehearsal must not mix v1's old labels back in."""
    from lineguard.manifest import write_dataset

    cfg, first, old = store["cfg"], store["result"], store["ds"]
    rows = old.manifest.copy()
    relabelled = rows.index[rows["split"] == "train"][0]
    rows.loc[relabelled, "label"] = "bad" if rows.loc[relabelled, "label"] == "good" else "good"
    images = {i: (Path(old.root) / p).read_bytes() for i, p in zip(rows["image_id"], rows["path"], strict=True)}
    v2 = write_dataset(str(tmp_path / "v2"), rows, images)
    assert v2.version != old.version
    result = train(_cfg(Path(cfg.workdir), f"train.init_from={first.run_id}", "train.epochs=1",
                        "train.rehearsal=1000"), v2, progress=False)
    rec = tracking.load_run(cfg, str(result.run_id))
    assert rec.tags["rehearsal_dataset"] == ""
    assert int(rec.params["train_images"]) == len(v2.split("train"))
