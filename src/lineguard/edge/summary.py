"""What the dashboard shows, in one read-only JSON answer: ``GET /v1/summary``.

:class:`DashboardSummary` keeps running aggregates of the station's store and reads it
incrementally: each refresh asks the store only for the rows after the last id it has
seen (``after_id``), so a poll every few seconds costs the new rows, not the history.
The first refresh reads back ``lookback_s`` (a day by default). Everything it keeps is
bounded: per (recipe, shift, bundle version) tallies, the last ``recent`` scores, a ring of
per-minute signal means, the feedback joined to its decisions.

The answer (:meth:`DashboardSummary.snapshot`), every section present, each saying whether
it is ``available`` and why not:

- ``counts``: totals, and reject rate ``per_recipe``, ``per_shift`` and ``per_version``;
- ``scores``: the histogram of the last ``recent`` calibrated scores beside the bundle's
  ``reference`` histogram (the validation split, per class);
- ``kpi``: inspected, rejected, expected escapes and false rejects and their cost from the
  bundle's cost matrix, per recipe, shift and bundle version (:mod:`lineguard.monitor.kpi`);
- ``estimate``: the label-free performance estimate (CBPE) over the recent window,
  marked not trustworthy while an input drift alarm is active;
- ``feedback``: operator labels: accuracy measured on them, beside what the scores
  predicted for the same frames; concept drift when the two part;
- ``drift``: each signal's per-minute mean over time with its reference band (from the
  store's records and the bundle's reference) and, when the station runs a monitor
  (``station.monitor``, :class:`lineguard.monitor.Monitor`), its CUSUM level over time
  against the alarm threshold, and the alarms with the stored frame nearest each;
- ``outputs``: per recipe, the score distribution and reject rate of the current model's
  recent decisions against the bundle's validation scores and against the previous model's
  last decisions on this line, each with a verdict (:mod:`lineguard.monitor.outputs`);
- ``shadow``: the challenger's agreement when the station runs one (``station.shadow``
  with a ``status()`` dict).

Numbers only; names (recipes, signals, versions) are data and the page escapes them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lineguard import LineguardError

__all__ = ["DashboardSummary"]

DEFAULT_SHIFTS = (6, 14, 22)
HIST_BINS = 20
MAX_SHIFTS = 9  # shifts listed in per_shift (the newest)
MAX_ALARMS = 20  # alarm groups (signal, direction) listed
OUTPUT_VERSIONS = 3  # bundle versions whose recent decisions are kept for the output comparison
OUTPUT_RECIPES = 64  # recipes kept per version (a bound against a store full of made-up names)
ALARM_FRAME_LOOKAHEAD = 500  # rows searched after an alarm's time for a frame with a kept image


def _rate(rejected: int | float, inspected: int | float) -> float:
    return float(rejected) / float(inspected) if inspected else 0.0


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class DashboardSummary:
    """Incremental aggregates of one station's store for ``GET /v1/summary`` (module docstring).

    ``shifts`` are the local hours at which a shift starts and ``tz`` their time zone
    (as :func:`lineguard.monitor.kpi.shift_of`); ``recent`` the frames of the score
    histogram and the label-free estimate; ``series_width_s`` and ``series_len`` the
    resolution and length of the signals over time; ``max_rows_per_refresh`` bounds the
    rows one refresh reads (a first read of a large store is spread over several polls).
    ``level_len`` is how many samples of the monitor's CUSUM levels are kept (one per change
    seen by a poll); ``output_window`` how many recent decisions per recipe and bundle version the
    output comparison holds (of the newest :data:`OUTPUT_VERSIONS` versions).
    """

    def __init__(
        self,
        station: Any,
        *,
        lookback_s: float = 24 * 3600.0,
        shifts: Sequence[int] = DEFAULT_SHIFTS,
        tz: str = "UTC",
        recent: int = 1000,
        series_width_s: float = 30.0,
        series_len: int = 240,
        level_len: int = 300,
        page: int = 1000,
        max_rows_per_refresh: int = 20_000,
        output_window: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from lineguard.monitor.kpi import KpiBook, check_shifts

        if (recent < 10 or series_len < 2 or page < 1 or max_rows_per_refresh < page or series_width_s <= 0
                or output_window < 100):
            raise LineguardError("summary settings: recent >= 10, series_len >= 2, page >= 1, "
                                 "max_rows_per_refresh >= page, series_width_s > 0 and output_window >= 100 "
                                 "are expected")
        self.station = station
        self.lookback_s = float(lookback_s)
        self.shifts = check_shifts(shifts)
        self.tz = tz
        self.series_width_s = float(series_width_s)
        self.series_len = int(series_len)
        self.page = int(page)
        self.max_rows = int(max_rows_per_refresh)
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._first_time: float | None = None
        self._last_id = 0
        self._rows = 0
        self._caught_up = False
        self._cost: tuple[float, float] | None = None
        self._kpi_factory = lambda cost: KpiBook(cost[0], cost[1], self.shifts, tz)
        self._kpi: Any = None
        self._scores: deque[tuple[float, bool, str | None]] = deque(maxlen=int(recent))
        self._series: OrderedDict[int, dict[str, list[float]]] = OrderedDict()
        self._feedback_after = 0
        self._feedback: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._levels: deque[tuple[float, dict[str, float]]] = deque(maxlen=int(level_len))
        self._alarm_frames: dict[tuple[str, float], int | None] = {}
        self._cached: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.output_window = int(output_window)
        # version -> recipe -> the newest (score, rejected); versions in the order last seen
        self._outputs: OrderedDict[str, dict[str | None, deque[tuple[float, bool]]]] = OrderedDict()
        self._validation: tuple[str, Any] | None = None  # (bundle digest, its validation scores or None)

    # --- reading the store -------------------------------------------------------------------------

    def _bundle(self) -> Any:
        return self.station.slot.current().bundle

    def _ensure_kpi(self) -> Any:
        dec = self._bundle().decision
        cost = (float(dec.cost.false_reject), float(dec.cost.missed_defect))
        if self._kpi is None or cost != self._cost:
            # A swapped-in bundle with another cost matrix: the tallies are rebuilt from the store.
            if self._kpi is not None:
                self._reset()
            self._cost = cost
            self._kpi = self._kpi_factory(cost)
        return self._kpi

    def _reset(self) -> None:
        self._since, self._first_time, self._last_id, self._rows, self._caught_up = None, None, 0, 0, False
        self._scores.clear()
        self._series.clear()
        self._feedback_after = 0
        self._feedback.clear()
        self._outputs.clear()

    def _add_output(self, version: str, recipe: str | None, score: float, rejected: bool) -> None:
        per = self._outputs.get(version)
        if per is None:
            per = self._outputs[version] = {}
            while len(self._outputs) > OUTPUT_VERSIONS:
                self._outputs.popitem(last=False)
        elif next(reversed(self._outputs)) != version:
            self._outputs.move_to_end(version)
        ring = per.get(recipe)
        if ring is None:
            if len(per) >= OUTPUT_RECIPES:
                return
            ring = per[recipe] = deque(maxlen=self.output_window)
        ring.append((score, rejected))

    def _add(self, row: dict[str, Any]) -> None:
        score = _finite(row.get("score"))
        t = _finite(row.get("time"))
        if score is None or t is None:
            return
        rejected = row.get("decision") == "reject"
        recipe = row.get("recipe")
        self._kpi.add(t, recipe, str(row.get("bundle_version", "")), score, rejected)
        self._scores.append((score, rejected, recipe))
        self._add_output(str(row.get("bundle_version", "")), recipe, score, rejected)
        self._rows += 1
        self._first_time = t if self._first_time is None else min(self._first_time, t)
        stats = row.get("stats") or {}
        if isinstance(stats, dict) and stats:
            b = int(t // self.series_width_s)
            acc = self._series.get(b)
            if acc is None:
                if self._series and b < next(iter(self._series)):
                    return  # older than the ring holds
                acc = self._series[b] = {}
                if len(self._series) > 1 and b < next(reversed(self._series)):
                    self._series = OrderedDict(sorted(self._series.items()))
                while len(self._series) > self.series_len:
                    self._series.popitem(last=False)
            for name, value in stats.items():
                v = _finite(value)
                if v is None:
                    continue
                s = acc.setdefault(str(name), [0.0, 0.0])
                s[0] += v
                s[1] += 1.0

    def _read_predictions(self, store: Any) -> None:
        if self._since is None:
            self._since = self.clock() - self.lookback_s
        read = 0
        while read < self.max_rows:
            rows = store.predictions(since=self._since if self._last_id == 0 else None, after_id=self._last_id or None,
                                     limit=self.page)
            for row in rows:
                self._add(row)
                self._last_id = max(self._last_id, int(row["id"]))
            read += len(rows)
            if len(rows) < self.page:
                self._caught_up = True
                return
        self._caught_up = False

    def _read_feedback(self, store: Any) -> None:
        reader = getattr(store, "feedback", None)
        if not callable(reader):
            return
        positive = self._bundle().positive_class
        while True:
            rows = reader(after_id=self._feedback_after, limit=self.page)
            for fb in rows:
                self._feedback_after = max(self._feedback_after, int(fb["id"]))
                pred = store.prediction(int(fb["prediction_id"]))
                score = _finite(pred.get("score")) if pred else None
                if pred is None or score is None:
                    continue
                rejected = pred.get("decision") == "reject"
                defect = str(fb.get("label")) == positive
                self._feedback.append({"prediction_id": int(fb["prediction_id"]), "time": _finite(fb.get("time")),
                                       "label": str(fb.get("label")), "score": score, "rejected": rejected,
                                       "defect": defect, "recipe": pred.get("recipe")})
                self._kpi.add_feedback(float(pred.get("time") or 0.0), pred.get("recipe"),
                                       str(pred.get("bundle_version", "")), rejected, defect)
            if len(rows) < self.page:
                return

    def _monitor_status(self) -> dict[str, Any] | None:
        monitor = getattr(self.station, "monitor", None)
        if monitor is None:
            return None
        status = dict(monitor.status())
        levels = status.get("cusum_level") or {}
        if levels:
            self._levels.append((self.clock(), {str(k): float(v) for k, v in levels.items()}))
        return status

    # --- the answer --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The summary (module docstring): the new rows are read, and the answer is recomputed only when
        something it shows changed (new decisions or feedback, the recipe, the model, the monitor's state)."""
        with self._lock:
            store = self.station.store
            self._ensure_kpi()
            self._read_predictions(store)
            self._read_feedback(store)
            mon = getattr(self.station, "monitor", None)
            shadow = getattr(self.station, "shadow", None)  # its comparisons land after the decisions they follow
            key = (self._last_id, self._feedback_after, self._caught_up, self.station.runtime.recipe,
                   self.station.slot.info().get("generation"), getattr(mon, "frames", None),
                   getattr(mon, "alarm_count", None), id(shadow) if shadow is not None else None,
                   getattr(shadow, "compared", None), getattr(shadow, "skipped", None))
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            monitor = self._monitor_status()
            drifting = bool(monitor and monitor.get("active_alarms"))
            body = {
                "station": self.station.name,
                "since": self._since,
                "first_time": self._first_time,
                "last_id": self._last_id,
                "rows": self._rows,
                "complete": self._caught_up,
                "recipe": self.station.runtime.recipe,
                "model": self._model(),
                "counts": self._counts(),
                "scores": self._scores_section(),
                "kpi": self._kpi_section(),
                "estimate": self._estimate(drifting),
                "feedback": self._feedback_section(drifting),
                "drift": self._drift(monitor, store),
                "outputs": self._outputs_section(),
                "shadow": self._shadow(),
            }
            self._cached = (key, body)
            return body

    def _model(self) -> dict[str, Any]:
        info = dict(self.station.slot.info())
        b = self._bundle()
        classes = list(b.classes)
        negative = next((c for c in classes if c != b.positive_class), None)
        dec = b.decision
        return {"name": info.get("name"), "version": info.get("version"), "digest": info.get("digest"),
                "signed_by": info.get("signed_by"), "generation": info.get("generation"),
                "classes": classes, "positive_class": b.positive_class, "negative_class": negative,
                "recipes": b.recipes, "default_threshold": dec.default_threshold,
                "thresholds": dict(dec.per_recipe),
                "cost": {"false_reject": dec.cost.false_reject, "missed_defect": dec.cost.missed_defect}}

    def _counts(self) -> dict[str, Any]:
        def rows(by: str) -> list[dict[str, Any]]:
            return [{by: r[by], "inspected": r["inspected"], "rejected": r["rejected"], "reject_rate": r["reject_rate"]}
                    for r in self._kpi.table((by,))]

        total = self._kpi.table(())
        t = total[0] if total else {"inspected": 0, "rejected": 0}
        return {"inspected": t["inspected"], "rejected": t["rejected"], "reject_rate": _rate(t["rejected"], t["inspected"]),
                "per_recipe": rows("recipe"), "per_shift": rows("shift")[-MAX_SHIFTS:],
                "per_version": rows("bundle_version"),
                "shifts": {"starts": list(self.shifts), "tz": self.tz}}

    def _scores_section(self) -> dict[str, Any]:
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        ref = (self._bundle().meta.get("reference") or {}).get("score_hist") or {}
        ref_edges = ref.get("edges")
        if isinstance(ref_edges, list) and len(ref_edges) >= 2:
            edges = np.asarray(ref_edges, np.float64)
        live = np.array([s for s, _, _ in self._scores], np.float64)
        counts = np.histogram(np.clip(live, edges[0], edges[-1]), bins=edges)[0] if len(live) else np.zeros(len(edges) - 1)
        reference: dict[str, Any] = {"available": False, "reason": "the bundle ships no validation score histogram"}
        per_class = ref.get("per_class")
        if isinstance(per_class, dict) and per_class:
            total = np.zeros(len(edges) - 1)
            for c in per_class.values():
                if isinstance(c, list) and len(c) == len(total):
                    total += np.asarray(c, np.float64)
            reference = {"available": True, "split": ref.get("split", "val"), "counts": [int(x) for x in total],
                         "per_class": {str(k): [int(x) for x in v] for k, v in per_class.items()}}
        return {"n": len(live), "edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
                "mean": float(live.mean()) if len(live) else None, "reference": reference}

    def _kpi_section(self) -> dict[str, Any]:
        cost = {"false_reject": self._cost[0], "missed_defect": self._cost[1]} if self._cost else None
        if not self._rows:
            return {"available": False, "reason": "no decisions yet", "cost": cost}
        return {"available": True, "cost": cost,
                "per_recipe": self._kpi.table(("recipe",)), "per_shift": self._kpi.table(("shift",))[-MAX_SHIFTS:],
                "per_version": self._kpi.table(("bundle_version",)), "total": self._kpi.table(())[0],
                "note": "escapes and false rejects are expected counts from the calibrated scores (valid while "
                        "the inputs are in distribution); counted ones come from operator feedback"}

    def _train_prior(self) -> float | None:
        """The training split's defect share the calibrated scores were fitted under (the monitor's reference).

        With it the estimate re-weights the scores to the line's own defect share (EM, Saerens et al.): without,
        a line with far fewer defects than training over-estimates its escapes (benchmarks: Q7). None when the
        station runs no monitor or its reference does not record the share.
        """
        prior = getattr(getattr(getattr(self.station, "monitor", None), "reference", None), "prior", None)
        try:
            value = float(prior)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return value if 0.0 < value < 1.0 else None

    def _estimate(self, drifting: bool) -> dict[str, Any]:
        from lineguard.monitor.estimate import cbpe

        if len(self._scores) < 10:
            return {"available": False, "reason": f"{len(self._scores)} scored frames; the estimate needs 10"}
        scores = np.array([s for s, _, _ in self._scores])
        rejected = np.array([r for _, r, _ in self._scores])
        prior = self._train_prior()
        est = cbpe(scores, rejected, draws=200, train_prior=prior, adjust_prior=prior is not None).to_dict()
        per_recipe = []
        for recipe in sorted({r for _, _, r in self._scores if r is not None}):
            idx = [i for i, (_, _, r) in enumerate(self._scores) if r == recipe]
            if len(idx) >= 10:
                # each recipe re-weighted to its own defect share: one recipe may run far fewer defects than another
                e = cbpe(scores[idx], rejected[idx], draws=200, recipe=recipe, train_prior=prior,
                         adjust_prior=prior is not None).to_dict()
                per_recipe.append({k: e[k] for k in ("recipe", "n", "balanced_accuracy", "balanced_accuracy_interval",
                                                      "false_reject_rate", "escape_rate")}
                                  | {"adjusted_prior": e["extra"].get("adjusted_prior")})
        if drifting:
            est["trustworthy"] = False
            est["reason"] = "input drift is alarmed: the calibrated scores' promise does not hold under drift"
        return {"available": True, **est, "per_recipe": per_recipe}

    def _feedback_section(self, drifting: bool) -> dict[str, Any]:
        from lineguard.monitor.estimate import cbpe, concept_drift, measured

        fb = list(self._feedback)
        recent_ids = [f["prediction_id"] for f in fb[-200:]]
        if not fb:
            reader = getattr(self.station.store, "feedback", None)
            return {"available": False, "n": 0, "labelled": [],
                    "reason": "no operator feedback yet" if callable(reader) else "this store keeps no feedback"}
        scores = np.array([f["score"] for f in fb])
        rejected = np.array([f["rejected"] for f in fb])
        defect = np.array([f["defect"] for f in fb])
        out: dict[str, Any] = {"available": True, "n": len(fb), "labelled": recent_ids,
                               "agree": int(np.sum(rejected == defect)),
                               "measured": measured(defect, rejected).to_dict(),
                               "estimated": cbpe(scores, rejected, draws=200).to_dict()}
        cd = concept_drift(scores, rejected, defect, input_drift=drifting).to_dict()
        out["concept_drift"] = cd
        return out

    def _alarm_frame(self, store: Any, alarm: dict[str, Any]) -> int | None:
        t = _finite(alarm.get("time"))
        if t is None:
            return None
        key = (str(alarm.get("signal")), t)
        if key not in self._alarm_frames:
            rows = store.predictions(since=t, limit=ALARM_FRAME_LOOKAHEAD)
            self._alarm_frames[key] = next((int(r["id"]) for r in rows if r.get("image")), None)
            if len(self._alarm_frames) > 1000:
                self._alarm_frames.pop(next(iter(self._alarm_frames)))
        return self._alarm_frames[key]

    def _drift(self, monitor: dict[str, Any] | None, store: Any) -> dict[str, Any]:
        ref_stats = (self._bundle().meta.get("reference") or {}).get("image_stats") or {}
        names: list[str] = sorted({n for acc in self._series.values() for n in acc})
        if monitor:
            names += [n for n in (monitor.get("cusum_level") or {}) if n not in names]
        thresholds = (monitor or {}).get("thresholds") or {}
        signals = []
        for name in names:
            values = [[b * self.series_width_s, acc[name][0] / acc[name][1]]
                      for b, acc in self._series.items() if name in acc and acc[name][1]]
            ref = ref_stats.get(name) if isinstance(ref_stats.get(name), dict) else None
            band = None
            if ref and _finite(ref.get("mean")) is not None and _finite(ref.get("std")) is not None:
                q = ref.get("quantiles") or {}
                band = {"mean": float(ref["mean"]), "std": float(ref["std"]),
                        "low": _finite(q.get("0.01", q.get("0.05"))), "high": _finite(q.get("0.99", q.get("0.95")))}
            sig: dict[str, Any] = {"name": name, "values": values, "reference": band}
            if monitor:
                sig["level"] = _finite((monitor.get("cusum_level") or {}).get(name))
                sig["threshold"] = 1.0  # levels are CUSUM / h: the alarm fires above 1
                sig["h"] = _finite(thresholds.get(name))
                sig["levels"] = [[t, lv[name]] for t, lv in self._levels if name in lv]
            signals.append(sig)
        out: dict[str, Any] = {"signals": signals, "series_width_s": self.series_width_s,
                               "available": monitor is not None}
        if monitor is None:
            out["reason"] = ("this station runs no drift monitor: the signals' values are shown against the "
                             "bundle's reference, without alarms")
            out["alarms"] = []
            out["in_distribution"] = None
            return out
        # One entry per signal and direction: the latest firing (a persisting shift fires again after each
        # CUSUM restart), how often it fired and since when; active ones first, then the newest.
        grouped: dict[tuple[str, str], dict[str, Any]] = {}
        for a in list(getattr(self.station.monitor, "alarms", []) or []) or (monitor.get("active_alarms") or []):
            d = a.to_dict() if hasattr(a, "to_dict") else dict(a)
            key = (str(d.get("signal")), str(d.get("direction")))
            first = grouped.get(key)
            d["firings"] = (first["firings"] if first else 0) + 1
            d["first_time"] = first["first_time"] if first else d.get("time")
            grouped[key] = d
        active = {(str(a.get("signal")), int(a.get("frame", -1))) for a in monitor.get("active_alarms") or []}
        alarms = []
        for d in grouped.values():
            d["active"] = (str(d.get("signal")), int(d.get("frame", -1))) in active
            alarms.append(d)
        alarms.sort(key=lambda d: (not d["active"], -(d.get("frame") or 0)))
        alarms = alarms[:MAX_ALARMS]
        for d in alarms:
            d["prediction_id"] = self._alarm_frame(store, d)
        levels_now = {str(k): float(v) for k, v in (monitor.get("cusum_level") or {}).items()}
        alarming = {str(d.get("signal")) for d in alarms if d["active"]}
        signals.sort(key=lambda sg: (sg["name"] not in alarming, -levels_now.get(sg["name"], 0.0), sg["name"]))
        out.update({"alarms": alarms, "in_distribution": bool(monitor.get("in_distribution", True)),
                    "alarms_total": monitor.get("alarms_total"), "arl0": monitor.get("arl0"),
                    "frames": monitor.get("frames")})
        return out

    def _validation_scores(self) -> Any:
        """The running bundle's validation scores (read once per bundle), or None when it ships none."""
        from lineguard.monitor.outputs import validation_scores

        b = self._bundle()
        key = str(getattr(b, "digest", "") or id(b))
        if self._validation is None or self._validation[0] != key:
            try:
                found = validation_scores(b)
            except LineguardError:
                found = None
            self._validation = (key, found)
        return self._validation[1]

    def _outputs_section(self) -> dict[str, Any]:
        """Per recipe, the current model's recent decisions against its validation scores and the previous model's."""
        from lineguard.monitor.outputs import output_report

        b = self._bundle()
        current = str(b.version)
        rows: list[tuple[float, bool, str | None, str]] = []
        for version, per in self._outputs.items():  # oldest version first: the previous one is the newest other
            if version == current:
                continue
            rows += [(sc, rj, recipe, version) for recipe, ring in per.items() for sc, rj in ring]
        rows += [(sc, rj, recipe, current) for recipe, ring in self._outputs.get(current, {}).items() for sc, rj in ring]
        if not rows:
            return {"available": False, "reason": "no decisions yet", "per_recipe": []}
        return output_report(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows],
                             [r[3] for r in rows], current_version=current, threshold_for=b.decision.threshold_for,
                             validation=self._validation_scores(), window=self.output_window)

    def _shadow(self) -> dict[str, Any]:
        shadow = getattr(self.station, "shadow", None)
        if shadow is None:
            return {"available": False, "reason": "no challenger model runs in shadow on this station"}
        return {"available": True, **dict(shadow.status())}
