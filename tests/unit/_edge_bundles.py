"""Tiny bundles for the edge tests, built without torch: a hand-written ONNX graph.

The model: ``embedding`` = per-channel mean of the normalised image (3 values);
``logits`` = [0, k * (mean(embedding) - centre)]. With mean = std = 0.5 the normalised
pixels are in [-1, 1], so a bright image is "bad" -- predictable scores for tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.preprocess import PreprocessParams

K, CENTRE = 6.0, 0.0
PARAMS = PreprocessParams(size=(32, 32), resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def toy_onnx(path: Path, k: float = K, centre: float = CENTRE) -> Path:
    """Write the toy model (opset 18, dynamic batch) to ``path``."""
    import onnx
    from onnx import TensorProto, helper

    h, w = PARAMS.size
    weight = np.array([[0.0, k / 3]] * 3, np.float32)
    bias = np.array([0.0, -k * centre], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
            helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"]),
        ],
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, h, w])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor("W", TensorProto.FLOAT, [3, 2], weight.ravel()),
         helper.make_tensor("B", TensorProto.FLOAT, [2], bias)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def grey(level: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A uniform grey HxWx3 uint8 image."""
    return np.full((*size, 3), level, np.uint8)


def expected_score(level: int, temperature: float, k: float = K, centre: float = CENTRE) -> float:
    """The toy model's calibrated p(bad) for a uniform grey image (no letterbox padding)."""
    x = (level / 255.0 - 0.5) / 0.5
    return float(1.0 / (1.0 + np.exp(-(k * (x - centre)) / temperature)))


def make_toy_bundle(
    out: Path,
    decision: Mapping[str, Any] | None = None,
    tar: bool = False,
    recipes: tuple[str, ...] = ("vanilla", "chocolate"),
    with_reference: bool = True,
) -> Path:
    """A complete, valid bundle around the toy model (golden expectations computed in ONNX Runtime)."""
    from lineguard import export as ex

    work = out.parent / f"{out.name}-work"
    model = toy_onnx(work / "model.onnx")
    golden = ex.synthetic_golden(PARAMS, 8, seed=1)
    golden = ex.GoldenBatch(golden.images, np.array([recipes[i % len(recipes)] for i in range(8)]), golden.labels,
                            golden.source)
    expected = ex.onnx_outputs(model, golden.inputs(PARAMS))
    from lineguard.edge import Decision

    dec = Decision.from_dict(decision or {"default_threshold": 0.5, "per_recipe": {"vanilla": 0.3}, "temperature": 2.0})
    parity = ex.compare_outputs(expected, expected, 0.5, 1.0, 1, 1e-4, "onnxruntime")
    ref, arrays = (None, None)
    if with_reference:
        stats = [{"brightness": float(i), "contrast": float(i % 3)} for i in range(10)]
        ref, arrays = ex.reference_statistics(stats, np.random.default_rng(0).normal(size=(10, 3)),
                                              np.linspace(0, 1, 10), np.array([0, 1] * 5), ("good", "bad"))
    return ex.write_bundle(
        out, model, classes=["good", "bad"], positive_class="bad", preprocess=PARAMS, golden=golden,
        expected=expected, parity=parity, decision=dec, recipes=list(recipes), precision="fp32", opset=18,
        lineage={"run_id": "toy", "dataset_version": "v0", "git_commit": "unknown"},
        evaluation={"split": "test", "n": 10, "balanced_accuracy": 1.0, "ece": 0.01, "per_recipe": {}},
        reference=ref, reference_arrays=arrays, name="toy", version="1", tar=tar,
    )


def rewrite_meta(folder: Path, change: Callable[[dict[str, Any]], None], reseal: bool = True) -> None:
    """Edit a bundle's bundle.json in place; ``reseal`` recomputes its integrity digest, as an attacker who
    knows the format could, so the check under test is the one after it (an unsealed edit is refused by
    integrity alone)."""
    from lineguard.edge.signing import integrity_block

    meta = json.loads((folder / "bundle.json").read_text())
    change(meta)
    if reseal:
        meta["integrity"] = integrity_block(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))


def make_version_2(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` at ``dest`` as version 2 with default threshold 0.9 and no per-recipe thresholds
    (resealed): the same model deciding differently between the two thresholds."""
    import shutil

    shutil.copytree(bundle, dest)

    def to_v2(meta: dict[str, Any]) -> None:
        meta["version"] = "2"
        meta["decision"]["default_threshold"] = 0.9
        meta["decision"]["per_recipe"] = {}

    rewrite_meta(dest, to_v2)
    return dest


def make_champion_and_challenger(folder: Path) -> dict[str, Path]:
    """A toy champion, its challenger (version 2, default threshold 0.9, no per-recipe thresholds: on the same
    frames the two disagree between the thresholds) and the challenger as a .tar.gz upload."""
    import tarfile

    champion = make_toy_bundle(folder / "champion")
    challenger = make_version_2(champion, folder / "challenger")
    archive = folder / "challenger.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(challenger.iterdir()):
            tar.add(f, arcname=f.name)
    return {"champion": champion, "challenger": challenger, "archive": archive}
