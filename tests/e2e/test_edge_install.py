"""The edge install: `pip install '.[edge]'` into a fresh virtual environment holds no torch and
runs `lineguard predict` and `lineguard edge run` on a bundle (what docker/Dockerfile.edge installs; there is no Docker
engine here, so the environment stands in for the image).

The venv's size is printed (run with ``-s`` to see it; docs/benchmarks.md records it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit._edge_bundles import make_toy_bundle

REPO = Path(__file__).resolve().parents[2]


def _size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_the_edge_extra_installs_without_torch_and_predicts(tmp_path: Path) -> None:
    venv = tmp_path / "edge-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), f"{REPO}[edge]"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    # No training stack in the edge environment.
    probe = "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in " \
            "('torch', 'mlflow', 'sklearn', 'optuna', 'onnx', 'onnxruntime', 'lineguard')}))"
    found = json.loads(subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True,
                                      env=env, cwd=tmp_path).stdout)
    assert found == {"torch": False, "mlflow": False, "sklearn": False, "optuna": False, "onnx": False,
                     "onnxruntime": True, "lineguard": True}

    # A bundle made here (with onnx, which the edge lacks) decides images there.
    bundle = make_toy_bundle(tmp_path / "bundle.tar.gz", tar=True)
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    Image.fromarray(np.full((32, 32, 3), 240, np.uint8)).save(bright)
    Image.fromarray(np.full((32, 32, 3), 15, np.uint8)).save(dark)
    cli = venv / "bin" / "lineguard"
    result = subprocess.run([str(cli), "predict", str(bundle), str(bright), str(dark), "--json"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [d["label"] for d in decisions] == ["bad", "good"]
    # The runtime too: a folder of frames through `lineguard edge run` into the local store and a JSON-lines sink.
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, level in enumerate((240, 15, 230)):
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(frames / f"f{i}.png")
    run = subprocess.run([str(cli), "edge", "run", "--bundle", str(bundle), "--source", str(frames),
                          "--store", str(tmp_path / "edge.db"), "--sink", f"jsonl:{tmp_path / 'out.jsonl'}",
                          "--station", "edge-venv"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    sent = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(m["decision"] for m in sent) == ["accept", "reject", "reject"]
    size = _size_bytes(venv)
    site = next(venv.glob("lib/python*/site-packages"))
    largest = sorted(((_size_bytes(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
    print(f"\nedge venv: {size / 1e6:.0f} MB; largest: " + ", ".join(f"{n} {b / 1e6:.0f} MB" for b, n in largest))
    assert size > 0
