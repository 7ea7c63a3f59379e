"""Business KPIs: cones inspected and rejected, estimated escapes and false rejects, and what they cost.

Per recipe, per shift and per bundle version. Escapes (defects passed) and false rejects
(good cones rejected) cannot be counted without labels; they are *expected* counts from
the calibrated scores -- ``sum p`` over accepted cones and ``sum (1 - p)`` over rejected ones
-- valid while the inputs are in distribution (see :mod:`lineguard.monitor.estimate`).
With feedback labels the counted ones appear beside them. Cost is the bundle's Decision
cost matrix: ``false_rejects * cost.false_reject + escapes * cost.missed_defect``.

Shifts: ``boundaries`` are the local hours at which a shift starts (default 06, 14, 22);
a frame belongs to the shift that started last, named ``YYYY-MM-DD/HH-HH`` by the date it
started (a night shift from 22 to 06 carries the date of its evening).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lineguard.monitor.reference import MonitorError

DEFAULT_SHIFTS = (6, 14, 22)


def check_shifts(boundaries: Sequence[int]) -> tuple[int, ...]:
    """Sorted, distinct hours 0..23; a one-line MonitorError otherwise."""
    b = tuple(sorted({int(h) for h in boundaries}))
    if not b or any(not 0 <= h <= 23 for h in b) or len(b) != len(tuple(boundaries)):
        raise MonitorError(f"shift boundaries must be distinct hours 0..23 (e.g. 6, 14, 22), got {list(boundaries)}")
    return b


def shift_of(time_s: float, boundaries: Sequence[int] = DEFAULT_SHIFTS, tz: str = "UTC") -> str:
    """The shift a frame taken at unix time ``time_s`` belongs to, e.g. ``2026-11-26/22-06``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    b = check_shifts(boundaries)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise MonitorError(f"unknown time zone {tz!r}; expected an IANA name such as 'Europe/Berlin'") from None
    local = dt.datetime.fromtimestamp(float(time_s), zone)
    start_hour = max((h for h in b if h <= local.hour), default=None)
    day = local.date()
    if start_hour is None:  # before the first boundary: the last shift of the previous day
        start_hour, day = b[-1], day - dt.timedelta(days=1)
    end_hour = b[(b.index(start_hour) + 1) % len(b)]
    return f"{day.isoformat()}/{start_hour:02d}-{end_hour:02d}"


@dataclass
class Tally:
    """One KPI row: counts and expected counts for one (recipe, shift, bundle version)."""

    inspected: int = 0
    rejected: int = 0
    expected_escapes: float = 0.0
    expected_false_rejects: float = 0.0
    feedback: int = 0
    counted_escapes: int = 0
    counted_false_rejects: int = 0

    def add(self, score: float, rejected: bool) -> None:
        self.inspected += 1
        if rejected:
            self.rejected += 1
            self.expected_false_rejects += 1.0 - score
        else:
            self.expected_escapes += score

    def add_feedback(self, rejected: bool, defect: bool) -> None:
        self.feedback += 1
        if defect and not rejected:
            self.counted_escapes += 1
        elif rejected and not defect:
            self.counted_false_rejects += 1

    def row(self, cost_false_reject: float, cost_missed_defect: float) -> dict[str, Any]:
        cost = self.expected_false_rejects * cost_false_reject + self.expected_escapes * cost_missed_defect
        return {
            "inspected": self.inspected, "rejected": self.rejected,
            "reject_rate": self.rejected / self.inspected if self.inspected else 0.0,
            "expected_escapes": self.expected_escapes, "expected_false_rejects": self.expected_false_rejects,
            "expected_cost": cost, "feedback": self.feedback, "counted_escapes": self.counted_escapes,
            "counted_false_rejects": self.counted_false_rejects,
            "counted_cost": self.counted_false_rejects * cost_false_reject + self.counted_escapes * cost_missed_defect,
        }


