"""The station API in process (Starlette's TestClient): routes, token, bounded uploads, errors, schema."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.unit._api_station import StationFixture, make_station
from tests.unit._edge_bundles import make_toy_bundle

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lineguard.edge.api import ApiLimits, create_app, openapi_schema, unguarded_write_routes  # noqa: E402

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]


def png(level: int, size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds a tiny zlib stream: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("api") / "toy")


@pytest.fixture
def station(bundle: Path) -> StationFixture:
    return make_station(bundle)


def client_for(station: StationFixture, **kwargs: Any) -> TestClient:
    return TestClient(create_app(station, token=TOKEN, **kwargs), raise_server_exceptions=False)


def assert_error(resp: Any, status: int, reason: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "reason"} and body["reason"] == reason, body
    assert "\n" not in body["error"] and body["error"]
    return body


# --- predict ------------------------------------------------------------------------------------


def test_predict_raw_body_decides_and_records(station: StationFixture) -> None:
    client = client_for(station)
    resp = client.post("/v1/predict?recipe=vanilla", content=png(230), headers={**AUTH, "Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["decision"] == "reject" and body["recipe"] == "vanilla" and body["threshold"] == pytest.approx(0.3)
    assert body["key"] == f"test:{body['frame_id']}" and body["bundle_name"] == "toy"
    rows = station.store.predictions()
    assert len(rows) == 1 and rows[0]["key"] == body["key"] and rows[0]["score"] == pytest.approx(body["score"])


def test_predict_multipart_with_recipe_field(station: StationFixture) -> None:
    client = client_for(station)
    resp = client.post("/v1/predict", files={"image": ("x.png", png(20), "image/png")}, data={"recipe": "chocolate"},
                       headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["decision"] == "accept" and resp.json()["recipe"] == "chocolate"


def test_predict_unknown_recipe_is_refused_not_defaulted(station: StationFixture) -> None:
    client = client_for(station)
    resp = client.post("/v1/predict?recipe=vanila", content=png(230), headers=AUTH)
    body = assert_error(resp, 422, "unknown_recipe")
    assert "vanilla" in body["error"] and not station.store.rows


# --- hostile uploads (R2) --------------------------------------------------------------------------


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated() -> bytes:
    data = _noise_png()
    return data[: len(data) // 2]


def _damaged() -> bytes:
    data = bytearray(_noise_png())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    return bytes(data)


HOSTILE = {
    "zero_byte": (b"", "image/png", 400, {"empty"}),
    "truncated": (_truncated(), "image/png", 400, {"truncated"}),
    "corrupt": (_damaged(), "image/png", 400, {"corrupt", "truncated"}),  # Pillow calls a broken stream truncated
    "garbage_after_signature": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "image/png", 400, {"corrupt", "truncated"}),
    "not_an_image": (b"%PDF-1.4 hello, I am a document\n" * 10, "application/octet-stream", 415, {"not_an_image"}),
    "bomb_100mp": (png_header_only(10_000, 10_000), "image/png", 413, {"too_large"}),
    "huge_41mp": (png_header_only(8_000, 5_125), "image/png", 413, {"too_large"}),
    "wrong_type": (b'{"image": 1}', "application/json", 415, {"unsupported_media_type"}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_upload_is_a_4xx_with_one_line(station: StationFixture, name: str) -> None:
    data, ctype, status, reasons = HOSTILE[name]
    client = client_for(station)
    resp = client.post("/v1/predict", content=data, headers={**AUTH, "Content-Type": ctype})
    assert resp.status_code == status and resp.json()["reason"] in reasons, resp.text
    body = assert_error(resp, status, resp.json()["reason"])
    if name != "wrong_type":
        assert body["error"].startswith("not a usable image")
    assert not station.store.rows
    ok = client.post("/v1/predict", content=png(230), headers=AUTH)  # the station still decides afterwards
    assert ok.status_code == 200


def test_upload_over_the_byte_limit_is_refused_from_its_declared_length(station: StationFixture) -> None:
    client = client_for(station, limits=ApiLimits(max_upload_bytes=10_000))
    resp = client.post("/v1/predict", content=b"\x00" * 10_001, headers=AUTH)
    assert_error(resp, 413, "too_large")


def test_streamed_upload_is_cut_off_at_the_limit(station: StationFixture) -> None:
    """A chunked body (no Content-Length) is read only up to the limit, then refused."""
    def body() -> Any:
        for _ in range(1000):
            yield b"\x00" * 4096

    client = client_for(station, limits=ApiLimits(max_upload_bytes=50_000))
    resp = client.post("/v1/predict", content=body(), headers=AUTH)
    assert_error(resp, 413, "too_large")


def test_multipart_bounds(station: StationFixture) -> None:
    client = client_for(station, limits=ApiLimits(max_upload_bytes=5_000))
    big = client.post("/v1/predict", files={"image": ("x.png", b"\x00" * 6_000, "image/png")}, headers=AUTH)
    assert_error(big, 413, "too_large")
    none = client.post("/v1/predict", files={"picture": ("x.png", png(10), "image/png")}, headers=AUTH)
    assert_error(none, 400, "no_image")
    long_field = client.post("/v1/predict", files={"image": ("x.png", png(10), "image/png")},
                             data={"recipe": "v" * 2000}, headers=AUTH)
    assert_error(long_field, 413, "too_large")
    bad = client.post("/v1/predict", content=b"--xx\r\nnot a part", headers={**AUTH,
                      "Content-Type": "multipart/form-data; boundary=xx"})
    assert bad.status_code == 400 and bad.json()["reason"] in ("bad_multipart", "no_image")
    no_boundary = client.post("/v1/predict", content=b"abc", headers={**AUTH, "Content-Type": "multipart/form-data"})
    assert_error(no_boundary, 400, "bad_multipart")


def test_busy_and_draining_answer_503(station: StationFixture) -> None:
    app = create_app(station, token=TOKEN)
    client = TestClient(app)
    intake = app.state.intake
    for _ in range(intake.max_concurrent):
        assert intake.enter() is None
    assert_error(client.post("/v1/predict", content=png(1), headers=AUTH), 503, "busy")
    for _ in range(intake.max_concurrent):
        intake.leave()
    intake.close()
    resp = client.post("/v1/predict", content=png(1), headers=AUTH)
    assert_error(resp, 503, "draining")
    assert resp.headers["retry-after"] == "1"
    assert client.get("/v1/ready").status_code == 503 and client.get("/v1/health").json()["status"] == "draining"


# --- the token (R5) ----------------------------------------------------------------------------------


def _write_requests() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("POST", "/v1/predict"): {"content": png(230)},
        ("POST", "/v1/auth"): {"json": {}},
        ("POST", "/v1/feedback"): {"json": {"prediction_id": 1, "label": "good"}},
        ("POST", "/v1/recipe"): {"json": {"recipe": "vanilla"}},
        ("POST", "/v1/model"): {"json": {"path": "/nonexistent"}},
        ("PUT", "/v1/shadow"): {"json": {"path": "/nonexistent"}},
        ("DELETE", "/v1/shadow"): {"headers": {"Content-Type": "application/json"}},
        ("POST", "/v1/shadow/promote"): {"json": {}},
    }


def test_every_write_route_needs_the_token(station: StationFixture) -> None:
    """Enumerates the app's routes: any non-GET route without the token dependency fails this test."""
    from fastapi.routing import APIRoute

    app = create_app(station, token=TOKEN, allow_hot_swap=True)
    assert unguarded_write_routes(app) == []
    writes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in set(r.methods) - {"GET", "HEAD"}}
    requests = _write_requests()
    assert writes == set(requests), f"a write route has no request in this test: {writes ^ set(requests)}"
    client = TestClient(app)
    for (method, path), kwargs in requests.items():
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            extra = kwargs.get("headers", {})
            resp = client.request(method, path, **{**kwargs, "headers": {**extra, **headers}})
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
    assert not station.store.rows and station.runtime.recipe is None and station.slot.generation == 0


