"""KPI arithmetic: counts, expected escapes and false rejects, cost, shifts across midnight and zones."""

from __future__ import annotations

import datetime as dt

import pytest

from lineguard.monitor import KpiBook, MonitorError, kpis, shift_of


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def test_shifts_follow_local_boundaries() -> None:
    assert shift_of(_t("2026-11-26T06:00:00+00:00")) == "2026-11-26/06-14"
    assert shift_of(_t("2026-11-26T13:59:59+00:00")) == "2026-11-26/06-14"
    assert shift_of(_t("2026-11-26T23:30:00+00:00")) == "2026-11-26/22-06"
    assert shift_of(_t("2026-11-27T05:59:00+00:00")) == "2026-11-26/22-06"  # the night shift keeps its evening
    # 05:30 UTC is 06:30 in Berlin (winter): the morning shift there.
    assert shift_of(_t("2026-11-26T05:30:00+00:00"), tz="Europe/Berlin") == "2026-11-26/06-14"
    assert shift_of(_t("2026-11-26T12:00:00+00:00"), (0, 12)) == "2026-11-26/12-00"


def test_kpi_arithmetic_with_the_cost_matrix() -> None:
    t = _t("2026-11-26T08:00:00+00:00")
    records = [
        {"time": t, "recipe": "vanilla", "score": 0.9, "decision": "reject", "bundle_version": "v1"},
        {"time": t, "recipe": "vanilla", "score": 0.2, "decision": "accept", "bundle_version": "v1"},
        {"time": t, "recipe": "vanilla", "score": 0.1, "decision": "accept", "bundle_version": "v1"},
        {"time": t + 8 * 3600, "recipe": "vanilla", "score": 0.6, "decision": "reject", "bundle_version": "v2"},
    ]
    rows = kpis(records, cost_false_reject=2.0, cost_missed_defect=10.0)
    assert [(r["shift"], r["bundle_version"]) for r in rows] == [("2026-11-26/06-14", "v1"),
                                                                 ("2026-11-26/14-22", "v2")]
    first = rows[0]
    assert (first["inspected"], first["rejected"]) == (3, 1)
    assert first["expected_escapes"] == pytest.approx(0.3) and first["expected_false_rejects"] == pytest.approx(0.1)
    assert first["expected_cost"] == pytest.approx(0.1 * 2.0 + 0.3 * 10.0)
    total = kpis(records, by=())
    assert len(total) == 1 and total[0]["inspected"] == 4 and total[0]["reject_rate"] == pytest.approx(0.5)


def test_feedback_counts_beside_estimates() -> None:
    book = KpiBook(1.0, 5.0)
    t = _t("2026-11-26T15:00:00+00:00")
    book.add(t, "a", "v1", 0.3, False)
    book.add_feedback(t, "a", "v1", rejected=False, defect=True)
    book.add_feedback(t, "a", "v1", rejected=True, defect=False)
    row = book.table(("recipe",))[0]
    assert (row["counted_escapes"], row["counted_false_rejects"], row["counted_cost"]) == (1, 1, 6.0)


def test_bad_settings_are_named() -> None:
    with pytest.raises(MonitorError, match=r"hours 0\.\.23"):
        shift_of(0.0, (6, 25))
    with pytest.raises(MonitorError, match="time zone"):
        KpiBook(tz="Mars/Olympus")
    with pytest.raises(MonitorError, match="grouping"):
        KpiBook().table(("line",))
    with pytest.raises(MonitorError, match="record 0"):
        kpis([{"recipe": "a"}])