@dataclass
class KpiBook:
    """Running KPI tallies keyed by (recipe, shift, bundle version); what ``/metrics`` and reports read."""

    cost_false_reject: float = 1.0
    cost_missed_defect: float = 1.0
    boundaries: tuple[int, ...] = DEFAULT_SHIFTS
    tz: str = "UTC"
    tallies: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    _shift_cache: tuple[float, float, str] = (0.0, -1.0, "")  # [start, end) of the last shift looked up

    def __post_init__(self) -> None:
        self.boundaries = check_shifts(self.boundaries)
        for name, value in (("false_reject", self.cost_false_reject), ("missed_defect", self.cost_missed_defect)):
            if not value >= 0:
                raise MonitorError(f"cost '{name}' must be a number >= 0, got {value}")
        shift_of(0.0, self.boundaries, self.tz)  # refuses an unknown time zone now, not at the first frame

    def _shift(self, time_s: float) -> str:
        start, end, name = self._shift_cache
        if start <= time_s < end:
            return name
        name = shift_of(time_s, self.boundaries, self.tz)
        # Cache a 15-minute slot (every UTC offset is a multiple of 15 minutes, so a shift never starts
        # inside one): the time-zone lookup runs four times an hour, not per frame.
        slot = time_s - time_s % 900.0
        self._shift_cache = (slot, slot + 900.0, name)
        return name

    def add(self, time_s: float, recipe: str | None, version: str, score: float, rejected: bool) -> None:
        key = (recipe or "", self._shift(time_s), version)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally()
        tally.add(score, rejected)

    def add_feedback(self, time_s: float, recipe: str | None, version: str, rejected: bool, defect: bool) -> None:
        key = (recipe or "", self._shift(time_s), version)
        self.tallies.setdefault(key, Tally()).add_feedback(rejected, defect)

    def table(self, by: Sequence[str] = ("recipe", "shift", "bundle_version")) -> list[dict[str, Any]]:
        """Rows grouped by any of ``recipe``, ``shift``, ``bundle_version`` (empty: one total row)."""
        fields = ("recipe", "shift", "bundle_version")
        unknown = [b for b in by if b not in fields]
        if unknown:
            raise MonitorError(f"unknown KPI grouping {unknown}; expected some of {', '.join(fields)}")
        groups: dict[tuple[str, ...], Tally] = {}
        for key, t in self.tallies.items():
            g = tuple(key[fields.index(b)] for b in by)
            acc = groups.setdefault(g, Tally())
            for attr in ("inspected", "rejected", "expected_escapes", "expected_false_rejects", "feedback",
                         "counted_escapes", "counted_false_rejects"):
                setattr(acc, attr, getattr(acc, attr) + getattr(t, attr))
        return [{**dict(zip(by, g, strict=True)), **t.row(self.cost_false_reject, self.cost_missed_defect)}
                for g, t in sorted(groups.items())]


def kpis(records: Iterable[Mapping[str, Any]], *, cost_false_reject: float = 1.0, cost_missed_defect: float = 1.0,
         boundaries: Sequence[int] = DEFAULT_SHIFTS, tz: str = "UTC",
         by: Sequence[str] = ("recipe", "shift", "bundle_version")) -> list[dict[str, Any]]:
    """Pure: the KPI table of prediction records (dicts with ``time``, ``recipe``, ``score``,
    ``decision`` and ``bundle_version``, as the edge store returns them)."""
    book = KpiBook(cost_false_reject, cost_missed_defect, tuple(boundaries), tz)
    for i, rec in enumerate(records):
        try:
            book.add(float(rec["time"]), rec.get("recipe"), str(rec.get("bundle_version", "")), float(rec["score"]),
                     rec["decision"] == "reject")
        except (KeyError, TypeError, ValueError) as exc:
            raise MonitorError(f"record {i} lacks time/score/decision or holds a bad value ({exc})") from None
    return book.table(by)
