"""What the dashboard needs from the API, in process (TestClient) over the real SQLite store: the page guard
(Origin, JSON-only writes, CSP and the other headers), the token check, thumbnails, and GET /v1/summary
(counts per recipe and shift, histogram against the reference, KPIs, estimate, feedback, drift with a real
Monitor, ETag and incremental reads); plus static checks of the shipped page (no inline script or style, no
HTML built from strings)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.unit._edge_bundles import make_toy_bundle

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lineguard.edge.api import DASHBOARD_DIR, create_app  # noqa: E402
from lineguard.edge.hotswap import ModelSlot  # noqa: E402
from lineguard.edge.store import Store  # noqa: E402
from lineguard.edge.summary import DashboardSummary  # noqa: E402
from tests.unit._dash_station import DashStation, PushRuntime, grey_reference  # noqa: E402

TOKEN = "d" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "127.0.0.1:8080"


def png(level: int, size: tuple[int, int] = (32, 32), noise: float = 0.0, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(level, noise, (*size, 3)) if noise else np.full((*size, 3), level), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("dash") / "toy")


def make(tmp: Path, bundle: Path, monitor: Any = None) -> DashStation:
    slot = ModelSlot.open(bundle)
    store = Store(tmp / "edge.db", min_free_bytes=0)
    return DashStation("line1", store, PushRuntime(slot, store, "line1", monitor), slot, monitor)


def client(station: DashStation, **kwargs: Any) -> TestClient:
    return TestClient(create_app(station, token=TOKEN, **kwargs), base_url=f"http://{HOST}")


def push(c: TestClient, level: int, recipe: str = "vanilla", **kw: Any) -> dict[str, Any]:
    r = c.post(f"/v1/predict?recipe={recipe}", content=png(level, **kw), headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


# --- the page guard ---------------------------------------------------------------------------------


def test_every_answer_carries_a_strict_policy(tmp_path: Path, bundle: Path) -> None:
    c = client(make(tmp_path, bundle))
    for path in ("/", "/app.js", "/style.css", "/v1/health", "/v1/summary", "/v1/predictions/99/image"):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    assert c.get("/").headers["content-type"].startswith("text/html")
    assert c.get("/app.js").headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert c.get("/").headers["cache-control"] == "no-cache"  # revalidated: an upgrade's new page is seen
    assert c.get("/v1/health").headers["cache-control"] == "no-store"


def test_a_write_from_another_origin_is_refused_even_with_the_token(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    body = {"recipe": "chocolate"}
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "file://", "http://127.0.0.1:8080.evil"):
        r = c.post("/v1/recipe", json=body, headers={**AUTH, "Origin": origin})
        assert r.status_code == 403 and r.json()["reason"] == "cross_origin", (origin, r.text)
        assert "\n" not in r.json()["error"]
    r = c.post("/v1/predict", content=png(230), headers={**AUTH, "Origin": "http://evil.example"})
    assert r.status_code == 403
    assert station.runtime.recipe is None and station.store.predictions() == []
    assert c.post("/v1/recipe", json=body, headers={**AUTH, "Origin": f"http://{HOST}"}).status_code == 200
    assert c.post("/v1/recipe", json={"recipe": "vanilla"}, headers=AUTH).status_code == 200  # curl: no Origin
    assert station.runtime.recipe == "vanilla"
    # reads are not refused for their Origin (the browser keeps their answers from the other page: no CORS)
    r = c.get("/v1/summary", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_writes_are_json_only_so_no_html_form_can_make_one(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    for kind, content in (("text/plain", '{"recipe": "chocolate"}'), ("application/x-www-form-urlencoded", "recipe=chocolate"),
                          ("multipart/form-data; boundary=x", "--x--"), ("", '{"recipe": "chocolate"}')):
        headers = {**AUTH, "Content-Type": kind} if kind else AUTH
        r = c.post("/v1/recipe", content=content, headers=headers)
        assert r.status_code == 415 and r.json()["reason"] == "unsupported_media_type", (kind, r.text)
    assert station.runtime.recipe is None
    r = c.post("/v1/recipe", content='{"recipe": "chocolate"}', headers={**AUTH, "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and station.runtime.recipe == "chocolate"


def test_the_login_checks_the_token_and_changes_nothing(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    assert c.post("/v1/auth", json={}, headers=AUTH).json() == {"ok": True, "station": "line1"}
    for headers in ({}, {"Authorization": "Bearer " + "x" * 40}):
        r = c.post("/v1/auth", json={}, headers=headers)
        assert r.status_code == 401 and r.json()["reason"] == "unauthorized"
    assert c.post("/v1/auth", json={"token": TOKEN}, headers=AUTH).status_code == 422  # never in the body


def test_thumbnails_are_scaled_down_pngs(tmp_path: Path, bundle: Path) -> None:
    c = client(make(tmp_path, bundle))
    rec = c.get("/v1/predictions").json()["items"] or None
    assert rec is None
    push(c, 230, size=(300, 400))
    pid = c.get("/v1/predictions").json()["items"][0]["id"]
    full = Image.open(io.BytesIO(c.get(f"/v1/predictions/{pid}/image").content))
    thumb = c.get(f"/v1/predictions/{pid}/image?thumb=100")
    assert thumb.headers["content-type"] == "image/png"
    small = Image.open(io.BytesIO(thumb.content))
    assert full.size == (400, 300) and max(small.size) == 100
    assert c.get(f"/v1/predictions/{pid}/image?thumb=2").status_code == 422


# --- the summary --------------------------------------------------------------------------------------


def test_summary_counts_histogram_kpis_and_etag(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    empty = c.get("/v1/summary").json()
    assert empty["counts"]["inspected"] == 0 and not empty["kpi"]["available"] and not empty["estimate"]["available"]
    assert not empty["drift"]["available"] and empty["drift"]["alarms"] == [] and not empty["shadow"]["available"]
    recs = [push(c, lv, recipe) for lv, recipe in [(20, "vanilla"), (230, "vanilla"), (200, "chocolate"), (60, "chocolate"),
                                                    (240, "vanilla"), (90, "vanilla"), (128, "chocolate")] * 3]
    r = c.get("/v1/summary")
    s = r.json()
    assert s["counts"]["inspected"] == len(recs) and s["last_id"] == len(recs)
    for recipe in ("vanilla", "chocolate"):
        mine = [x for x in recs if x["recipe"] == recipe]
        row = next(p for p in s["counts"]["per_recipe"] if p["recipe"] == recipe)
        assert row["inspected"] == len(mine) and row["rejected"] == sum(x["decision"] == "reject" for x in mine)
    assert sum(p["inspected"] for p in s["counts"]["per_shift"]) == len(recs)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d", s["counts"]["per_shift"][0]["shift"])
    assert sum(s["scores"]["counts"]) == len(recs) and len(s["scores"]["edges"]) == len(s["scores"]["counts"]) + 1
    assert s["scores"]["reference"]["available"] and sum(s["scores"]["reference"]["counts"]) == 10  # the toy's val split
    total = s["kpi"]["total"]
    assert total["expected_escapes"] == pytest.approx(sum(x["score"] for x in recs if x["decision"] == "accept"))
    assert total["expected_false_rejects"] == pytest.approx(sum(1 - x["score"] for x in recs if x["decision"] == "reject"))
    assert s["kpi"]["cost"] == {"false_reject": 1.0, "missed_defect": 1.0}
    assert s["estimate"]["available"] and s["estimate"]["trustworthy"] and 0 <= s["estimate"]["balanced_accuracy"] <= 1
    assert s["model"]["positive_class"] == "bad" and s["model"]["negative_class"] == "good"
    # the image statistics of every record are the signals over time, with no monitor: no alarms, no thresholds
    names = {sig["name"] for sig in s["drift"]["signals"]}
    assert {"brightness", "contrast", "haze"} <= names
    assert all("threshold" not in sig for sig in s["drift"]["signals"])
    etag = r.headers["etag"]
    again = c.get("/v1/summary", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag


def test_summary_reads_only_the_new_rows(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    for lv in range(0, 250, 10):
        push(c, lv)
    seen: list[int] = []
    real = station.store.predictions

    def counting(**kw: Any) -> list[dict[str, Any]]:
        rows = real(**kw)
        seen.extend(r["id"] for r in rows)
        return rows

    station.store.predictions = counting  # type: ignore[method-assign]
    summary = DashboardSummary(station)
    assert summary.snapshot()["counts"]["inspected"] == 25 and len(seen) == 25
    push(c, 240)
    push(c, 10)
    seen.clear()
    s = summary.snapshot()
    assert s["counts"]["inspected"] == 27 and sorted(seen) == [26, 27]  # only the two new rows were read


def test_summary_pages_a_large_backlog_over_several_refreshes(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    for lv in range(0, 250, 10):
        push(c, lv)
    summary = DashboardSummary(station, page=5, max_rows_per_refresh=10)
    first = summary.snapshot()
    assert first["rows"] == 10 and not first["complete"]
    assert [summary.snapshot()["rows"] for _ in range(2)] == [20, 25] and summary.snapshot()["complete"]


def test_feedback_is_measured_beside_the_estimate(tmp_path: Path, bundle: Path) -> None:
    station = make(tmp_path, bundle)
    c = client(station)
    recs = [push(c, lv) for lv in (20, 40, 230, 250, 60, 210)]
    s = c.get("/v1/summary").json()
    assert not s["feedback"]["available"] and s["feedback"]["reason"] == "no operator feedback yet"
    ids = [x["id"] for x in c.get("/v1/predictions").json()["items"]]
    # the operator agrees with 4 decisions and says two passes were defects (escapes)
    truth = ["bad", "bad", "bad", "bad", "good", "bad"]
    for pid, label in zip(ids, truth, strict=True):
        r = c.post("/v1/feedback", json={"prediction_id": pid, "label": label}, headers=AUTH)
        assert r.status_code == 200, r.text
    fb = c.get("/v1/summary").json()["feedback"]
    assert fb["available"] and fb["n"] == 6 and sorted(fb["labelled"]) == sorted(ids)
    rejected = [x["decision"] == "reject" for x in recs]
    defect = [t == "bad" for t in truth]
    assert fb["agree"] == sum(r == d for r, d in zip(rejected, defect, strict=True))
    m = fb["measured"]
    tp = sum(r and d for r, d in zip(rejected, defect, strict=True))
    fn = sum((not r) and d for r, d in zip(rejected, defect, strict=True))
    assert m["escape_rate"] == pytest.approx(fn / (tp + fn))
    assert fb["estimated"]["n"] == 6 and "concept_drift" in fb
    kpi = c.get("/v1/summary").json()["kpi"]["total"]
    assert kpi["feedback"] == 6 and kpi["counted_escapes"] == fn


def test_drift_alarms_with_a_real_monitor_point_at_a_kept_frame(tmp_path: Path, bundle: Path) -> None:
    from lineguard.monitor import Monitor

    monitor = Monitor(grey_reference(), arl0=10_000.0)
    station = make(tmp_path, bundle, monitor)
    c = client(station, summary=DashboardSummary(station))
    rng = np.random.default_rng(1)
    for i in range(60):
        push(c, int(rng.integers(60, 200)), noise=12, seed=i)
    quiet = c.get("/v1/summary").json()
    assert quiet["drift"]["available"] and quiet["drift"]["in_distribution"] and quiet["drift"]["alarms"] == []
    assert quiet["estimate"]["trustworthy"]
    for i in range(40):  # a washed-out, over-lit camera: every frame near white
        push(c, 248, noise=3, seed=100 + i)
    s = c.get("/v1/summary").json()
    d = s["drift"]
    assert not d["in_distribution"] and d["alarms"], d
    active = [a for a in d["alarms"] if a["active"]]
    assert active and all(a["firings"] >= 1 for a in d["alarms"])
    assert len({(a["signal"], a["direction"]) for a in d["alarms"]}) == len(d["alarms"])  # one per signal and way
    pid = active[0]["prediction_id"]
    assert pid is not None and c.get(f"/v1/predictions/{pid}").json()["image"]
    assert c.get(f"/v1/predictions/{pid}").json()["time"] >= active[0]["time"]
    assert c.get(f"/v1/predictions/{pid}/image").status_code == 200
    sig = next(x for x in d["signals"] if x["name"] == active[0]["signal"])
    assert sig["threshold"] == 1.0 and sig["level"] is not None and sig["levels"] and sig["h"] > 0
    assert d["signals"][0]["name"] in {a["signal"] for a in active}  # alarming signals first
    assert not s["estimate"]["trustworthy"] and "drift" in s["estimate"]["reason"]


def test_the_estimate_reweights_to_the_line_defect_share_when_the_reference_knows_the_training_one(
        tmp_path: Path, bundle: Path) -> None:
    import dataclasses

    from lineguard.monitor import Monitor
    from lineguard.monitor.estimate import cbpe

    monitor = Monitor(dataclasses.replace(grey_reference(), prior=0.3), arl0=10_000.0)
    station = make(tmp_path, bundle, monitor)
    c = client(station, summary=DashboardSummary(station))
    rng = np.random.default_rng(2)
    recipes = ["vanilla", "chocolate"]
    recs = [push(c, int(rng.integers(60, 200)), recipes[i % 2], noise=12, seed=i) for i in range(40)]
    est = c.get("/v1/summary").json()["estimate"]
    scores = np.array([r["score"] for r in recs])
    rejected = np.array([r["decision"] == "reject" for r in recs])
    want = cbpe(scores, rejected, draws=200, train_prior=0.3, adjust_prior=True)
    assert est["extra"]["adjusted_prior"] == pytest.approx(want.extra["adjusted_prior"])
    assert est["balanced_accuracy"] == pytest.approx(want.balanced_accuracy)
    # per recipe: each re-weighted to its own defect share, not the line's overall one
    by_recipe = {e["recipe"]: e for e in est["per_recipe"]}
    assert set(by_recipe) == set(recipes)
    for k, recipe in enumerate(recipes):
        idx = np.arange(k, 40, 2)
        own = cbpe(scores[idx], rejected[idx], draws=200, train_prior=0.3, adjust_prior=True)
        assert by_recipe[recipe]["adjusted_prior"] == pytest.approx(own.extra["adjusted_prior"])
        assert by_recipe[recipe]["balanced_accuracy"] == pytest.approx(own.balanced_accuracy)
    # no training share in the reference (a station without a monitor): the scores as they are
    plain = make(tmp_path / "plain", bundle)
    cp = client(plain, summary=DashboardSummary(plain))
    for i in range(12):
        push(cp, 100 + i, seed=i)
    assert "adjusted_prior" not in cp.get("/v1/summary").json()["estimate"]["extra"]


# --- the shipped page ---------------------------------------------------------------------------------


def test_the_page_has_no_inline_script_or_style_and_builds_no_html_from_strings() -> None:
    html = (DASHBOARD_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"<style\b", html, re.I)
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handlers
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", html, re.I)  # nothing from another host
    for js in sorted(DASHBOARD_DIR.glob("*.js")):
        code = "\n".join(line for line in js.read_text().splitlines() if not line.lstrip().startswith("//"))
        code = code.replace('"http://www.w3.org/2000/svg"', "SVG_NS")  # a namespace name, not a URL
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                       "setAttribute(\"style\"", "localStorage", "http://", "https://"):
            assert banned not in code, f"{js.name} uses {banned}"
    for css in DASHBOARD_DIR.glob("*.css"):
        assert not re.search(r"url\(|@import", css.read_text()), f"{css.name} loads something"
    shipped = {p.name for p in DASHBOARD_DIR.iterdir()}
    assert shipped == {"index.html", "app.js", "charts.js", "style.css", "favicon.svg"}  # no .py served as a file