def test_the_route_check_catches_an_unguarded_write_route(station: StationFixture) -> None:
    """The check above can fail: a POST route added without the token is found, and create_app refuses it."""
    app = create_app(station, token=TOKEN)

    @app.post("/v1/oops")
    def oops() -> dict[str, str]:
        return {}

    @app.delete("/v1/predictions/{pid}")
    def delete(pid: int) -> dict[str, str]:
        return {}

    assert unguarded_write_routes(app) == ["POST /v1/oops", "DELETE /v1/predictions/{pid}"]


def test_short_tokens_are_refused(station: StationFixture) -> None:
    from lineguard import LineguardError

    with pytest.raises(LineguardError, match="at least 16"):
        create_app(station, token="short")


# --- reads ----------------------------------------------------------------------------------------


def test_predictions_paged_filtered_and_images(station: StationFixture) -> None:
    client = client_for(station)
    for i, level in enumerate([230, 20, 240, 10, 250]):
        recipe = "vanilla" if i % 2 == 0 else "chocolate"
        assert client.post(f"/v1/predict?recipe={recipe}", content=png(level), headers=AUTH).status_code == 200
    page1 = client.get("/v1/predictions?limit=2").json()
    assert [r["id"] for r in page1["items"]] == [1, 2] and page1["next_after_id"] == 2
    page3 = client.get("/v1/predictions?limit=2&after_id=4").json()
    assert [r["id"] for r in page3["items"]] == [5] and page3["next_after_id"] is None
    rejects = client.get("/v1/predictions?decision=reject").json()["items"]
    assert [r["id"] for r in rejects] == [1, 3, 5] and all(r["image"] for r in rejects)
    choc = client.get("/v1/predictions?recipe=chocolate").json()["items"]
    assert {r["recipe"] for r in choc} == {"chocolate"} and len(choc) == 2
    t2 = station.store.rows[1]["time"]
    assert next(r["id"] for r in client.get(f"/v1/predictions?since={t2}").json()["items"]) == 2
    iso = "2000-01-01T00:00:00Z"
    assert client.get(f"/v1/predictions?until={iso}").json()["items"] == []
    assert_error(client.get("/v1/predictions?since=yesterday"), 422, "invalid_request")
    assert_error(client.get("/v1/predictions?decision=maybe"), 422, "invalid_request")
    assert_error(client.get("/v1/predictions?limit=100000"), 422, "invalid_request")
    assert client.get("/v1/predictions/1").json()["id"] == 1
    assert_error(client.get("/v1/predictions/99"), 404, "not_found")
    img = client.get("/v1/predictions/1/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.headers["x-content-type-options"] == "nosniff"
    assert np.asarray(Image.open(io.BytesIO(img.content))).mean() == pytest.approx(230)
    assert "no sampled image" in assert_error(client.get("/v1/predictions/2/image"), 404, "not_found")["error"]
    assert_error(client.get("/v1/predictions/0/image"), 422, "invalid_request")


def test_health_ready_and_metrics(station: StationFixture) -> None:
    client = client_for(station)
    client.post("/v1/predict?recipe=vanilla", content=png(230), headers=AUTH)
    client.post("/v1/predict", content=b"", headers=AUTH)
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model"]["name"] == "toy" and health["store"]["outbox_backlog"] == {"jsonl": 0}
    assert client.get("/v1/ready").json() == {"ready": True, "reasons": []}
    station.store.degraded.append("disk full: sampling paused")
    assert client.get("/v1/health").json()["status"] == "degraded"
    text = client.get("/metrics").text
    for line in ('lineguard_frames_total 1.0', 'lineguard_decisions_total{decision="reject",recipe="vanilla"} 1.0',
                 'lineguard_api_uploads_refused_total{reason="empty"} 1.0', 'lineguard_outbox_backlog{sink="jsonl"} 0.0',
                 'lineguard_sync_backlog{kind="records"} 0.0', 'lineguard_store_degraded 1.0', 'lineguard_queue_depth 0.0',
                 'lineguard_decision_latency_seconds_count 1.0', 'lineguard_frames_dropped_total 0.0', 'lineguard_source_connected{kind="push"} 1.0',
                 'lineguard_api_requests_total{method="POST",route="/v1/predict",status="200"} 1.0'):
        assert line in text, line
    assert 'lineguard_model_info{digest="sha256:' in text
    station.store.close()
    ready = client.get("/v1/ready")
    assert ready.status_code == 503 and "store not writable: unavailable" in ready.json()["reasons"][0]
    assert client.get("/v1/health").status_code == 200  # liveness holds while the store is gone


def test_two_apps_keep_their_own_metrics(bundle: Path) -> None:
    a, b = make_station(bundle), make_station(bundle)
    ca, cb = client_for(a), client_for(b)
    ca.post("/v1/predict", content=png(230), headers=AUTH)
    assert "lineguard_frames_total 1.0" in ca.get("/metrics").text
    assert "lineguard_frames_total 0.0" in cb.get("/metrics").text


# --- writes -------------------------------------------------------------------------------------


def test_feedback_recipe_and_model_routes(station: StationFixture) -> None:
    client = client_for(station)
    client.post("/v1/predict", content=png(230), headers=AUTH)
    ok = client.post("/v1/feedback", json={"prediction_id": 1, "label": "good", "note": "topping is there"}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["prediction_id"] == 1
    assert station.store.feedback_rows == [{"prediction_id": 1, "label": "good", "source": "operator",
                                            "note": "topping is there"}]
    assert_error(client.post("/v1/feedback", json={"prediction_id": 7, "label": "good"}, headers=AUTH), 404, "not_found")
    assert "good, bad" in assert_error(client.post("/v1/feedback", json={"prediction_id": 1, "label": "meh"},
                                                   headers=AUTH), 422, "unknown_label")["error"]
    assert_error(client.post("/v1/feedback", json={"prediction_id": 1, "label": "good", "x": 1}, headers=AUTH),
                 422, "invalid_request")
    assert client.post("/v1/recipe", json={"recipe": "chocolate"}, headers=AUTH).json()["recipe"] == "chocolate"
    assert client.get("/v1/recipe").json() == {"recipe": "chocolate", "known": ["vanilla", "chocolate"]}
    assert client.post("/v1/predict", content=png(230), headers=AUTH).json()["recipe"] == "chocolate"
    assert_error(client.post("/v1/recipe", json={"recipe": "mint"}, headers=AUTH), 422, "unknown_recipe")
    assert_error(client.post("/v1/recipe", json={"recipe": "a\nb"}, headers=AUTH), 422, "invalid_request")
    assert client.get("/v1/model").json()["version"] == "1"
    body = assert_error(client.post("/v1/model", json={"path": "/x"}, headers=AUTH), 403, "hot_swap_disabled")
    assert "--allow-hot-swap" in body["error"]


def test_unknown_routes_and_methods_are_json(station: StationFixture) -> None:
    client = client_for(station)
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.delete("/v1/predict", headers=AUTH), 405, "method_not_allowed")
    index = client.get("/")  # the dashboard (lineguard/dashboard/index.html ships in the package)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert client.get("/docs").status_code == 404  # no Swagger UI: it would load from a CDN


def test_a_bug_in_the_station_is_a_500_and_the_app_goes_on(station: StationFixture) -> None:
    client = client_for(station)

    def broken(**kwargs: Any) -> list[dict[str, Any]]:
        raise RuntimeError("disk on fire")

    station.store.predictions = broken  # type: ignore[method-assign]
    assert_error(client.get("/v1/predictions"), 500, "internal")
    assert client.post("/v1/predict", content=png(230), headers=AUTH).status_code == 200


def test_allowed_hosts_refuse_other_host_headers(station: StationFixture) -> None:
    client = client_for(station, allowed_hosts=["127.0.0.1", "localhost"])
    assert client.get("/v1/health", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    assert client.get("/v1/health", headers={"Host": "evil.example:8080"}).status_code == 400


# --- the committed schema -------------------------------------------------------------------------


def test_openapi_schema_is_committed_and_current() -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    current = json.loads(json.dumps(openapi_schema()))
    assert current == committed, ("docs/openapi.json is out of date; regenerate it with "
                                  "`PYTHONPATH=src python -m lineguard.edge.api docs/openapi.json`")
    assert "bearerAuth" in json.dumps(committed) or "HTTPBearer" in json.dumps(committed)
