"""GET /v1/summary's ``outputs`` section: the current model's recent scores and reject rate per recipe against
the bundle's validation scores and against the previous model's decisions on the same line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.store import PredictionRecord, Store
from tests.unit._dash_station import DashStation, PushRuntime
from tests.unit._edge_bundles import make_toy_bundle, rewrite_meta

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lineguard.edge.api import create_app  # noqa: E402

T0 = time.time() - 3600.0  # within the summary's lookback of a day


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("outputs")
    v1 = make_toy_bundle(d / "v1")
    v2 = d / "v2"
    shutil.copytree(v1, v2)

    def to_v2(meta: dict[str, Any]) -> None:
        meta["version"] = "2"

    rewrite_meta(v2, to_v2)
    return {"v1": v1, "v2": v2}


def _write(
    store: Store,
    scores: np.ndarray,
    version: str,
    start: int,
    recipe: str = "vanilla",
    threshold: float = 0.3,
) -> None:
    recs = [
        (
            PredictionRecord(
                f"f{start + i}",
                T0 + start + i,
                "line1",
                "test",
                recipe,
                "bad" if s >= threshold else "good",
                float(s),
                "reject" if s >= threshold else "accept",
                threshold,
                "toy",
                version,
                1.0,
            ),
            None,
        )
        for i, s in enumerate(scores)
    ]
    store.record_many(recs)


def test_the_summary_compares_the_new_model_with_the_previous_one(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    slot = ModelSlot.open(bundles["v1"])
    store = Store(tmp_path / "edge.db", min_free_bytes=0)
    station = DashStation("line1", store, PushRuntime(slot, store, "line1"), slot)
    client = TestClient(create_app(station, token="o" * 40), base_url="http://127.0.0.1:8080")
    rng = np.random.default_rng(0)
    try:
        _write(store, rng.beta(2, 12, 400), "1", 0)
        first = client.get("/v1/summary").json()["outputs"]
        assert first["available"] and first["previous_version"] is None
        row = first["per_recipe"][0]
        assert row["recipe"] == "vanilla" and row["n"] == 400 and "previous" not in row
        # the toy bundle ships 10 validation scores: too few to compare with
        assert row["reference"]["verdict"] == "not enough data"

        slot.swap(bundles["v2"])
        _write(store, rng.beta(2, 12, 400), "2", 400)
        same = client.get("/v1/summary").json()["outputs"]
        assert same["current_version"] == "2" and same["previous_version"] == "1"
        assert same["per_recipe"][0]["previous"]["verdict"] == "stable", same["per_recipe"][0]["previous"][
            "message"
        ]

        _write(store, rng.beta(6, 8, 600), "2", 800)  # the new model scores the line far higher
        moved = client.get("/v1/summary").json()["outputs"]
        prev = moved["per_recipe"][0]["previous"]
        assert prev["verdict"] == "shifted" and prev["reject_rate"]["verdict"] == "higher", prev["message"]
        assert moved["verdict"] == "shifted" and "version 1" in prev["message"]
    finally:
        store.close()
