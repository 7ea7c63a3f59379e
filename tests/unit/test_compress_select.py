"""The candidate selection rule of compress: pure, so every case is a few records."""

from __future__ import annotations

import math

import pytest

from lineguard.compress import Candidate, CompressError, LatencyStats, comparison_table, select_candidate


def cand(
    name: str, ms: float, acc: float, precision: str = "", size: int = 1000, selectable: bool = True
) -> Candidate:
    return Candidate(
        name=name,
        precision=precision or name,
        backend="ort",
        model_path=f"{name}.onnx",
        size_bytes=size,
        latency={1: LatencyStats(1, ms, ms * 1.5, 100), 2: LatencyStats(2, ms * 0.7, ms, 100)},
        balanced_accuracy=acc,
        ece=0.01,
        agreement=1.0,
        max_score_diff=0.0,
        selectable=selectable,
    )


def test_most_accurate_within_budget_and_drop_is_chosen() -> None:
    cands = [cand("fp32", 0.8, 0.995), cand("fp32-pruned25", 0.5, 0.994), cand("fp32-pruned50", 0.3, 0.990)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is not None and sel.chosen.name == "fp32"
    assert sel.reasons["fp32"].startswith("chosen")
    assert sel.reasons["fp32-pruned25"].startswith("eligible")
    assert "drop 0.50 points" in sel.reasons["fp32-pruned50"]


def test_int8_slower_than_fp32_is_not_chosen_even_if_more_accurate() -> None:
    cands = [cand("fp32", 0.5, 0.990), cand("int8-qdq", 0.6, 0.992)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is not None and sel.chosen.name == "fp32"
    assert "INT8 not faster than fp32" in sel.reasons["int8-qdq"]


def test_int8_equal_latency_is_not_faster() -> None:
    cands = [cand("fp32", 0.5, 0.990), cand("int8-qdq", 0.5, 0.995)]
    assert select_candidate(cands, 1.0, 0.003).chosen.name == "fp32"  # type: ignore[union-attr]


def test_int8_faster_is_chosen_when_within_drop() -> None:
    cands = [cand("fp32", 0.5, 0.990), cand("int8-qdq", 0.3, 0.989)]
    sel = select_candidate(cands, budget_ms=0.4, max_drop=0.003)
    assert sel.chosen is not None and sel.chosen.name == "int8-qdq"
    assert "over budget" in sel.reasons["fp32"]


def test_over_budget_is_skipped() -> None:
    cands = [cand("fp32", 2.0, 0.999), cand("fp32-pruned50", 0.9, 0.998)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is not None and sel.chosen.name == "fp32-pruned50"
    assert sel.reasons["fp32"] == "skipped: over budget (2.000 ms > 1 ms)"


def test_drop_too_big_is_skipped() -> None:
    cands = [cand("fp32", 2.0, 0.999), cand("fp32-distilled", 0.5, 0.98)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is None
    assert "drop 1.90 points > 0.30 allowed" in sel.reasons["fp32-distilled"]


def test_nothing_fits_returns_none_with_every_reason() -> None:
    cands = [cand("fp32", 2.0, 0.999), cand("int8-qdq", 1.5, 0.999)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is None
    assert set(sel.reasons) == {"fp32", "int8-qdq"}
    assert all(r.startswith("skipped") for r in sel.reasons.values())
    assert "budget 1 ms" in sel.explain()


def test_comparison_only_candidate_is_never_chosen() -> None:
    cands = [cand("fp32", 0.9, 0.99), cand("fp32-openvino", 0.2, 0.99, selectable=False)]
    sel = select_candidate(cands, budget_ms=1.0, max_drop=0.003)
    assert sel.chosen is not None and sel.chosen.name == "fp32"
    assert sel.reasons["fp32-openvino"].startswith("skipped: not selectable")


def test_ties_on_accuracy_go_to_the_faster_candidate() -> None:
    cands = [cand("fp32", 0.9, 0.99), cand("fp32-pruned25", 0.4, 0.99)]
    assert select_candidate(cands, 1.0, 0.0).chosen.name == "fp32-pruned25"  # type: ignore[union-attr]


def test_budget_applies_at_the_given_thread_count() -> None:
    cands = [cand("fp32", 1.2, 0.99)]  # 1.2 ms at 1 thread, 0.84 ms at 2
    assert select_candidate(cands, 1.0, 0.003, threads=1).chosen is None
    assert select_candidate(cands, 1.0, 0.003, threads=2).chosen is not None
    assert "not measured" in select_candidate(cands, 1.0, 0.003, threads=4).reasons["fp32"]


def test_unmeasured_accuracy_is_skipped() -> None:
    cands = [cand("fp32", 0.5, 0.99), cand("fp32-pruned25", 0.4, math.nan)]
    assert "accuracy not measured" in select_candidate(cands, 1.0, 0.003).reasons["fp32-pruned25"]


def test_reference_is_required() -> None:
    with pytest.raises(CompressError, match="float reference 'fp32'"):
        select_candidate([cand("int8-qdq", 0.3, 0.99)], 1.0, 0.003)


def test_table_lists_every_candidate_and_decision() -> None:
    cands = [cand("fp32", 0.5, 0.990), cand("int8-qdq", 0.6, 0.992)]
    sel = select_candidate(cands, 1.0, 0.003)
    table = comparison_table(cands, sel)
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert "median ms @1t" in lines[0] and "p99 ms @2t" in lines[0]
    assert "| fp32 |" in lines[2] and "chosen" in lines[2]
    assert "INT8 not faster" in lines[3]
