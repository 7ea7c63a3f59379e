"""``lineguard monitor report`` over a real store filled by a test: clean synthetic cones, then a dirty lens,
operator feedback (some of it contradicting the decisions), hostile names; the bundle's calibrated monitoring
reference replays the drift detectors. Every section renders, with data or with an explicit "no data"."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from lineguard.edge import load_bundle
from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.store import PredictionRecord, ShadowResult, Store
from lineguard.monitor import MonitorError
from lineguard.monitor.report import read_store, render_report, write_report
from tests.unit._dash_station import PushRuntime, cone_frame, make_monitor_bundle

pytestmark = pytest.mark.slow
HOSTILE = "<script>alert(1)</script>"
HOSTILE_VERSION = "<img src=x onerror=alert(1)>"
SECTIONS = ("1. Signals over time", "2. Reject rate per recipe", "3. Estimated vs feedback accuracy",
            "4. Shadow agreement", "5. Drifted and disputed frames", "6. KPIs per shift and per bundle version",
            "7. Model outputs against the reference and the previous model")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("report")
    bundle = make_monitor_bundle(tmp / "toy")
    slot = ModelSlot.open(bundle)
    store = Store(tmp / "edge.db", min_free_bytes=0)
    rt = PushRuntime(slot, store, "line1")
    recs = []
    for i in range(240):  # clean, rendered at the size of the reference's cones (make_monitor_bundle)
        recipe = ("vanilla_sprinkles", "chocolate_nuts")[i % 2]
        recs.append(rt.submit(cone_frame(i, recipe), recipe).to_dict())
    for i in range(240, 360):  # a dirty lens from frame 240
        recipe = ("vanilla_sprinkles", "chocolate_nuts")[i % 2]
        recs.append(rt.submit(cone_frame(i, recipe, drift="dirty-lens", severity=0.9), recipe).to_dict())
    rows = store.predictions(limit=10_000)
    kept = [r for r in rows if r["image"]]
    for j, r in enumerate(kept[:30]):  # feedback: agree on most, contradict every fifth
        agree = j % 5 != 0
        defect = (r["decision"] == "reject") == agree
        store.add_feedback(r["id"], "bad" if defect else "good")
    t = time.time()
    store.record(PredictionRecord("hostile-1", t, "line1", f"file:/in/{HOSTILE}.png", HOSTILE, "bad", 0.9, "reject", 0.45,
                                  "toy", HOSTILE_VERSION, 1.0, {"brightness": 100.0}))
    store.close()
    return tmp / "edge.db", bundle, recs


def test_every_section_renders_with_data_and_names_escaped(filled: tuple[Path, Path, list[dict[str, Any]]],
                                                           tmp_path: Path) -> None:
    db, bundle, _recs = filled
    out = write_report(db, tmp_path / "r" / "report.html", bundle=load_bundle(bundle, False), window=100)
    page = out.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    # 1: signals with thresholds, and the dirty lens found after it started (frame 240) and not before
    alarms = re.findall(r"<tr><td>(\w+)</td><td>(up|down)</td><td>[^<]*</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>", page)
    assert len(alarms) >= 3, "the dirty lens raised no (or too few) drift alarms"
    assert all(int(at) >= 240 for _, _, _, at, _ in alarms)  # nothing before the lens got dirty
    assert {"sharpness", "contrast"} <= {signal for signal, way, *_ in alarms if way == "down"}
    assert page.count("alarm threshold") >= 5
    assert "CUSUM level" in page
    # 2: reject rates per recipe, both recipes and the hostile one
    assert "vanilla_sprinkles" in page and "chocolate_nuts" in page
    # 3: estimate beside the feedback
    assert "measured on feedback" in page and "estimated (CBPE)" in page and "not trustworthy" in page
    # 4: no shadow table yet: says so
    assert "no challenger model ran in shadow" in page
    # 5: thumbnails at the alarms and of the disputed frames
    frames = page.split("<h2>5. Drifted and disputed frames</h2>")[1].split("<h2>6.")[0]
    at_alarms, disputed = frames.split("<h3>Disputed by feedback</h3>")
    assert at_alarms.count("data:image/png;base64,") >= 1 and disputed.count("data:image/png;base64,") == 6
    assert "operator: " in disputed
    # 6: KPIs per shift and per bundle version, priced by the bundle's cost matrix
    kpis = page.split("<h2>6. KPIs")[1]
    assert re.search(r"<td>\d{4}-\d\d-\d\d/\d\d-\d\d</td><td>361</td>", kpis)  # per shift: every decision
    per_version = kpis.split("<h3>per bundle version</h3>")[1].split("<h3>per recipe</h3>")[0]
    assert "<td>2</td><td>360</td>" in per_version and "Cost matrix of the bundle" in kpis
    counted = re.search(r"<td>2</td><td>360</td>(?:<td>[^<]*</td>){4}<td>[^<]*</td><td>30</td><td>(\d+)</td><td>(\d+)</td>",
                        per_version)
    assert counted and int(counted.group(1)) + int(counted.group(2)) == 6  # the six contradicted decisions
    # self-contained and escaped
    assert not re.search(r"<(script|link|iframe|object)\b", page, re.I)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page, re.I)
    assert HOSTILE not in page and HOSTILE_VERSION not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_without_the_bundle_each_section_says_what_it_lacks(filled: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    db, _, _ = filled
    page = render_report(read_store(db))
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "pass --bundle to replay the drift detectors" in page and "Costs are 1 per error" in page
    assert "CUSUM level" not in page and "value per frame" in page


def test_since_selects_and_an_empty_range_renders_no_data(filled: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    db, _, recs = filled
    part = read_store(db, since=recs[300]["time"])
    assert part.n == 61 and part.ids[0] == 301
    empty = render_report(read_store(db, since=time.time() + 3600))
    assert empty.count("no data") >= 6


def test_a_shadow_table_is_read_when_the_store_has_one(filled: tuple[Path, Path, list[dict[str, Any]]],
                                                       tmp_path: Path) -> None:
    db, _, _ = filled
    copy = tmp_path / "edge.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with Store(copy, min_free_bytes=0) as store:  # what a challenger in shadow writes (lineguard.edge.shadow)
        store.record_shadow([(ShadowResult(i, "toy:3", 0.5, "accept", i % 4 != 0, time.time()), None)
                             for i in range(1, 201)])
    shadow = render_report(read_store(copy)).split("<h2>4. Shadow agreement</h2>")[1].split("<h2>5.")[0]
    assert "<td>toy:3</td><td>200</td><td>75.0 %</td><td>50</td>" in shadow and "<svg" in shadow


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="no store at"):
        read_store(tmp_path / "missing.db")
    (tmp_path / "x.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(MonitorError, match="not a readable LineGuard store"):
        read_store(tmp_path / "x.db")
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(MonitorError, match="no predictions table"):
        read_store(tmp_path / "other.db")


def test_the_cli_writes_the_report(filled: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    import subprocess
    import sys

    db, bundle, _ = filled
    out = tmp_path / "report.html"
    run = subprocess.run([sys.executable, "-m", "lineguard.cli", "monitor", "report", "--store", str(db), "--out", str(out),
                          "--bundle", str(bundle), "--since", "2000-01-01T00:00:00Z"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout and "<h2>6. KPIs" in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "lineguard.cli", "monitor", "report", "--store", str(db), "--since",
                          "yesterday"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--since 'yesterday' is neither" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_output_section_compares_the_new_version_with_the_previous_one(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    t = time.time() - 3600
    with Store(tmp_path / "edge.db", min_free_bytes=0) as store:
        for version, scores in (("1", rng.beta(2, 12, 300)), ("2", rng.beta(6, 8, 300))):  # version 2 scores higher
            store.record_many([(PredictionRecord(f"{version}-{i}", t + i, "line1", "test", "vanilla",
                                                 "bad" if s >= 0.5 else "good", float(s),
                                                 "reject" if s >= 0.5 else "accept", 0.5, "toy", version, 1.0), None)
                               for i, s in enumerate(scores)])
            t += 1000
    page = render_report(read_store(tmp_path / "edge.db"), window=200)
    section = page.split("<h2>7. Model outputs against the reference and the previous model</h2>")[1]
    assert "version <code>2</code>" in section and "version <code>1</code>" in section
    assert "Overall: <b>shifted</b>" in section and "Pass --bundle" in section
    assert "<td>vanilla</td><td>200</td>" in section and "HIGHER than" in section and "<svg" in section
