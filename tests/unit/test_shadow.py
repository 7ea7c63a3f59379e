"""Shadow mode: a challenger scores the champion's recorded frames off the hot path, never acting on the line."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.edge.hotswap import ModelSlot
from lineguard.edge.predictor import Predictor
from lineguard.edge.shadow import ShadowError, ShadowRunner, ShadowSlot
from lineguard.edge.sources import PushSource
from lineguard.edge.station import load_station_config, open_station
from lineguard.edge.store import SHADOW_REASON, PredictionRecord, Store
from tests.unit._edge_bundles import expected_score, grey, make_champion_and_challenger

# The toy model's score for a grey level (temperature 2): 50 -> 0.07, 200 -> 0.85, 250 -> 0.95. The champion
# rejects from 0.5 (vanilla: 0.3), the challenger only from 0.9: at level 200 they disagree.
AGREE_PASS, DISAGREE, AGREE_REJECT = 50, 200, 250


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = make_champion_and_challenger(tmp_path_factory.mktemp("shadow"))
    tampered = made["challenger"].parent / "tampered"
    shutil.copytree(made["challenger"], tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-10] + b"0123456789")
    return {**made, "tampered": tampered}


def test_the_toy_scores_straddle_the_two_thresholds() -> None:
    assert expected_score(AGREE_PASS, 2.0) < 0.3
    assert 0.5 < expected_score(DISAGREE, 2.0) < 0.9 < expected_score(AGREE_REJECT, 2.0)


def _decide(
    champion: Predictor, store: Store, level: int, i: int, recipe: str | None = None
) -> tuple[int, PredictionRecord, np.ndarray]:
    """One champion decision, recorded as the station's recorder does (the image only when sampled)."""
    image = grey(level)
    pred = champion.predict(image, recipe)
    assert not isinstance(pred, list)
    rec = PredictionRecord(
        f"f-{i}",
        1_780_000_000.0 + i,
        "cell",
        "test",
        recipe,
        pred.label,
        pred.score,
        pred.decision,
        pred.threshold,
        pred.bundle_name,
        pred.bundle_version,
        pred.latency_ms,
    )
    return store.record(rec), rec, image


