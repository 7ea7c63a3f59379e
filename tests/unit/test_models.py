"""Architectures: shapes, ONNX export parity, torchvision key names, safe weight loading.

Tests are generated from ``MODELS`` so a new architecture is covered by adding it there.
Widths are small and images tiny to keep the file fast.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lineguard import LineguardError
from lineguard.models import (
    MODELS,
    ModelError,
    backbone_parameters,
    count_parameters,
    create_model,
    head_parameters,
    last_layer_prefix,
)

NAMES = list(MODELS)
SMALL_WIDTH = 0.25


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, single-threaded: tiny tensors gain nothing from threads on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 96), (128, 96), (160, 64)])
def test_forward_shapes(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, num_classes=3, width=SMALL_WIDTH).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (2, 3)
    assert feats.shape == (2, model.num_features)
    assert torch.isfinite(logits).all()
    # the head maps the embedding to the logits: forward is classifier(forward_features)
    with torch.no_grad():
        torch.testing.assert_close(model.classifier(feats), logits)


@pytest.mark.parametrize("name", NAMES)
def test_width_changes_size_and_rounds_channels(name: str) -> None:
    small = create_model(name, 2, width=0.5)
    full = create_model(name, 2, width=1.0)
    assert count_parameters(small) < count_parameters(full)
    for mod_name, module in small.named_modules():
        # SE squeeze convs (fc1) follow torchvision's own rounding, every other conv a multiple of 8
        if isinstance(module, torch.nn.Conv2d) and not mod_name.endswith("fc1"):
            assert module.out_channels % 8 == 0, mod_name


@pytest.mark.parametrize("name", NAMES)
def test_head_and_backbone_split_all_parameters(name: str) -> None:
    model = create_model(name, 2, width=SMALL_WIDTH)
    head = {id(p) for p in head_parameters(model)}
    backbone = {id(p) for p in backbone_parameters(model)}
    assert head and backbone
    assert not head & backbone
    assert head | backbone == {id(p) for p in model.parameters()}
    # the classifier's parameters are exactly the head
    assert head == {id(p) for p in model.classifier.parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = create_model(name, 2, width=SMALL_WIDTH).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, 3, 64, 64)  # another batch size than the example: the batch axis is dynamic
    with torch.no_grad():
        expected = model(batch).numpy()
    got = session.run(None, {"image": batch.numpy()})[0]
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# torchvision's own figures for the 1000-class ImageNet models (docs: "num_params")
TORCHVISION_PARAMS = {
    "mobilenetv3_small": 2_542_856,
    "mobilenetv3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "resnet18": 11_689_512,
}
# hand-copied state-dict keys of torchvision's definitions (first, some inner, last)
TORCHVISION_KEYS = {
    "mobilenetv3_small": [
        "features.0.0.weight", "features.0.1.weight", "features.0.1.running_var",
        "features.1.block.0.0.weight", "features.1.block.1.fc1.weight", "features.1.block.1.fc2.bias",
        "features.1.block.2.0.weight", "features.2.block.0.0.weight", "features.4.block.2.fc1.weight",
        "features.11.block.3.1.num_batches_tracked", "features.12.0.weight", "features.12.1.bias",
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
    ],
    "mobilenetv3_large": [
        "features.0.0.weight", "features.1.block.0.0.weight", "features.1.block.1.0.weight",
        "features.4.block.2.fc1.weight", "features.7.block.2.0.weight", "features.15.block.3.1.running_mean",
        "features.16.0.weight", "features.16.1.running_var", "classifier.0.weight", "classifier.3.bias",
    ],
    "efficientnet_b0": [
        "features.0.0.weight", "features.0.1.running_mean", "features.1.0.block.0.0.weight",
        "features.1.0.block.1.fc1.weight", "features.1.0.block.2.0.weight", "features.2.0.block.0.0.weight",
        "features.2.1.block.2.fc2.bias", "features.6.3.block.3.1.weight", "features.7.0.block.3.0.weight",
        "features.8.0.weight", "features.8.1.num_batches_tracked", "classifier.1.weight", "classifier.1.bias",
    ],
    "resnet18": [
        "conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "layer3.1.conv2.weight",
        "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias",
    ],
}
TORCHVISION_STATE_LEN = {"mobilenetv3_small": 244, "mobilenetv3_large": 312, "efficientnet_b0": 360, "resnet18": 122}


@pytest.mark.parametrize("name", list(TORCHVISION_KEYS))
def test_state_dict_matches_torchvision(name: str) -> None:
    model = create_model(name, num_classes=1000)
    keys = list(model.state_dict())
    assert count_parameters(model) == TORCHVISION_PARAMS[name]
    assert len(keys) == TORCHVISION_STATE_LEN[name]
    missing = [k for k in TORCHVISION_KEYS[name] if k not in keys]
    assert not missing
    assert keys[0] == TORCHVISION_KEYS[name][0]
    assert keys[-1] == TORCHVISION_KEYS[name][-1]


def test_classifier_shapes_match_torchvision() -> None:
    small = create_model("mobilenetv3_small", 1000).state_dict()
    assert small["classifier.0.weight"].shape == (1024, 576)
    assert small["classifier.3.weight"].shape == (1000, 1024)
    b0 = create_model("efficientnet_b0", 1000).state_dict()
    assert b0["features.1.0.block.1.fc1.weight"].shape == (8, 32, 1, 1)
    assert b0["classifier.1.weight"].shape == (1000, 1280)
    assert create_model("resnet18", 1000).state_dict()["fc.weight"].shape == (1000, 512)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weights_round_trip(name: str, fmt: str, tmp_path: Path) -> None:
    src = create_model(name, 2, width=SMALL_WIDTH).eval()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save(src.state_dict(), path)
    torch.manual_seed(123)  # a different init, so equal outputs prove the load
    dst = create_model(name, 2, width=SMALL_WIDTH, weights=str(path)).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_wrapped_and_data_parallel_state_dicts_load(tmp_path: Path) -> None:
    src = create_model("tinycnn", 2, width=SMALL_WIDTH)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = create_model("tinycnn", 2, width=SMALL_WIDTH, weights=str(path))
    torch.testing.assert_close(dst.state_dict()["classifier.1.weight"], src.state_dict()["classifier.1.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_head_is_replaced_when_num_classes_differs(name: str, tmp_path: Path) -> None:
    src = create_model(name, 10, width=SMALL_WIDTH)
    path = tmp_path / "imagenet_like.pth"
    torch.save(src.state_dict(), path)
    dst = create_model(name, 2, width=SMALL_WIDTH, weights=str(path))
    last = last_layer_prefix(dst)
    own, theirs = dst.state_dict(), src.state_dict()
    assert own[f"{last}.weight"].shape[0] == 2
    for key, value in theirs.items():
        if not key.startswith(last + "."):
            torch.testing.assert_close(own[key], value, msg=key)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(create_model("tinycnn", 2).state_dict(), str(path))
    with pytest.raises(ModelError) as exc:
        create_model("resnet18", 2, width=SMALL_WIDTH, weights=str(path))
    msg = str(exc.value)
    assert "missing: " in msg and "conv1.weight" in msg
    assert "unexpected: " in msg and "features.0.0.weight" in msg
    assert str(path) in msg and "\n" not in msg


def test_wrong_width_lists_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(create_model("tinycnn", 2, width=1.0).state_dict(), path)
    with pytest.raises(ModelError, match=r"shape mismatch: .*features\.0\.0\.weight"):
        create_model("tinycnn", 2, width=0.5, weights=str(path))


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump({"conv1.weight": _Evil()}, fh)
    with pytest.raises(ModelError, match="weights_only=True"):
        create_model("tinycnn", 2, weights=str(path))
    # a full pickled module is refused too: only plain state dicts load
    module_path = tmp_path / "module.pth"
    torch.save(create_model("tinycnn", 2, width=SMALL_WIDTH), module_path)
    with pytest.raises(ModelError):
        create_model("tinycnn", 2, width=SMALL_WIDTH, weights=str(module_path))


def test_missing_or_garbage_weights_file(tmp_path: Path) -> None:
    with pytest.raises(LineguardError):
        create_model("tinycnn", 2, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="safetensors"):
        create_model("tinycnn", 2, weights=str(bad))


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(LineguardError) as exc:
        create_model("mobilenet_v3", 2)
    for name in MODELS:
        assert name in str(exc.value)


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"width": 0.0}])
def test_bad_arguments(bad: dict[str, float]) -> None:
    kwargs: dict[str, float] = {"num_classes": 2, "width": 1.0} | bad
    with pytest.raises(ModelError):
        create_model("tinycnn", int(kwargs["num_classes"]), width=kwargs["width"])


def test_tinycnn_overfits_one_batch() -> None:
    """The from-scratch model can learn: a fixed batch is memorised in a few dozen steps."""
    model = create_model("tinycnn", 2, width=0.5)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() == 1.0
