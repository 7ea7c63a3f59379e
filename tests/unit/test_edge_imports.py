"""The edge runtime works with the training stack unimportable (DESIGN: dependency boundaries, TARGETS P5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit._edge_bundles import make_toy_bundle

BLOCKED = ("torch", "mlflow", "sklearn", "pandas", "optuna", "onnx", "onnxscript", "pydantic", "lineguard.config",
           "lineguard.train", "lineguard.export", "lineguard.tracking", "lineguard.models")

SCRIPT = r"""
import importlib.abc, json, sys

BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked in this test: the edge must not need it")
        return None

sys.meta_path.insert(0, Blocker())
import numpy as np

import lineguard.edge
from lineguard.edge import Predictor, load_bundle
from lineguard.edge.bench import bench
from lineguard.edge.predictor import verify_bundle

b = load_bundle({bundle!r})
pred = Predictor(b, threads=1).predict(np.full((40, 40, 3), 230, np.uint8), recipe="vanilla")
report = verify_bundle(b)
timing = bench({bundle!r}, repeats=3, warmup=1)
loaded = sorted(m for m in sys.modules if any(m == x or m.startswith(x + ".") for x in BLOCKED))
print(json.dumps({{"decision": pred.decision, "verified": report["passed"], "median": timing["model"]["median_ms"],
                  "loaded": loaded, "torch": "torch" in sys.modules}}))
"""


def test_edge_runs_with_torch_and_training_stack_blocked(tmp_path: Path) -> None:
    bundle = make_toy_bundle(tmp_path / "toy.tar.gz")
    code = SCRIPT.format(blocked=BLOCKED, bundle=str(bundle))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {**result, "decision": "reject", "verified": True, "loaded": [], "torch": False}
    assert result["median"] > 0


def test_blocker_really_blocks(tmp_path: Path) -> None:
    """The harness itself: importing torch under the blocker fails, so the test above can fail."""
    code = SCRIPT.split("import numpy as np")[0].format(blocked=BLOCKED, bundle="") + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


RUNTIME_BLOCKED = tuple(b for b in BLOCKED if b != "pydantic")  # station.yaml is validated with pydantic

RUNTIME_SCRIPT = r"""
import importlib.abc, json, sys, threading

BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked in this test: the edge runtime must not need it")
        return None

sys.meta_path.insert(0, Blocker())
from lineguard.edge.runtime import EdgeRuntime, RuntimeSettings
from lineguard.edge.sources import open_source
pydantic_before_station = "pydantic" in sys.modules

class Recorder:
    def __init__(self):
        self.records = []
    def record(self, rec, image, sent=()):
        self.records.append(rec.to_dict())

from lineguard.edge.station import load_station_config
config = load_station_config(None, {{"station": "cell-1", "source": {video!r}, "recipe": "vanilla"}})
rec = Recorder()
summary = EdgeRuntime({bundle!r}, open_source(config.source.input), station=config, recorder=rec).run()
loaded = sorted(m for m in sys.modules if any(m == x or m.startswith(x + ".") for x in BLOCKED))
print(json.dumps({{"decided": summary.decided, "recorded": len(rec.records), "loaded": loaded,
                  "pydantic_before_station": pydantic_before_station, "torch": "torch" in sys.modules}}))
"""


def test_edge_runtime_runs_a_video_with_the_training_stack_blocked(tmp_path: Path) -> None:
    """The loop (sources, runtime, station config) from a video file to records: no torch, no lineguard.config."""
    from lineguard import synth

    bundle = make_toy_bundle(tmp_path / "toy")
    video, _ = synth.write_video(str(tmp_path / "line.avi"), cones=2)
    code = RUNTIME_SCRIPT.format(blocked=RUNTIME_BLOCKED, bundle=str(bundle), video=video)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"decided": 20, "recorded": 20, "loaded": [], "pydantic_before_station": False, "torch": False}