def test_agreement_is_counted_and_disagreements_keep_their_image(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    champion = Predictor(bundles["champion"])
    with Store(tmp_path / "edge.db") as store:
        runner = ShadowRunner(Predictor(bundles["challenger"]), store, queue_size=64)
        runner.start()
        levels = [AGREE_PASS, DISAGREE, AGREE_REJECT] * 4
        recipes = ["vanilla", "chocolate"] * 6
        ids = []
        for i, (level, recipe) in enumerate(zip(levels, recipes, strict=True)):
            rid, rec, image = _decide(champion, store, level, i, recipe)
            assert runner.offer(rid, rec, image)
            ids.append(rid)
        assert runner.drain(30)
        status = runner.stop()

        assert status["frames_compared"] == 12 and status["disagreements"] == 4 and status["skipped"] == 0
        assert status["agreement"] == pytest.approx(8 / 12)
        assert status["challenger"]["name"] == "toy" and status["challenger"]["version"] == "2"
        assert status["flips"] == {"accept_to_reject": 0, "reject_to_accept": 4}
        assert status["reject_rate"] == {
            "champion": pytest.approx(8 / 12),
            "challenger": pytest.approx(4 / 12),
        }
        per = {r["recipe"]: r for r in status["per_recipe"]}
        assert set(per) == {"vanilla", "chocolate"}
        assert sum(r["frames_compared"] for r in per.values()) == 12
        assert sum(r["disagreements"] for r in per.values()) == 4
        assert not status["running"]

        rows = store.shadow_rows()
        assert [r["prediction_id"] for r in rows] == ids
        disagreeing = {ids[i] for i, level in enumerate(levels) if level == DISAGREE}
        assert {r["prediction_id"] for r in rows if not r["agree"]} == disagreeing
        for r in rows:
            assert r["bundle_version"] == "2" and r["champion_version"] == "1"
            assert r["score"] == pytest.approx(r["champion_score"], abs=1e-6)  # same model, other thresholds
            assert r["image"] is (r["prediction_id"] in disagreeing)
        for pid in disagreeing:  # the frame itself, kept for labelling
            assert store.image(pid) is not None
        assert store.counts()["images"] == {SHADOW_REASON: 4}


def test_a_full_queue_skips_frames_and_never_blocks_the_champion(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    champion = Predictor(bundles["champion"])
    with Store(tmp_path / "edge.db") as store:
        runner = ShadowRunner(Predictor(bundles["challenger"]), store, queue_size=3)
        release = threading.Event()
        real_predict = runner.predictor.predict

        def stuck(*args: Any, **kwargs: Any) -> Any:  # a challenger far slower than the line
            release.wait(60)
            return real_predict(*args, **kwargs)

        runner.predictor.predict = stuck  # type: ignore[method-assign]
        runner.start()
        decisions = [_decide(champion, store, DISAGREE, i) for i in range(40)]
        accepted: list[bool] = []
        offering = threading.Thread(target=lambda: accepted.extend(runner.offer(*d) for d in decisions))
        offering.start()
        offering.join(20)
        assert not offering.is_alive(), "offer() waited for the challenger"
        # the worker holds at most one batch, the queue three more: every other frame was skipped, not queued
        assert 3 <= sum(accepted) <= 3 + 8 and len(accepted) == 40
        assert runner.status()["skipped"] == 40 - sum(accepted)
        release.set()
        assert runner.drain(30)
        status = runner.stop()
        assert status["frames_compared"] == sum(accepted) and status["frames_offered"] == 40
        assert len(store.shadow_rows()) == sum(accepted)


def test_a_frame_the_challenger_cannot_decide_is_counted_not_fatal(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    champion = Predictor(bundles["champion"])
    with Store(tmp_path / "edge.db") as store:
        runner = ShadowRunner(Predictor(bundles["challenger"]), store)
        runner.start()
        rid, rec, _ = _decide(champion, store, AGREE_PASS, 0)
        runner.offer(rid, rec, np.zeros((4, 4), np.uint8))  # not an RGB frame: the challenger refuses it
        rid2, rec2, image2 = _decide(champion, store, AGREE_PASS, 1)
        runner.offer(rid2, rec2, image2)
        assert runner.drain(30)
        status = runner.stop()
        assert status["failed"] == 1 and status["frames_compared"] == 1 and status["last_error"]
        assert [r["prediction_id"] for r in store.shadow_rows()] == [rid2]


def test_the_slot_installs_replaces_refuses_and_removes(bundles: dict[str, Path], tmp_path: Path) -> None:
    with Store(tmp_path / "edge.db") as store:
        slot = ShadowSlot(store, upload_dir=tmp_path / "uploads")
        assert slot.runner is None and slot.status()["running"] is False
        status = slot.install(bundles["challenger"])
        assert status["running"] and status["challenger"]["version"] == "2"
        first = slot.runner
        with pytest.raises(ShadowError, match="challenger") as refused:
            slot.install(bundles["tampered"])
        assert refused.value.reason == "shadow_refused"
        assert slot.runner is first and first.running  # the running challenger keeps running
        with pytest.raises(ShadowError):
            slot.install(tmp_path / "no-such-bundle")
        with pytest.raises(ShadowError, match="digest"):
            slot.install(bundles["challenger"], expected_digest="sha256:" + "0" * 64)

        replaced = slot.install_upload(iter([bundles["archive"].read_bytes()]), max_bytes=10_000_000)
        assert replaced["running"] and slot.runner is not first and not first.running
        upload = slot.runner.upload
        assert upload is not None and upload.is_file() and upload.parent == tmp_path / "uploads"
        final = slot.remove()
        assert final["running"] is False and slot.runner is None and not upload.exists()
        with pytest.raises(ShadowError) as none:
            slot.remove()
        assert none.value.reason == "no_challenger"
        with pytest.raises(ShadowError) as big:
            slot.install_upload(iter([b"x" * 100]), max_bytes=10)
        assert big.value.reason == "too_large" and not list((tmp_path / "uploads").iterdir())

        off = ShadowSlot(store, upload_dir=tmp_path / "off", enabled=False)
        with pytest.raises(ShadowError) as disabled:
            off.install(bundles["challenger"])
        assert disabled.value.reason == "shadow_disabled" and "shadow.enabled" in str(disabled.value)


def test_promotion_swaps_the_champion_and_stops_the_shadow(bundles: dict[str, Path], tmp_path: Path) -> None:
    with Store(tmp_path / "edge.db") as store:
        champion = ModelSlot.open(bundles["champion"])
        slot = ShadowSlot(store, upload_dir=tmp_path / "uploads")
        with pytest.raises(ShadowError) as none:
            slot.promote(champion)
        assert none.value.reason == "no_challenger"
        slot.install(bundles["challenger"])
        digest = slot.runner.bundle.digest
        out = slot.promote(champion)
        assert out["model"]["version"] == "2" and out["model"]["digest"] == digest
        assert out["shadow"]["running"] is False and slot.runner is None
        assert champion.current().bundle.version == "2"
        assert (
            champion.current().predict(grey(DISAGREE)).decision == "accept"
        )  # the challenger's threshold decides


def test_a_station_runs_its_configured_challenger_and_closes_it(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    frames = [grey(level) for level in [AGREE_PASS, DISAGREE, AGREE_REJECT] * 10]
    src = PushSource(capacity=len(frames) + 1)
    for image in frames:
        src.push(image)
    config = load_station_config(
        None,
        {
            "station": "cell-1",
            "recipe": "chocolate",
            "monitor": False,
            "store.path": str(tmp_path / "edge.db"),
            "sinks": [{"kind": "jsonl", "path": str(tmp_path / "out.jsonl")}],
            "shadow": {"bundle": str(bundles["challenger"]), "queue_size": 64},
        },
    )
    station = open_station(config, bundles["champion"], source=src)
    assert station.shadow is not None and station.shadow.running
    thread = threading.Thread(target=station.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while (
        station.runtime.recorded < len(frames) or station.shadow.status()["frames_compared"] < len(frames)
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = station.shadow.status()
    runner = station.shadow
    station.stop()
    thread.join(30)
    assert not thread.is_alive() and not runner.running  # close() stopped the challenger
    assert status["frames_compared"] == 30 and status["disagreements"] == 10 and status["skipped"] == 0
    sent = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(sent) == 30 and all(
        m["bundle_version"] == "1" for m in sent
    )  # only the champion reaches the line
    with Store(tmp_path / "edge.db") as store:
        assert len(store.shadow_rows(disagreements_only=True)) == 10


def test_a_challenger_that_cannot_load_does_not_stop_the_station(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    config = load_station_config(
        None,
        {
            "station": "cell-1",
            "monitor": False,
            "store.path": str(tmp_path / "e.db"),
            "shadow": {"bundle": str(bundles["tampered"])},
        },
    )
    station = open_station(config, bundles["champion"], source=PushSource())
    try:
        assert station.shadow is None
        assert station.shadow_slot is not None and "challenger" in (
            station.shadow_slot.status()["last_error"] or ""
        )
    finally:
        station.close()
