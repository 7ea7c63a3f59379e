"""The recipe head: one logit per (recipe, class) in training, summed back to one per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lineguard.config import load_config
from lineguard.models import (
    GroupedLinear,
    create_model,
    grouped_head,
    last_layer_prefix,
    remap_grouped_head,
    set_grouped_head,
    sub_class_outputs,
)
from lineguard.train import train
from tests.conftest import make_simple_dataset

TINY = ["train.model=tinycnn", "train.width=0.5", "preprocess.size=[32,32]", "train.batch_size=16",
        "train.threads=1", "train.epochs=2", "train.lr=0.01"]


def test_class_probabilities_are_the_summed_sub_class_probabilities() -> None:
    torch.manual_seed(0)
    head = GroupedLinear(8, 2, ["a", "b", "c"])
    x = torch.randn(5, 8)
    with torch.no_grad():
        sub = F.linear(x, head.weight, head.bias)  # row g * 2 + c: class c of recipe g
        summed = sub.softmax(1).view(5, 3, 2).sum(1)
        torch.testing.assert_close(head(x).softmax(1), summed)


def test_sub_class_outputs_switches_the_head_for_the_block_only() -> None:
    model = create_model("tinycnn", 2, width=0.5).eval()
    set_grouped_head(model, ["a", "b"])
    x = torch.randn(2, 3, 32, 32)
    with sub_class_outputs(model) as head:
        assert head is grouped_head(model) and model(x).shape == (2, 4)
    assert model(x).shape == (2, 2)
    plain = create_model("tinycnn", 2, width=0.5)
    with sub_class_outputs(plain) as head:
        assert head is None and plain(x).shape == (2, 2)


def test_a_recipe_head_model_exports_to_onnx_with_one_logit_per_class(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = create_model("tinycnn", 2, width=0.5)
    set_grouped_head(model, ["a", "b", "c"])
    torch.nn.init.normal_(model.get_submodule(last_layer_prefix(model)).weight, 0, 1.0)
    model.eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 48, 48),), str(path), dynamo=True, input_names=["image"],
                      output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    batch = torch.randn(3, 3, 48, 48)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": batch.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(batch).numpy(), atol=1e-4, rtol=0)
    assert got.shape == (3, 2)


def test_fine_tuning_onto_other_recipes_keeps_the_rows_of_known_ones() -> None:
    old = create_model("tinycnn", 2, width=0.5)
    set_grouped_head(old, ["a", "b"])
    prefix = last_layer_prefix(old)
    torch.nn.init.normal_(old.get_submodule(prefix).weight, 0, 1.0)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    old_w = state[f"{prefix}.weight"].clone()
    new = create_model("tinycnn", 2, width=0.5)
    set_grouped_head(new, ["b", "c"])
    fresh = new.state_dict()[f"{prefix}.weight"].clone()
    assert remap_grouped_head(state, new, ["a", "b"]) == ["c"]
    w = state[f"{prefix}.weight"]
    torch.testing.assert_close(w[0:2], old_w[2:4])  # recipe b moved from group 1 to group 0
    torch.testing.assert_close(w[2:4], fresh[2:4])  # recipe c starts fresh
    new.load_state_dict(state)


def test_training_uses_the_recipe_head_only_with_enough_images_per_pair(tmp_path: Path) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=16, recipes=2, size=40)
    n_cell = min(ds.split("train").groupby(["recipe", "label"]).size())
    with_head = train(load_config(None, [f"workdir={tmp_path}", *TINY, f"train.recipe_head_min={n_cell}"]), ds,
                      track=False, progress=False)
    head = grouped_head(with_head.model)
    assert head is not None and head.group_names == sorted(set(ds.split("train")["recipe"]))
    assert with_head.model_meta["head_recipes"] == head.group_names
    assert with_head.model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)  # one logit per class for everyone else
    plain = train(load_config(None, [f"workdir={tmp_path}", *TINY, f"train.recipe_head_min={n_cell + 1}"]), ds,
                  track=False, progress=False)
    assert grouped_head(plain.model) is None and plain.model_meta["head_recipes"] == []
    off = train(load_config(None, [f"workdir={tmp_path}", *TINY, "train.recipe_head=false",
                                   "train.recipe_head_min=1"]), ds, track=False, progress=False)
    assert grouped_head(off.model) is None


@pytest.mark.parametrize("balance", ["loss", "sampler"])
def test_recipe_head_loss_decreases(tmp_path: Path, balance: str) -> None:
    ds = make_simple_dataset(tmp_path / "ds", per_class=16, recipes=2, size=40)
    cfg = load_config(None, [f"workdir={tmp_path}", *TINY, "train.recipe_head_min=1", "train.epochs=6",
                             f"train.balance={balance}", "augment.strength=0"])
    result = train(cfg, ds, track=False, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert grouped_head(result.model) is not None and losses[-1] < losses[0]
