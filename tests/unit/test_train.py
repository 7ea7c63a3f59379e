"""The training loop without tracking: overfit one batch, loss goes down, determinism, schedules, errors."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from lineguard.config import load_config
from lineguard.manifest import Dataset
from lineguard.train import (
    TrainError,
    _epoch_indices,
    _lr_factor,
    classification_metrics,
    prepare_data,
    preprocess_params,
    resolve_device,
    train,
)
from tests.conftest import make_simple_dataset

TINY = ["train.model=tinycnn", "train.width=0.5", "preprocess.size=[32,32]", "train.batch_size=16",
        "train.threads=1", "train.epochs=4", "train.lr=0.01", "train.warmup_epochs=0.5"]


def _cfg(tmp_path: Path, *extra: str) -> Any:
    return load_config(None, [f"workdir={tmp_path / 'work'}", *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_simple_dataset(tmp_path_factory.mktemp("ds") / "ds", per_class=16, recipes=2, size=40)


def test_overfit_one_batch() -> None:
    """A model that cannot drive one batch's loss to ~0 has a bug in the loop, the head or the data path."""
    from lineguard.augment import normalise_batch
    from lineguard.models import create_model
    from lineguard.preprocess import PreprocessParams

    torch.manual_seed(0)
    torch.set_num_threads(1)
    params = PreprocessParams(size=(32, 32))
    x = normalise_batch(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), params)
    y = torch.tensor([0, 1] * 4)
    model = create_model("tinycnn", num_classes=2, width=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(torch.nn.functional.cross_entropy(model(x), y)) < 0.05


def test_loss_decreases_and_result_is_complete(tmp_path: Path, tiny_ds: Dataset) -> None:
    result = train(_cfg(tmp_path), tiny_ds, track=False, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.run_id is None and result.classes == ["good", "bad"]
    assert 1 <= result.best_epoch <= 4 and len(result.history) == 4
    assert set(result.val_metrics) >= {"loss", "accuracy", "balanced_accuracy"}
    assert result.test_metrics["n"] == len(tiny_ds.split("test"))
    assert result.model_meta["model"] == "tinycnn" and result.model_meta["preprocess"]["size"] == [32, 32]


def test_same_seed_same_metrics(tmp_path: Path, tiny_ds: Dataset) -> None:
    cfg = _cfg(tmp_path, "train.epochs=2")
    a = train(cfg, tiny_ds, track=False, progress=False)
    b = train(cfg, tiny_ds, track=False, progress=False)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert a.val_metrics == b.val_metrics and a.test_metrics == b.test_metrics
    c = train(_cfg(tmp_path, "train.epochs=2", "train.seed=1"), tiny_ds, track=False, progress=False)
    assert c.history[-1]["train_loss"] != a.history[-1]["train_loss"]


@pytest.mark.parametrize("balance", ["loss", "none"])
def test_other_balance_modes_and_label_smoothing_run(tmp_path: Path, tiny_ds: Dataset, balance: str) -> None:
    result = train(_cfg(tmp_path, "train.epochs=1", f"train.balance={balance}", "train.label_smoothing=0.1"),
                   tiny_ds, track=False, progress=False)
    assert len(result.history) == 1


def test_prepared_data_is_reused_and_matches_preprocess(tmp_path: Path, tiny_ds: Dataset) -> None:
    import numpy as np

    from lineguard.augment import normalise_batch
    from lineguard.preprocess import preprocess

    params = preprocess_params(_cfg(tmp_path))
    data = prepare_data(tiny_ds, params)
    rows = tiny_ds.split("val")
    want = np.stack([preprocess(tiny_ds.read_image(p), params) for p in rows["path"]])
    got = normalise_batch(data.splits["val"].images, params).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    result = train(_cfg(tmp_path, "train.epochs=1"), tiny_ds, data=data, track=False, progress=False)
    assert result.history


def test_balanced_sampler_draws_classes_evenly_and_sees_every_image() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    idx = _epoch_indices(labels, "sampler", torch.Generator().manual_seed(0))
    assert len(idx) == 180 and float(labels[idx].float().mean()) == 0.5
    assert set(idx.tolist()) == set(range(100))  # nothing skipped, unlike drawing with replacement
    assert torch.bincount(idx[labels[idx] == 1]).max() == 9  # the minority is cycled evenly
    assert not torch.equal(idx[:90], torch.sort(idx[:90]).values)  # shuffled
    assert sorted(_epoch_indices(labels, "none", torch.Generator().manual_seed(0)).tolist()) == list(range(100))


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [_lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[-1] == pytest.approx(0.01, abs=0.01)


def test_balanced_accuracy_of_a_majority_guesser_is_half() -> None:
    labels = torch.tensor([0] * 9 + [1])
    logits = torch.tensor([[1.0, 0.0]] * 10)
    m = classification_metrics(logits, labels, 2)
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] == pytest.approx(0.5)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainError, match=r"train\.device"):
        resolve_device("tpu:banana")


def test_bf16_training_learns_and_records_its_precision(tmp_path: Path, tiny_ds: Dataset) -> None:
    """bf16 steps (weights kept fp32) learn as fp32 ones do, and the run records the precision (reproduce
    re-runs it)."""
    result = train(_cfg(tmp_path, "train.model=convnet", "train.width=0.25", "train.precision=bf16"), tiny_ds,
                   track=False, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.config.train.precision == "bf16"


def test_unknown_model_and_missing_weights_are_clear_errors(tmp_path: Path, tiny_ds: Dataset) -> None:
    with pytest.raises(TrainError, match=r"unknown model 'resnet999'.*tinycnn"):
        train(_cfg(tmp_path, "train.model=resnet999"), tiny_ds, track=False, progress=False)
    with pytest.raises(TrainError, match=r"weights file 'nope/w\.safetensors' does not exist"):
        train(_cfg(tmp_path, "train.init_from=nope/w.safetensors"), tiny_ds, track=False, progress=False)


def test_dataset_without_val_split_is_refused(tmp_path: Path) -> None:
    import pandas as pd

    from lineguard.manifest import write_dataset

    ds = make_simple_dataset(tmp_path / "a", per_class=4, recipes=1, size=16)
    rows = ds.manifest.assign(split="train")
    images = {i: (Path(ds.root) / p).read_bytes() for i, p in zip(rows["image_id"], rows["path"], strict=True)}
    no_val = write_dataset(str(tmp_path / "b"), pd.DataFrame(rows), images)
    with pytest.raises(TrainError, match="no val split"):
        train(_cfg(tmp_path), no_val, track=False, progress=False)


def test_init_from_a_weights_file_fine_tunes_with_frozen_backbone(tmp_path: Path, tiny_ds: Dataset) -> None:
    from safetensors.torch import save_file

    from lineguard.models import backbone_parameters, create_model

    source = create_model("tinycnn", num_classes=2, width=0.5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    cfg = _cfg(tmp_path, f"train.init_from={path}", "train.freeze_epochs=1", "train.epochs=1")
    result = train(cfg, tiny_ds, track=False, progress=False)
    # one frozen epoch: the backbone is exactly the file's (batch-norm buffers aside)
    own = dict(result.model.named_parameters())
    for name, p in source.named_parameters():
        if any(p is q for q in backbone_parameters(source)):
            assert torch.equal(own[name], p), name


def test_on_epoch_sees_every_epoch_and_can_stop_training(tmp_path: Path, tiny_ds: Dataset) -> None:
    seen: list[tuple[int, float]] = []

    def record(epoch: int, row: dict[str, float]) -> None:
        seen.append((epoch, row["val_balanced_accuracy"]))

    result = train(_cfg(tmp_path, "train.epochs=3", "train.patience=10"), tiny_ds, track=False, progress=False,
                   on_epoch=record)
    assert [e for e, _ in seen] == [1, 2, 3]
    assert [v for _, v in seen] == [h["val_balanced_accuracy"] for h in result.history]

    class Stop(Exception):
        pass

    def stop_at_two(epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(_cfg(tmp_path, "train.epochs=5"), tiny_ds, track=False, progress=False, on_epoch=stop_at_two)


def test_a_corrupt_stored_image_is_one_clear_error(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=6, recipes=1, size=40)
    broken = ds.split("train")["path"].iloc[0]
    (Path(ds.root) / broken).write_bytes(b"not an image at all")
    with pytest.raises(TrainError, match=r"image '.*' cannot be decoded"):
        train(_cfg(tmp_path, "train.epochs=1"), ds, track=False, progress=False)


def test_ema_weights_are_what_is_validated_and_returned(tmp_path: Path, tiny_ds: Dataset) -> None:
    """With train.ema the returned weights are the moving average: they differ from the raw run's, and
    decay -> 0 (no averaging) gives back the raw run exactly."""
    raw = train(_cfg(tmp_path, "train.ema=0", "train.epochs=2"), tiny_ds, track=False, progress=False)
    avg = train(_cfg(tmp_path, "train.ema=0.9", "train.epochs=2"), tiny_ds, track=False, progress=False)
    near_raw = train(_cfg(tmp_path, "train.ema=1e-9", "train.epochs=2"), tiny_ds, track=False, progress=False)
    w = "classifier.1.weight"
    assert not torch.equal(raw.model.state_dict()[w], avg.model.state_dict()[w])
    torch.testing.assert_close(raw.model.state_dict()[w], near_raw.model.state_dict()[w])
    assert raw.model.state_dict()[w].is_contiguous()  # returned in the plain layout (safetensors, ONNX)
