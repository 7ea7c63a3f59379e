"""From an ImageNet state-dict file to a distilled student on the edge, end to end.

A user who has torchvision's ImageNet weights as a file (``resnet18-f37072fd.pth``, downloaded by
them) starts a transfer-learning run from it with ``lineguard train --weights FILE``, distils a small
student from that teacher (``--teacher RUN``), exports the student and runs it with the edge
Predictor. The file here is written by the test, with random values but exactly torchvision's key
names, shapes and dtypes for ``resnet18`` with 1000 classes -- spelled out below from torchvision's
definition, independently of ``lineguard.models`` -- saved both as a plain ``torch.save`` state dict
and as safetensors. Tiny images and one or two epochs: the flow is what is tested, not accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from lineguard.config import load_config
from lineguard.manifest import Dataset
from tests.conftest import make_simple_dataset
from tests.unit.test_train_cli import _lineguard

pytestmark = pytest.mark.slow

RESNET18_PARAMS = 11_689_512  # torchvision's documented num_params for resnet18 (ImageNet, 1000 classes)


def torchvision_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's ``resnet18()`` keys, shapes and dtypes, in its order; random values."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=gen) * (2.0 / (out * k * k)) ** 0.5

    def bn(name: str, ch: int) -> None:
        state[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(ch, generator=gen)
        state[f"{name}.bias"] = 0.1 * torch.randn(ch, generator=gen)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(ch, generator=gen)
        state[f"{name}.running_var"] = 1.0 + 0.1 * torch.rand(ch, generator=gen)
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for stage, out in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):  # BasicBlock x 2; the first block of stages 2-4 halves the map and projects
            p = f"layer{stage}.{block}"
            conv(f"{p}.conv1", out, inp if block == 0 else out, 3)
            bn(f"{p}.bn1", out)
            conv(f"{p}.conv2", out, out, 3)
            bn(f"{p}.bn2", out)
            if block == 0 and stage > 1:
                conv(f"{p}.downsample.0", out, inp, 1)
                bn(f"{p}.downsample.1", out)
        inp = out
    state["fc.weight"] = 0.01 * torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    state = torchvision_resnet18_state()
    assert len(state) == 122
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                       "num_batches_tracked"))) == RESNET18_PARAMS
    folder = tmp_path_factory.mktemp("imagenet")
    pth, st = folder / "resnet18-imagenet.pth", folder / "resnet18-imagenet.safetensors"
    torch.save(state, pth)  # what `torch.save(torchvision.models.resnet18(weights=...).state_dict(), f)` writes
    save_file(state, str(st))
    return {"pth": pth, "safetensors": st}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_simple_dataset(tmp_path_factory.mktemp("pre") / "ds", per_class=10, recipes=1, size=40)


def test_both_file_formats_load_the_same_imagenet_weights(imagenet_files: dict[str, Path]) -> None:
    from lineguard.models import create_model

    a = create_model("resnet18", num_classes=2, weights=str(imagenet_files["pth"])).state_dict()
    b = create_model("resnet18", num_classes=2, weights=str(imagenet_files["safetensors"])).state_dict()
    state = torchvision_resnet18_state()
    for key in ("conv1.weight", "layer3.0.downsample.1.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(a[key], state[key]) and torch.equal(b[key], state[key])
    assert a["fc.weight"].shape == (2, 512)  # the 1000-class head is dropped, a fresh 2-class one trains


def test_imagenet_weights_to_a_distilled_student_on_the_edge(imagenet_files: dict[str, Path], ds: Dataset,
                                                             tmp_path: Path) -> None:
    from lineguard import tracking
    from lineguard.edge import Predictor, load_bundle
    from lineguard.export import export
    from lineguard.train import train

    work = tmp_path / "work"
    # 1. transfer learning from the ImageNet file, through the CLI as the docs show it; the backbone stays frozen
    #    for the one epoch (a linear probe), so the trained model must still hold the file's backbone exactly.
    out = _lineguard("train", "--data", str(ds.root), "--weights", str(imagenet_files["safetensors"]),
                     "--set", "train.model=resnet18", "--set", "train.epochs=1", "--set", "train.freeze_epochs=1",
                     "--set", "preprocess.size=[32,32]", "--set", "train.batch_size=8", "--set", "train.threads=1",
                     "--set", f"workdir={work}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"run id: ([0-9a-f]{32})", out.stdout)
    assert match, out.stdout
    teacher_run = match.group(1)
    config = load_config(None, [f"workdir={work}", "export.golden_size=8", "export.reference_images=8"])
    teacher, meta = tracking.load_model_from_run(config, teacher_run)
    assert meta["model"] == "resnet18"
    file_state = torchvision_resnet18_state()
    assert torch.equal(teacher.state_dict()["conv1.weight"], file_state["conv1.weight"])
    assert torch.equal(teacher.state_dict()["layer4.1.conv2.weight"], file_state["layer4.1.conv2.weight"])
    assert tracking.load_run(config, teacher_run).params["train.weights"] == str(imagenet_files["safetensors"])

    # 2. a small student distilled from that teacher (the same flags as `lineguard train --teacher RUN`)
    student_cfg = load_config(None, [f"workdir={work}", f"train.teacher={teacher_run}", "train.model=tinycnn",
                                     "train.width=0.5", "train.distill_weight=0.5", "train.epochs=2",
                                     "preprocess.size=[32,32]", "train.batch_size=8", "train.threads=1"])
    student = train(student_cfg, ds, progress=False, console=Console(quiet=True))
    assert student.run_id is not None
    assert tracking.load_run(config, student.run_id).tags["teacher"] == teacher_run

    # 3. the student exported to a bundle (parity checked) and scored by the edge Predictor
    bundle_dir = tmp_path / "bundle"
    exported = export(student.run_id, str(ds.root), bundle_dir, config)
    assert exported.parity.passed, exported.parity
    bundle = load_bundle(bundle_dir)
    assert bundle.meta["lineage"]["run_id"] == student.run_id
    predictor = Predictor(bundle)
    rows = ds.split("test")
    scores = []
    for path in rows["path"]:
        prediction = predictor.predict(ds.read_image(path))
        assert prediction.decision in ("accept", "reject")  # type: ignore[union-attr]
        scores.append(prediction.score)  # type: ignore[union-attr]
    assert len(scores) == len(rows) and np.all(np.isfinite(scores))


def test_a_weights_file_without_its_architecture_is_one_clear_error(imagenet_files: dict[str, Path], ds: Dataset,
                                                                    tmp_path: Path) -> None:
    out = _lineguard("train", "--data", str(ds.root), "--weights", str(imagenet_files["pth"]),
                     "--set", f"workdir={tmp_path / 'work'}", cwd=tmp_path)
    assert out.returncode == 2 and "train.model is not set" in out.stderr and "Traceback" not in out.stderr
    out = _lineguard("train", "--data", str(ds.root), "--weights", str(imagenet_files["pth"]),
                     "--set", "train.model=mobilenetv3_small", "--set", f"workdir={tmp_path / 'work'}", cwd=tmp_path)
    assert out.returncode == 2 and "does not fit MobileNetV3" in " ".join(out.stderr.split())


