"""ModelSlot: verify, load beside, switch atomically, roll back; a refused bundle leaves the old model serving (R4, R6)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineguard.edge.hotswap import ModelSlot, SwapBusy, SwapError
from lineguard.edge.predictor import Predictor
from lineguard.edge.signing import Trust, generate_keypair
from tests.unit._edge_bundles import grey, make_toy_bundle, make_version_2


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("swap")
    v1 = make_toy_bundle(d / "v1")
    v2 = make_version_2(v1, d / "v2")
    tampered = d / "tampered"
    shutil.copytree(v2, tampered)
    model = tampered / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-20] ^= 0xFF
    model.write_bytes(bytes(data))
    return {"v1": v1, "v2": v2, "tampered": tampered}


def decide(slot: ModelSlot) -> Any:
    return slot.current().predict(grey(200))


def test_swap_switches_to_the_verified_bundle(bundles: dict[str, Path]) -> None:
    slot = ModelSlot.open(bundles["v1"])
    assert decide(slot).decision == "reject" and slot.info()["version"] == "1"
    info = slot.swap(bundles["v2"])
    assert info["version"] == "2" and info["previous"]["version"] == "1" and info["generation"] == 1
    assert info["parity"]["passed"] is True  # the golden batch was re-checked before the switch
    after = decide(slot)
    assert after.bundle_version == "2" and after.threshold == pytest.approx(0.9) and after.decision == "accept"
    assert slot.swaps == {"ok": 1, "refused": 0, "rolled_back": 0, "busy": 0}


@pytest.mark.parametrize("bad", ["tampered", "missing", "not_a_bundle"])
def test_a_refused_bundle_leaves_the_old_model_serving(bundles: dict[str, Path], tmp_path: Path, bad: str) -> None:
    slot = ModelSlot.open(bundles["v1"])
    before = slot.current()
    path = {"tampered": bundles["tampered"], "missing": tmp_path / "nope",
            "not_a_bundle": tmp_path}[bad]
    with pytest.raises(SwapError, match=r"refused.*the running model keeps serving"):
        slot.swap(path)
    assert slot.current() is before and slot.generation == 0 and decide(slot).bundle_version == "1"
    assert slot.swaps["refused"] == 1 and "keeps serving" in str(slot.info()["last_error"])


def test_trust_applies_to_swaps(bundles: dict[str, Path], tmp_path: Path) -> None:
    """With signing keys configured, an unsigned bundle is refused; a pinned digest refuses any other."""
    _, pub = generate_keypair(tmp_path / "release.pem")
    v1 = Predictor(bundles["v1"])
    signed_only = ModelSlot(v1, trust=Trust(keys=(str(pub),)))
    with pytest.raises(SwapError, match=r"signature|signed"):
        signed_only.swap(bundles["v2"])
    assert signed_only.current() is v1
    plain = ModelSlot(v1)
    with pytest.raises(SwapError, match="pinned"):
        plain.swap(bundles["v2"], expected_digest="sha256:" + "0" * 64)
    assert plain.current() is v1


def test_a_failing_listener_rolls_the_swap_back(bundles: dict[str, Path]) -> None:
    slot = ModelSlot.open(bundles["v1"])
    before = slot.current()
    seen: list[tuple[str, str]] = []
    runtime = {"predictor": before}

    def set_predictor(old: Predictor, new: Predictor) -> None:  # what the station wires: runtime.set_predictor
        assert slot.current() is new  # listeners run after the switch
        runtime["predictor"] = new

    def state_file(old: Predictor, new: Predictor) -> None:
        seen.append((old.bundle.version, new.bundle.version))
        raise OSError("state file not writable")

    slot.add_listener(set_predictor)
    slot.add_listener(state_file)
    with pytest.raises(SwapError, match=r"rolled back.*state file not writable"):
        slot.swap(bundles["v2"])
    assert seen == [("1", "2")] and slot.current() is before and slot.generation == 0
    assert runtime["predictor"] is before  # the listener that had switched was switched back
    assert slot.swaps["rolled_back"] == 1


def test_one_swap_at_a_time(bundles: dict[str, Path]) -> None:
    slot = ModelSlot.open(bundles["v1"])
    entered, release = threading.Event(), threading.Event()

    def slow(old: Predictor, new: Predictor) -> None:
        entered.set()
        release.wait(30)

    slot.add_listener(slow)
    t = threading.Thread(target=slot.swap, args=(bundles["v2"],))
    t.start()
    assert entered.wait(30)
    with pytest.raises(SwapBusy):
        slot.swap(bundles["v2"])
    release.set()
    t.join(30)
    assert slot.generation == 1 and slot.swaps["busy"] == 1


def test_decisions_go_on_during_swaps(bundles: dict[str, Path]) -> None:
    """A thread deciding without pause while the slot swaps back and forth: every decision succeeds and
    comes from one whole model (its threshold matches its version)."""
    slot = ModelSlot.open(bundles["v1"])
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[tuple[str, float]] = set()

    def hammer() -> None:
        image = grey(200)
        while not stop.is_set():
            try:
                p = slot.current().predict(image)
                seen.add((p.bundle_version, round(p.threshold, 3)))
            except BaseException as exc:
                errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        for target in ("v2", "v1", "v2"):
            slot.swap(bundles[target])
    finally:
        stop.set()
        t.join(30)
    assert errors == [] and slot.generation == 3
    assert seen <= {("1", 0.5), ("2", 0.9)} and ("2", 0.9) in seen
    assert np.isfinite(decide(slot).score)
