"""The station API's shadow routes over a real station (store, runtime, model slot, shadow slot, as `lineguard serve`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lineguard.edge.station import load_station_config
from tests.unit._api_station import make_station
from tests.unit._edge_bundles import make_champion_and_challenger

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lineguard.edge.api import ApiLimits, create_app  # noqa: E402
from lineguard.edge.serve import ServedStation, open_served  # noqa: E402

TOKEN = "s" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_champion_and_challenger(tmp_path_factory.mktemp("shadow-api"))


def _served(bundles: dict[str, Path], tmp_path: Path, **shadow: Any) -> Iterator[ServedStation]:
    """The station opened as `lineguard serve` opens it (its model in a slot whose swaps switch the runtime)."""
    config = load_station_config(
        None,
        {
            "station": "cell-1",
            "bundle": str(bundles["champion"]),
            "monitor": False,
            "store.path": str(tmp_path / "e.db"),
            "shadow": shadow,
        },
    )
    served, station = open_served(config)
    try:
        yield served
    finally:
        station.close()


@pytest.fixture
def served(bundles: dict[str, Path], tmp_path: Path) -> Iterator[ServedStation]:
    yield from _served(bundles, tmp_path)


def client_for(station: Any, **kwargs: Any) -> TestClient:
    return TestClient(create_app(station, token=TOKEN, **kwargs), raise_server_exceptions=False)


def png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def assert_error(resp: Any, status: int, reason: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "reason"} and body["reason"] == reason, body
    assert "\n" not in body["error"] and body["error"]
    return str(body["error"])


def test_install_compare_and_remove_a_challenger(served: ServedStation, bundles: dict[str, Path]) -> None:
    client = client_for(served)
    idle = client.get("/v1/shadow").json()
    assert idle["running"] is False and idle["enabled"] is True and "PUT /v1/shadow" in idle["reason"]
    resp = client.put("/v1/shadow", json={"path": str(bundles["challenger"])}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["running"] and resp.json()["challenger"]["version"] == "2"
    for level in (50, 200, 250, 200):
        r = client.post("/v1/predict", content=png(level), headers={**AUTH, "Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["bundle_version"] == "1"  # the champion decides
    assert served.shadow is not None and served.shadow.drain(30)
    status = client.get("/v1/shadow").json()
    assert status["frames_compared"] == 4 and status["disagreements"] == 2 and status["agreement"] == 0.5
    summary = client.get("/v1/summary").json()["shadow"]
    assert summary["available"] and summary["frames_compared"] == 4
    disagreeing = [r["prediction_id"] for r in served.store.shadow_rows(disagreements_only=True)]
    assert len(disagreeing) == 2
    assert client.get(f"/v1/predictions/{disagreeing[0]}/image").status_code == 200  # kept for labelling

    gone = client.delete("/v1/shadow", headers=JSON)
    assert gone.status_code == 200 and gone.json()["running"] is False and gone.json()["frames_compared"] == 4
    assert client.get("/v1/shadow").json()["running"] is False
    assert not client.get("/v1/summary").json()["shadow"]["available"]
    assert_error(client.delete("/v1/shadow", headers=JSON), 404, "not_found")


def test_an_uploaded_archive_runs_in_shadow(served: ServedStation, bundles: dict[str, Path]) -> None:
    client = client_for(served)
    data = bundles["archive"].read_bytes()
    resp = client.put("/v1/shadow", content=data, headers={**AUTH, "Content-Type": "application/gzip"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["challenger"]["version"] == "2"
    digest = resp.json()["challenger"]["digest"]
    pinned = client.put(
        f"/v1/shadow?digest={digest}", content=data, headers={**AUTH, "Content-Type": "application/gzip"}
    )
    assert pinned.status_code == 200, pinned.text
    wrong = client.put(
        "/v1/shadow?digest=sha256:" + "0" * 64,
        content=data,
        headers={**AUTH, "Content-Type": "application/gzip"},
    )
    assert "digest" in assert_error(wrong, 422, "shadow_refused")
    assert served.shadow is not None and served.shadow.bundle.digest == digest  # still the one before


@pytest.mark.parametrize(
    ("kwargs", "status", "reason", "says"),
    [
        ({"json": {"path": "/no/such/bundle"}}, 422, "shadow_refused", "does not exist"),
        ({"json": {}}, 422, "invalid_request", "path"),
        ({"json": {"path": "x", "colour": "red"}}, 422, "invalid_request", "colour"),
        ({"json": {"path": "x", "digest": "md5:abc"}}, 422, "invalid_request", "digest"),
        (
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "invalid_request",
            "path",
        ),
        (
            {"content": b"path=x", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
            "gzip",
        ),
        ({"content": b"", "headers": {"Content-Type": "application/gzip"}}, 400, "empty", "empty"),
        (
            {"content": b"\x1f\x8b not really a tar", "headers": {"Content-Type": "application/gzip"}},
            422,
            "shadow_refused",
            "tar",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx(
    served: ServedStation, kwargs: dict[str, Any], status: int, reason: str, says: str
) -> None:
    client = client_for(served)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    message = assert_error(client.put("/v1/shadow", headers=headers, **kwargs), status, reason)
    assert says in message
    assert client.get("/v1/shadow").json()["running"] is False
    assert served.shadow_slot is not None and not list(
        served.shadow_slot.upload_dir.glob("*")
    )  # no file left


def test_an_upload_over_the_limit_is_refused(served: ServedStation, bundles: dict[str, Path]) -> None:
    client = client_for(served, limits=ApiLimits(max_bundle_bytes=1000))
    data = bundles["archive"].read_bytes()
    assert len(data) > 1000
    msg = assert_error(
        client.put("/v1/shadow", content=data, headers={**AUTH, "Content-Type": "application/gzip"}),
        413,
        "too_large",
    )
    assert "PUT its path" in msg

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        yield from (data[i : i + 500] for i in range(0, len(data), 500))

    resp = client.put("/v1/shadow", content=chunked(), headers={**AUTH, "Content-Type": "application/gzip"})
    assert_error(resp, 413, "too_large")
    assert served.shadow_slot is not None and not list(served.shadow_slot.upload_dir.glob("*"))


def test_promotion_is_a_hot_swap(served: ServedStation, bundles: dict[str, Path]) -> None:
    off = client_for(served)
    assert_error(off.post("/v1/shadow/promote", headers=JSON), 403, "hot_swap_disabled")
    client = client_for(served, allow_hot_swap=True)
    assert_error(client.post("/v1/shadow/promote", headers=JSON), 409, "no_challenger")
    assert (
        client.put("/v1/shadow", json={"path": str(bundles["challenger"])}, headers=AUTH).status_code == 200
    )
    resp = client.post("/v1/shadow/promote", headers=JSON)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["version"] == "2" and body["shadow"]["running"] is False
    assert client.get("/v1/model").json()["version"] == "2"
    decided = client.post(
        "/v1/predict", content=png(200), headers={**AUTH, "Content-Type": "image/png"}
    ).json()
    assert (
        decided["bundle_version"] == "2" and decided["decision"] == "accept"
    )  # the challenger's threshold now
    assert client.get("/v1/shadow").json()["running"] is False


def test_shadow_mode_turned_off_refuses_installs(bundles: dict[str, Path], tmp_path: Path) -> None:
    for station in _served(bundles, tmp_path, enabled=False):
        client = client_for(station)
        assert client.get("/v1/shadow").json()["enabled"] is False
        msg = assert_error(
            client.put("/v1/shadow", json={"path": str(bundles["challenger"])}, headers=AUTH),
            403,
            "shadow_disabled",
        )
        assert "shadow.enabled" in msg
        assert_error(
            client.put(
                "/v1/shadow",
                content=bundles["archive"].read_bytes(),
                headers={**AUTH, "Content-Type": "application/gzip"},
            ),
            403,
            "shadow_disabled",
        )


def test_a_station_without_a_shadow_slot_says_so(bundles: dict[str, Path]) -> None:
    client = client_for(make_station(bundles["champion"]))
    body = client.get("/v1/shadow").json()
    assert body["enabled"] is False and body["running"] is False and "without a shadow slot" in body["reason"]
    assert_error(
        client.put("/v1/shadow", json={"path": str(bundles["challenger"])}, headers=AUTH),
        409,
        "shadow_unavailable",
    )
