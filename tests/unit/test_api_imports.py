"""The station API decides over HTTP with the training stack and the training config unimportable (P5, DESIGN)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit._edge_bundles import make_toy_bundle

pytest.importorskip("fastapi")

# pydantic is allowed here (FastAPI needs it); the training stack and lineguard.config are not.
BLOCKED = ("torch", "mlflow", "sklearn", "pandas", "optuna", "onnx", "onnxscript", "lineguard.config",
           "lineguard.train", "lineguard.export", "lineguard.tracking", "lineguard.models")
REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, io, json, sys

BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked in this test: the API must not need it")
        return None

sys.meta_path.insert(0, Blocker())
import lineguard.edge.api, lineguard.edge.hotswap, lineguard.edge.serve, lineguard.edge.upload
imported_quietly = "fastapi" not in sys.modules and "prometheus_client" not in sys.modules

import numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from lineguard.edge.api import create_app
from tests.unit._api_station import make_station

station = make_station({bundle!r})
client = TestClient(create_app(station, token="k" * 32, allow_hot_swap=True))
buf = io.BytesIO()
Image.fromarray(np.full((32, 32, 3), 230, np.uint8)).save(buf, format="PNG")
resp = client.post("/v1/predict", content=buf.getvalue(), headers={{"Authorization": "Bearer " + "k" * 32}})
swap = client.post("/v1/model", json={{"path": {bundle!r}}}, headers={{"Authorization": "Bearer " + "k" * 32}})
metrics = client.get("/metrics").status_code
loaded = sorted(m for m in sys.modules if any(m == x or m.startswith(x + ".") for x in BLOCKED))
print(json.dumps({{"decision": resp.json().get("decision"), "swap": swap.status_code, "metrics": metrics,
                  "loaded": loaded, "quiet": imported_quietly}}))
"""


def test_api_runs_with_the_training_stack_blocked(tmp_path: Path) -> None:
    bundle = make_toy_bundle(tmp_path / "toy.tar.gz")
    code = SCRIPT.format(blocked=BLOCKED, bundle=str(bundle))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"decision": "reject", "swap": 200, "metrics": 200, "loaded": [], "quiet": True}


def test_the_blocker_blocks_lineguard_config() -> None:
    """The harness can fail: importing lineguard.config under it raises."""
    code = SCRIPT.split("import lineguard.edge.api")[0].format(blocked=BLOCKED, bundle="") + "import lineguard.config\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr
