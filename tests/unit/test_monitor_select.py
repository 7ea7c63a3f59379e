"""``lineguard monitor select`` over real stores written by the edge's :class:`~lineguard.edge.store.Store`:
disagreements first, low confidence ranked by closeness, drift flagged by the replayed monitor, picks kept
diverse and under quota, deterministic, written as Label Studio tasks that come back as a labels CSV."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from lineguard.edge.store import PredictionRecord, SamplePolicy, ShadowResult, Store
from lineguard.labelstudio import SELECTION_COLUMNS, LabelStudioError, import_export, write_selection
from lineguard.labelstudio.selection import recipe_folder
from lineguard.monitor import MonitorError
from lineguard.monitor.select import REASONS, drift_segments, pick_diverse, select_for_labelling
from tests._labelstudio_export import labelled_export

T0 = time.time() - 7200  # recent: the store's retention keeps them


def _png(i: int) -> bytes:
    """A small PNG unique to frame ``i``."""
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _rec(
    i: int,
    score: float,
    *,
    recipe: str | None = "vanilla",
    threshold: float = 0.5,
    stats: dict[str, float] | None = None,
    station: str = "line1",
) -> PredictionRecord:
    reject = score >= threshold
    return PredictionRecord(
        f"r-{i}",
        T0 + i,
        station,
        "test",
        recipe,
        "bad" if reject else "good",
        score,
        "reject" if reject else "accept",
        threshold,
        "toy",
        "1",
        1.0,
        stats if stats is not None else {"brightness": 120.0, "contrast": 40.0, "sharpness": 300.0},
    )


def _store(path: Path, frames: list[dict[str, Any]]) -> list[int]:
    """Write ``frames`` (score, recipe, stats, image, feedback, shadow) to a new store; their prediction ids."""
    ids = []
    with Store(path, min_free_bytes=0) as store:
        for i, f in enumerate(frames):
            rec = _rec(i, f["score"], recipe=f.get("recipe", "vanilla"), stats=f.get("stats"))
            pid = store.record(rec, _png(i) if f.get("image", True) else None)
            ids.append(pid)
            if "feedback" in f:
                store.add_feedback(pid, f["feedback"])
            if "shadow" in f:  # the challenger's score: it agrees when it falls on the same side of 0.5
                s = f["shadow"]
                store.record_shadow(
                    [
                        (
                            ShadowResult(
                                pid,
                                "2",
                                s,
                                "reject" if s >= 0.5 else "accept",
                                (s >= 0.5) == (f["score"] >= 0.5),
                                T0 + i,
                            ),
                            None,
                        )
                    ]
                )
    return ids


def _stats(rng: np.random.Generator, brightness: float = 120.0) -> dict[str, float]:
    return {
        "brightness": brightness + rng.normal(0, 0.5),
        "contrast": 40.0 + rng.normal(0, 0.2),
        "sharpness": 300.0 + rng.normal(0, 1.0),
    }


# --- reasons and their order -----------------------------------------------------------------------


def test_feedback_then_shadow_disagreements_are_picked_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 40 low-confidence frames, then the disagreements
    frames = [{"score": float(rng.uniform(0.36, 0.64)), "stats": _stats(rng)} for _ in range(40)]
    frames += [
        {"score": 0.05, "feedback": "bad", "stats": _stats(rng)},  # the operator: a missed defect
        {"score": 0.92, "feedback": "good", "stats": _stats(rng)},  # the operator: a false reject
        {"score": 0.10, "feedback": "good", "stats": _stats(rng)},  # feedback that agrees: no reason
        {"score": 0.20, "shadow": 0.80, "stats": _stats(rng)},  # the challenger would reject
        {"score": 0.70, "shadow": 0.30, "stats": _stats(rng)},
        {"score": 0.10, "shadow": 0.15, "stats": _stats(rng)},
    ]  # the challenger agrees: no reason
    ids = _store(tmp_path / "edge.db", frames)
    sel = select_for_labelling(tmp_path / "edge.db", 8)
    first = [p.prediction_id for p in sel.picks[:4]]
    assert set(first[:2]) == {ids[40], ids[41]} and set(first[2:]) == {ids[43], ids[44]}
    assert [p.reason for p in sel.picks[:4]] == ["feedback_disagreement"] * 2 + ["shadow_disagreement"] * 2
    assert all(p.reason == "low_confidence" for p in sel.picks[4:])
    picked = {p.prediction_id for p in sel.picks}
    assert ids[42] not in picked and ids[45] not in picked
    missed = next(p for p in sel.picks if p.prediction_id == ids[40])
    assert missed.feedback_label == "bad" and missed.label == "good" and "operator said bad" in missed.detail
    assert sel.available == {
        "feedback_disagreement": 2,
        "shadow_disagreement": 2,
        "low_confidence": 40,
        "coverage": 2,
    }
    assert any("drift flags skipped: pass --bundle" in n for n in sel.notes)  # no bundle: said so


def test_low_confidence_is_ranked_by_closeness_to_the_threshold(tmp_path: Path) -> None:
    # 0.30, 0.34, 0.10 and 0.95 lie outside the 0.15 band
    scores = [0.49, 0.30, 0.44, 0.62, 0.505, 0.38, 0.10, 0.95, 0.34]
    _store(tmp_path / "edge.db", [{"score": s} for s in scores])
    sel = select_for_labelling(tmp_path / "edge.db", len(scores), max_share=1.0)
    assert len(sel.picks) == len(scores)
    low = [p for p in sel.picks if p.reason == "low_confidence"]
    assert sorted(p.score for p in low) == sorted(s for s in scores if abs(s - 0.5) <= 0.15)
    assert sel.picks[0].score == 0.505  # the first pick is the closest
    by_priority = sorted(low, key=lambda p: -p.priority)
    margins = [abs(p.score - p.threshold) for p in by_priority]
    assert margins == sorted(margins)  # closer = higher priority
    assert {p.score for p in sel.picks if p.reason == "coverage"} == {0.30, 0.34, 0.10, 0.95}
    assert all(p.priority < min(q.priority for q in low) for p in sel.picks if p.reason == "coverage")
    # A narrower band leaves fewer low-confidence frames.
    narrow = select_for_labelling(tmp_path / "edge.db", len(scores), low_confidence_band=0.02, max_share=1.0)
    assert {p.score for p in narrow.picks if p.reason == "low_confidence"} == {0.49, 0.505}


def test_pick_diverse_follows_priority_among_identical_frames_and_distance_otherwise() -> None:
    prio = np.array([1.2, 1.7, 1.1, 1.5])
    same = np.zeros((4, 2))
    order, lifted = pick_diverse(same, prio, ["low_confidence"] * 4, ["a"] * 4, 4, max_share=1.0)
    assert order == [1, 3, 0, 2] and lifted == set()
    far = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [0.1, 0.0]])
    order, _ = pick_diverse(far, prio, ["low_confidence"] * 4, ["a"] * 4, 2, max_share=1.0)
    assert order == [1, 2]  # then the far frame, not the more urgent near-duplicate
    with pytest.raises(MonitorError, match=">= 1"):
        pick_diverse(same, prio, ["x"] * 4, ["a"] * 4, 0)


def test_drift_segments_span_since_to_the_alarm_frame() -> None:
    alarms = [
        {"signal": "sharpness", "direction": "down", "since": 10, "frame": 14, "shift_sd": -2.0},
        {"signal": "contrast", "direction": "down", "since": 13, "frame": 20, "shift_sd": -6.0},
    ]
    strength, names = drift_segments(alarms, 30)
    assert list(np.flatnonzero(strength)) == list(range(10, 21))
    assert strength[11] == 2.0 and strength[14] == 6.0 and names[13] == ["sharpness down", "contrast down"]
    assert names[25] == [] and strength[9] == 0.0


# --- diversity, quotas, determinism ------------------------------------------------------------------


def test_diversity_picks_the_distinct_frames_among_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [{"score": float(rng.uniform(0.40, 0.60)), "stats": _stats(rng)} for _ in range(40)]
    distinct = [
        {"score": 0.45, "stats": {"brightness": 30.0, "contrast": 10.0, "sharpness": 20.0}},
        {"score": 0.55, "stats": {"brightness": 230.0, "contrast": 80.0, "sharpness": 900.0}},
        {"score": 0.52, "stats": {"brightness": 120.0, "contrast": 40.0, "sharpness": 2000.0}},
    ]
    ids = _store(
        tmp_path / "edge.db", frames[:15] + distinct[:1] + frames[15:30] + distinct[1:] + frames[30:]
    )
    distinct_ids = {ids[15], ids[31], ids[32]}
    sel = select_for_labelling(tmp_path / "edge.db", 5)
    assert distinct_ids <= {p.prediction_id for p in sel.picks}
    # Without the spread, the most urgent frames would have been near-duplicates of each other.
    priority = {p.prediction_id: p.priority for p in select_for_labelling(tmp_path / "edge.db", 1000).picks}
    assert not distinct_ids <= set(sorted(priority, key=lambda pid: -priority[pid])[:5])


def test_quotas_keep_one_recipe_or_reason_from_taking_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frames = [
        {"score": float(rng.uniform(0.40, 0.60)), "recipe": "vanilla", "stats": _stats(rng)}
        for _ in range(30)
    ]
    frames += [
        {"score": float(rng.uniform(0.40, 0.60)), "recipe": "chocolate", "stats": _stats(rng)}
        for _ in range(5)
    ]
    _store(tmp_path / "recipes.db", frames)
    sel = select_for_labelling(tmp_path / "recipes.db", 10)
    assert sel.per_recipe() == {"vanilla": 5, "chocolate": 5}
    assert sel.per_recipe() != select_for_labelling(tmp_path / "recipes.db", 10, max_share=1.0).per_recipe()

    frames = [{"score": 0.05, "feedback": "bad", "stats": _stats(rng)} for _ in range(12)]
    frames += [{"score": float(rng.uniform(0.40, 0.60)), "stats": _stats(rng)} for _ in range(12)]
    _store(tmp_path / "reasons.db", frames)
    sel = select_for_labelling(tmp_path / "reasons.db", 8)
    assert sel.per_reason() == {"feedback_disagreement": 4, "low_confidence": 4}
    assert not any("quota" in n for n in sel.notes)

    _store(tmp_path / "only.db", [{"score": 0.05, "feedback": "bad", "stats": _stats(rng)} for _ in range(6)])
    # Nothing else to pick: the quota gives way, and says so.
    sel = select_for_labelling(tmp_path / "only.db", 4)
    assert sel.per_reason() == {"feedback_disagreement": 4} and any("reason quota" in n for n in sel.notes)


def test_the_same_seed_gives_the_same_picks_and_the_seed_breaks_ties(tmp_path: Path) -> None:
    same = {"brightness": 120.0, "contrast": 40.0, "sharpness": 300.0}
    _store(tmp_path / "edge.db", [{"score": 0.45, "stats": dict(same)} for _ in range(20)])  # all alike
    picks = [
        [p.prediction_id for p in select_for_labelling(tmp_path / "edge.db", 3, seed=s).picks]
        for s in range(6)
    ]
    again = [p.prediction_id for p in select_for_labelling(tmp_path / "edge.db", 3, seed=0).picks]
    assert again == picks[0]
    assert len({tuple(p) for p in picks}) > 1


def test_since_and_until_bound_the_candidates(tmp_path: Path) -> None:
    _store(tmp_path / "edge.db", [{"score": 0.45} for _ in range(20)])
    sel = select_for_labelling(tmp_path / "edge.db", 50, since=T0 + 5, until=T0 + 15)
    assert sel.decisions == 10 and sorted(p.time - T0 for p in sel.picks) == pytest.approx(list(range(5, 15)))
    assert any("only 10 frames kept their image" in n for n in sel.notes)


# --- writing, and the round trip through Label Studio ------------------------------------------------


def _mixed_store(path: Path) -> list[int]:
    rng = np.random.default_rng(3)
    frames = [
        {
            "score": float(rng.uniform(0.38, 0.62)),
            "recipe": ("vanilla", "Chocolate Nuts", None)[i % 3],
            "stats": _stats(rng, 60 + 5 * i),
        }
        for i in range(24)
    ]
    frames += [
        {"score": 0.05, "feedback": "bad", "recipe": "vanilla"},
        {"score": 0.3, "shadow": 0.9, "recipe": None},
        {"score": 0.9, "image": False},
    ]
    return _store(path, frames)


def test_write_selection_writes_images_tasks_and_the_csv(tmp_path: Path) -> None:
    _mixed_store(tmp_path / "edge.db")
    sel = select_for_labelling(tmp_path / "edge.db", 9)
    out = tmp_path / "to-label"
    files = write_selection(sel, out)
    assert files.tasks == 9 and sorted(p.name for p in out.iterdir()) == [
        "images",
        "labelling-config.xml",
        "selection.csv",
        "tasks.json",
    ]
    tasks = json.loads((out / "tasks.json").read_text())
    by_id = {p.prediction_id: p for p in sel.picks}
    for task in tasks:
        rel = parse_qs(urlparse(task["data"]["image"]).query)["d"][0]
        assert (out / "images" / rel).is_file()
        pick = by_id[task["data"]["prediction_id"]]
        assert (out / "images" / rel).read_bytes() == _png(int(pick.frame_id.split("-")[1]))  # the stored PNG
        assert rel == f"{recipe_folder(pick.recipe)}/line1-{pick.prediction_id}.png"
        assert task["data"]["recipe"] == recipe_folder(pick.recipe) and task["data"]["key"] == pick.key
        pred = task["predictions"][0]  # the champion's decision from the store, not a model run
        assert pred["result"][0]["value"]["choices"] == [pick.label] and pred["model_version"] == "1"
        assert pred["score"] == pytest.approx(
            pick.score if pick.decision == "reject" else 1 - pick.score, abs=1e-6
        )
    assert {t["data"]["recipe"] for t in tasks} == {"vanilla", "chocolate_nuts", "unknown"}
    assert '<Choice value="chocolate_nuts"/>' in (out / "labelling-config.xml").read_text()
    rows = list(csv.DictReader((out / "selection.csv").open()))
    assert tuple(rows[0]) == SELECTION_COLUMNS
    assert [int(r["prediction_id"]) for r in rows] == [p.prediction_id for p in sel.picks]
    for r, p in zip(rows, sel.picks, strict=True):
        assert (out / r["image"]).is_file() and r["reasons"] == ";".join(p.reasons) and r["key"] == p.key
        assert float(r["time"]) == p.time and r["decision"] == p.decision and r["recipe"] == (p.recipe or "")
    assert rows[0]["reasons"].startswith("feedback_disagreement") and rows[0]["feedback_label"] == "bad"

    with pytest.raises(LabelStudioError, match="not empty; choose an empty folder or pass --overwrite"):
        write_selection(sel, out)
    (out / "mine.txt").write_text("kept")
    again = write_selection(select_for_labelling(tmp_path / "edge.db", 3), out, overwrite=True)
    assert (
        again.tasks == 3 and len(list((out / "images").rglob("*.png"))) == 3 and (out / "mine.txt").exists()
    )


def test_a_label_studio_export_of_the_tasks_imports_back_with_the_recipes(tmp_path: Path) -> None:
    _mixed_store(tmp_path / "edge.db")
    sel = select_for_labelling(tmp_path / "edge.db", 12)
    out = tmp_path / "to-label"
    write_selection(sel, out)
    tasks = json.loads((out / "tasks.json").read_text())
    def answer(task: dict[str, Any]) -> tuple[str, str, str]:  # the person: the operator's word, else the model's
        if task["data"]["feedback_label"] == "bad":
            return "bad", "", ""
        return task["predictions"][0]["result"][0]["value"]["choices"][0], "", ""

    export = labelled_export(tasks, answer)
    (tmp_path / "export.json").write_text(json.dumps(export))
    parsed = import_export(str(tmp_path / "export.json"), str(tmp_path / "labels.csv"), str(out / "images"))
    assert parsed.problems == [] and len(parsed.records) == 12
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "labels.csv").open())}
    selected = {r["image"].removeprefix("images/"): r for r in csv.DictReader((out / "selection.csv").open())}
    assert set(rows) == set(selected)
    for file, row in rows.items():
        assert row["recipe"] == recipe_folder(selected[file]["recipe"])
        assert (out / "images" / file).is_file()
    fb = next(f for f, r in selected.items() if r["feedback_label"] == "bad")
    assert rows[fb]["label"] == "bad"


# --- errors ----------------------------------------------------------------------------------------


def test_every_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="no store at"):
        select_for_labelling(tmp_path / "missing.db", 5)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(MonitorError, match="not a readable LineGuard store"):
        select_for_labelling(tmp_path / "junk.db", 5)
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(MonitorError, match="no predictions table"):
        select_for_labelling(tmp_path / "other.db", 5)
    _store(tmp_path / "edge.db", [{"score": 0.45}])
    for n in (0, -3):
        with pytest.raises(MonitorError, match=r"whole number of frames >= 1"):
            select_for_labelling(tmp_path / "edge.db", n)
    with pytest.raises(MonitorError, match=r"band must be within 0\.\.1"):
        select_for_labelling(tmp_path / "edge.db", 5, low_confidence_band=2.0)
    with pytest.raises(MonitorError, match="is a path: pass the loaded bundle"):
        select_for_labelling(tmp_path / "edge.db", 5, bundle=str(tmp_path / "bundle"))
    with pytest.raises(MonitorError, match="holds no decisions in this time range"):
        select_for_labelling(tmp_path / "edge.db", 5, since=T0 + 3600)
    _store(tmp_path / "blind.db", [{"score": 0.9, "image": False}, {"score": 0.1, "image": False}])
    with pytest.raises(
        MonitorError, match=r"none of the 2 decisions .* kept its image.*sample policy.*store.sampling"
    ):
        select_for_labelling(tmp_path / "blind.db", 5)
    (tmp_path / "file").write_text("x")
    sel = select_for_labelling(tmp_path / "edge.db", 1)
    with pytest.raises(LabelStudioError, match="is a file; expected a folder"):
        write_selection(sel, tmp_path / "file")
    for e in (MonitorError("x"), LabelStudioError("x")):
        assert "\n" not in str(e)


def test_the_cli_prints_the_picks_and_the_next_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lineguard.cli import app

    _mixed_store(tmp_path / "edge.db")
    out = tmp_path / "picked"
    run = CliRunner().invoke(
        app,
        [
            "monitor",
            "select",
            "--store",
            str(tmp_path / "edge.db"),
            "--for-labelling",
            "6",
            "--out",
            str(out),
            "--seed",
            "1",
        ],
        env={"COLUMNS": "200"},
    )
    assert run.exit_code == 0, run.output
    text = run.output
    assert "feedback disagreement" in text and "shadow disagreement" in text and "low confidence" in text
    assert "picks per recipe" in text and "vanilla" in text and "(none)" in text
    assert "drift flags skipped" in text
    assert "lineguard label import export.json --root" in text and "lineguard data ingest" in text
    assert len(json.loads((out / "tasks.json").read_text())) == 6
    bad = CliRunner().invoke(
        app,
        [
            "monitor",
            "select",
            "--store",
            str(tmp_path / "nope.db"),
            "--for-labelling",
            "6",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert (
        bad.exit_code != 0 and isinstance(bad.exception, MonitorError) and "no store at" in str(bad.exception)
    )
    assert set(REASONS) >= {"feedback_disagreement", "shadow_disagreement", "drift", "low_confidence"}


def test_selecting_needs_no_training_stack(tmp_path: Path) -> None:
    """The selection runs on the edge device: torch, pandas, pydantic and the config are not needed."""
    import subprocess
    import sys

    from tests.unit.test_edge_imports import BLOCKED

    _mixed_store(tmp_path / "edge.db")
    code = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {BLOCKED!r}\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in BLOCKED):\n"
        "            raise ImportError(name + ' is blocked in this test')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from lineguard.monitor.select import select_for_labelling\n"
        f"print(len(select_for_labelling({str(tmp_path / 'edge.db')!r}, 5).picks))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "5"


# --- drift, with the bundle's calibrated monitor (a real toy bundle and cones) ----------------------


@pytest.fixture(scope="module")
def lens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, list[dict[str, Any]]]:
    from lineguard.edge import load_bundle
    from lineguard.edge.hotswap import ModelSlot
    from tests.unit._dash_station import PushRuntime, cone_frame, make_monitor_bundle

    tmp = tmp_path_factory.mktemp("select")
    bundle = make_monitor_bundle(tmp / "toy")
    store = Store(tmp / "edge.db", min_free_bytes=0, sample=SamplePolicy(pass_share=1.0))  # every image kept
    rt = PushRuntime(ModelSlot.open(bundle), store, "line1")
    recs = []
    for i in range(360):  # clean for 240 frames, then a dirty lens
        recipe = ("vanilla_sprinkles", "chocolate_nuts")[i % 2]
        drift = {"drift": "dirty-lens", "severity": 0.9} if i >= 240 else {}
        recs.append(rt.submit(cone_frame(i, recipe, **drift), recipe).to_dict())  # type: ignore[arg-type]
    store.close()
    return tmp / "edge.db", load_bundle(bundle, False), recs


@pytest.mark.slow
def test_with_the_bundle_drifted_frames_are_picked_after_a_dirty_lens_and_not_on_a_clean_stream(
    lens: tuple[Path, Any, list[dict[str, Any]]],
) -> None:
    db, bundle, recs = lens
    sel = select_for_labelling(db, 30, bundle=bundle)
    drifted = [p for p in sel.picks if p.reason == "drift"]
    assert len(drifted) >= 10 and sel.available.get("drift", 0) >= 30
    first_dirty = recs[240]["time"]
    assert all(p.time >= recs[230]["time"] for p in drifted)  # the CUSUM's change point, not the clean part
    assert sum(p.time >= first_dirty for p in drifted) >= len(drifted) - 2
    assert any(d in drifted[0].detail for d in ("sharpness down", "contrast down")) and sel.bundle == "toy:2"
    assert len(drifted) <= 15  # the reason quota: half of the picks

    clean = select_for_labelling(db, 30, bundle=bundle, until=first_dirty)
    assert clean.decisions == 240 and not [p for p in clean.picks if "drift" in p.reasons]
    assert any("raised no alarm" in n for n in clean.notes)
