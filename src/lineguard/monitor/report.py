"""``lineguard monitor report``: one self-contained HTML page about a station's store, for the quality manager.

:func:`write_report` reads an edge store (the SQLite file of :mod:`lineguard.edge.store`) read-only and
writes a page with no external asset (plots are inline SVG, thumbnails base64 PNG) in these sections:

1. **Signals over time** -- each image signal recorded with the decisions (the records' ``stats``),
   and, when the bundle's monitoring reference is given (``bundle``), the calibrated CUSUM level of
   each replayed over the stored frames, against its alarm threshold, with the alarms it raises;
2. **Reject rate per recipe** -- overall and over time;
3. **Estimated vs feedback accuracy** -- the label-free CBPE estimate per window of frames beside the
   balanced accuracy measured on operator feedback in the same windows;
4. **Shadow agreement** -- from a ``shadow`` table (``prediction_id``, ``agree``, challenger
   ``bundle_version``) when the station keeps one;
5. **Drifted and disputed frames** -- thumbnails of the kept frames at each alarm, and of the frames
   whose feedback contradicts the decision;
6. **KPIs per shift and per bundle version** -- inspected, rejected, expected escapes and false
   rejects and their cost (:mod:`lineguard.monitor.kpi`), with the counted ones from feedback;
7. **Model outputs against the reference and the previous model** -- per recipe, the newest model's
   recent score distribution and reject rate against the bundle's validation scores (with ``bundle``)
   and against the previous bundle version's last decisions, each with a verdict
   (:mod:`lineguard.monitor.outputs`).

A section with nothing to show says so ("no data") rather than disappearing. Every name that comes
from the data (recipes, versions, signals, labels, file names) is escaped.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.monitor.estimate import cbpe, measured
from lineguard.monitor.kpi import DEFAULT_SHIFTS, KpiBook
from lineguard.monitor.reference import MonitorError

__all__ = ["DriftReplay", "StoreData", "parse_time", "read_images", "read_store", "render_report", "replay_drift", "write_report"]

MAX_ROWS = 1_000_000
THUMBS = 12
MAX_POINTS = 400  # points per line in a plot (longer series are averaged down)


# --- reading the store ----------------------------------------------------------------------------


def parse_time(value: str | float | None, name: str = "since") -> float | None:
    """Unix seconds or an ISO 8601 time (naive is UTC); None passes; a one-line MonitorError otherwise."""
    if value is None or value == "":
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise MonitorError(f"--{name} {str(value)[:60]!r} is neither unix seconds nor an ISO 8601 time "
                               "such as 2026-11-02T08:00:00Z") from None
        t = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(t):
        raise MonitorError(f"--{name} must be a finite time")
    return t


@dataclass
class StoreData:
    """The columns of the store the report needs, in id order (``stats`` as dicts)."""

    path: str
    ids: np.ndarray
    time: np.ndarray
    score: np.ndarray
    rejected: np.ndarray
    recipe: list[str | None]
    version: list[str]
    label: list[str]
    stats: list[dict[str, Any]]
    has_image: set[int]
    feedback: list[dict[str, Any]]  # prediction_id, label, time (of the feedback)
    shadow: list[dict[str, Any]] | None  # prediction_id, agree, version (the challenger's), score, decision
    truncated: bool
    tables: set[str] = field(default_factory=set)
    key: list[str] = field(default_factory=list)  # what traces a frame elsewhere (the record's idempotency key)
    frame_id: list[str] = field(default_factory=list)
    station: list[str] = field(default_factory=list)
    threshold: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the decision threshold each frame had

    @property
    def n(self) -> int:
        return len(self.ids)


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise MonitorError(f"no store at {p}: expected the station's SQLite file (store.path in station.yaml)")
    try:
        con = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, timeout=10)
        tables = {str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise MonitorError(f"{p} is not a readable LineGuard store: {exc}") from None
    if "predictions" not in tables:
        con.close()
        raise MonitorError(f"{p} is not a LineGuard store (it has no predictions table)")
    return con


def read_store(path: str | os.PathLike[str], *, since: float | None = None, until: float | None = None,
               max_rows: int = MAX_ROWS) -> StoreData:
    """Read the decisions in ``[since, until)`` (the newest ``max_rows`` of them), feedback and shadow rows."""
    if max_rows < 1:
        raise MonitorError(f"max_rows must be >= 1, got {max_rows}")
    con = _connect(path)
    try:
        tables = {str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        where, args = [], []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if until is not None:
            where.append("time < ?")
            args.append(until)
        sql = ("SELECT id, time, recipe, score, decision, bundle_version, label, stats, key, frame_id, station, "
               "threshold FROM predictions"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        rows = con.execute(sql, (*args, max_rows + 1)).fetchall()
        truncated = len(rows) > max_rows
        rows = rows[:max_rows][::-1]
        ids = np.array([r[0] for r in rows], np.int64)
        first = int(ids[0]) if len(ids) else 0
        has_image: set[int] = set()
        if "images" in tables and len(ids):
            has_image = {int(r[0]) for r in con.execute("SELECT prediction_id FROM images WHERE prediction_id >= ?",
                                                         (first,))}
        feedback: list[dict[str, Any]] = []
        if "feedback" in tables and len(ids):
            feedback = [{"prediction_id": int(r[0]), "label": str(r[1]), "time": float(r[2])} for r in con.execute(
                "SELECT prediction_id, label, time FROM feedback WHERE prediction_id >= ? ORDER BY id", (first,))]
        shadow = None
        if "shadow" in tables:
            cols = {str(r[1]) for r in con.execute("PRAGMA table_info(shadow)")}
            if {"prediction_id", "agree"} <= cols:
                ver = "bundle_version" if "bundle_version" in cols else "''"
                score = "score" if "score" in cols else "NULL"
                decision = "decision" if "decision" in cols else "NULL"
                shadow = [{"prediction_id": int(r[0]), "agree": bool(r[1]), "version": str(r[2]),
                           "score": None if r[3] is None else float(r[3]), "decision": r[4]} for r in con.execute(
                    f"SELECT prediction_id, agree, {ver}, {score}, {decision} FROM shadow WHERE prediction_id >= ? "
                    "ORDER BY prediction_id", (first,))]
    except sqlite3.Error as exc:
        raise MonitorError(f"cannot read the store {path}: {exc}") from None
    finally:
        con.close()

    def stats_of(raw: Any) -> dict[str, Any]:
        try:
            s = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return s if isinstance(s, dict) else {}

    return StoreData(
        path=str(path), ids=ids, time=np.array([float(r[1]) for r in rows]), score=np.array([float(r[3]) for r in rows]),
        rejected=np.array([r[4] == "reject" for r in rows], bool), recipe=[r[2] for r in rows],
        version=[str(r[5]) for r in rows], label=[str(r[6]) for r in rows], stats=[stats_of(r[7]) for r in rows],
        has_image=has_image, feedback=feedback, shadow=shadow, truncated=truncated, tables=tables,
        key=[str(r[8]) for r in rows], frame_id=[str(r[9]) for r in rows], station=[str(r[10]) for r in rows],
        threshold=np.array([float(r[11]) for r in rows]))


def read_images(path: str | os.PathLike[str], prediction_ids: Sequence[int]) -> dict[int, bytes]:
    """The stored PNG bytes of these predictions (read-only, one connection); ids without an image are left out."""
    con = _connect(path)
    out: dict[int, bytes] = {}
    try:
        for pid in prediction_ids:
            row = con.execute("SELECT data FROM images WHERE prediction_id = ?", (int(pid),)).fetchone()
            if row is not None:
                out[int(pid)] = bytes(row[0])
    except sqlite3.Error as exc:
        raise MonitorError(f"cannot read the images of the store {path}: {exc}") from None
    finally:
        con.close()
    return out


def _image(path: str, prediction_id: int) -> bytes | None:
    return read_images(path, [prediction_id]).get(int(prediction_id))


def _thumbnail_uri(png: bytes, size: int = 160) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as src:
            img = src.convert("RGB")
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# --- inline SVG plots -----------------------------------------------------------------------------

_COLOURS = ("#1f5fbf", "#e08a00", "#17803d", "#b3261e", "#6b3fb5", "#00838f", "#8d6e63", "#c2185b")


def _esc(text: object) -> str:
    from lineguard.escaping import escape_html

    return escape_html(text)


def _fmt(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def _downsample(x: np.ndarray, y: np.ndarray, n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= n:
        return x, y
    edges = np.linspace(0, len(x), n + 1).astype(int)
    return (np.array([x[a:b].mean() for a, b in itertools.pairwise(edges)]),
            np.array([np.nanmean(y[a:b]) if np.isfinite(y[a:b]).any() else np.nan
                      for a, b in itertools.pairwise(edges)]))


def svg_lines(series: Sequence[tuple[str, np.ndarray, np.ndarray]], *, title: str, y_label: str = "",
              threshold: float | None = None, band: tuple[float, float] | None = None,
              marks: Sequence[float] = (), x_time: bool = True, y_range: tuple[float, float] | None = None,
              width: int = 760, height: int = 230) -> str:
    """Lines (name, x, y) with an optional dashed threshold, a shaded band and vertical marks (alarms)."""
    pts = [(np.asarray(x, float), np.asarray(y, float)) for _, x, y in series]
    xs = np.concatenate([x for x, _ in pts]) if pts else np.zeros(0)
    ys = np.concatenate([y for _, y in pts]) if pts else np.zeros(0)
    ok = np.isfinite(ys)
    if not ok.any():
        return "<p class='nodata'>no data</p>"
    lo, hi = (float(np.min(ys[ok])), float(np.max(ys[ok]))) if y_range is None else y_range
    extra = [v for v in ((threshold,) + (band or ())) if v is not None and math.isfinite(v)]
    if y_range is None and extra:
        lo, hi = min(lo, *extra), max(hi, *extra)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    x0, x1 = float(np.min(xs)), float(np.max(xs))
    L, R, T, B = 64, 12, 24, 34

    def sx(v: float) -> float:
        return L + (width - L - R) * (v - x0) / ((x1 - x0) or 1)

    def sy(v: float) -> float:
        return height - B - (height - B - T) * (v - lo) / (hi - lo)

    out = [f"<svg viewBox='0 0 {width} {height}' role='img' xmlns='http://www.w3.org/2000/svg'>"
           f"<title>{_esc(title)}</title>",
           f"<text x='{L}' y='15' class='t'>{_esc(title)}</text>"]
    if band is not None and all(math.isfinite(b) for b in band):
        out.append(f"<rect x='{L}' y='{sy(band[1]):.1f}' width='{width - L - R}' "
                   f"height='{max(1.0, sy(band[0]) - sy(band[1])):.1f}' fill='#cfe3ff' opacity='0.6'/>")
    for m in marks:
        if x0 <= m <= x1:
            out.append(f"<line x1='{sx(m):.1f}' x2='{sx(m):.1f}' y1='{T}' y2='{height - B}' stroke='#b3261e' "
                       "stroke-width='1' opacity='0.35'/>")
    if threshold is not None:
        out.append(f"<line x1='{L}' x2='{width - R}' y1='{sy(threshold):.1f}' y2='{sy(threshold):.1f}' "
                   "stroke='#b3261e' stroke-width='2' stroke-dasharray='6 4'/>"
                   f"<text x='{width - R - 4}' y='{sy(threshold) - 4:.1f}' text-anchor='end' class='a' "
                   "fill='#b3261e'>alarm threshold</text>")
    for i, (_name, x, y) in enumerate(series):
        xd, yd = _downsample(np.asarray(x, float), np.asarray(y, float))
        colour = _COLOURS[i % len(_COLOURS)]
        faint = str(_name).startswith("interval")  # an interval's bounds: thin, grey, dashed
        d, pen = [], "M"
        for a, b in zip(xd, yd, strict=True):
            if not math.isfinite(b):
                pen = "M"
                continue
            d.append(f"{pen}{sx(a):.1f} {sy(b):.1f}")
            pen = "L"
        if d:
            style = "stroke='#9aa3ad' stroke-width='1' stroke-dasharray='4 3'" if faint else f"stroke='{colour}' stroke-width='1.8'"
            out.append(f"<path d='{' '.join(d)}' fill='none' {style}/>")
    out.append(f"<line x1='{L}' x2='{width - R}' y1='{height - B}' y2='{height - B}' stroke='#ccc'/>")
    out.append(f"<text x='{L - 6}' y='{sy(hi - pad) + 4:.1f}' text-anchor='end' class='a'>{_fmt(hi - pad)}</text>"
               f"<text x='{L - 6}' y='{sy(lo + pad) + 4:.1f}' text-anchor='end' class='a'>{_fmt(lo + pad)}</text>")

    def xlabel(v: float) -> str:
        if x_time:
            return datetime.fromtimestamp(v, UTC).strftime("%m-%d %H:%M")
        return f"{v:.0f}"

    out.append(f"<text x='{L}' y='{height - 12}' class='a'>{_esc(xlabel(x0))}</text>"
               f"<text x='{width - R}' y='{height - 12}' text-anchor='end' class='a'>{_esc(xlabel(x1))}</text>")
    if y_label:
        out.append(f"<text x='{width / 2:.0f}' y='{height - 12}' text-anchor='middle' class='a'>{_esc(y_label)}</text>")
    if len(series) > 1:
        lx = L + 8
        for i, (name, _, _) in enumerate(series):
            swatch = "#9aa3ad" if str(name).startswith("interval") else _COLOURS[i % len(_COLOURS)]
            out.append(f"<rect x='{lx}' y='{T + 2}' width='10' height='10' fill='{swatch}'/>"
                       f"<text x='{lx + 14}' y='{T + 11}' class='a'>{_esc(name)}</text>")
            lx += 24 + 7 * min(len(str(name)), 40)
    out.append("</svg>")
    return "".join(out)


def svg_bars(rows: Sequence[tuple[str, float, str]], *, title: str, width: int = 760) -> str:
    """Horizontal bars (label, value 0..1, note), drawn as percentages."""
    if not rows:
        return "<p class='nodata'>no data</p>"
    h, L, R = 28, 230, 150
    height = 28 + h * len(rows)
    top = max(1e-9, max(v for _, v, _ in rows))
    out = [f"<svg viewBox='0 0 {width} {height}' role='img' xmlns='http://www.w3.org/2000/svg'><title>{_esc(title)}</title>",
           f"<text x='4' y='15' class='t'>{_esc(title)}</text>"]
    for i, (label, v, note) in enumerate(rows):
        y = 24 + i * h
        w = (width - L - R) * v / top
        out.append(f"<text x='{L - 8}' y='{y + 17}' text-anchor='end' class='a'>{_esc(str(label)[:40])}</text>"
                   f"<rect x='{L}' y='{y + 4}' width='{max(1.0, w):.1f}' height='{h - 10}' fill='#1f5fbf'/>"
                   f"<text x='{L + w + 6:.1f}' y='{y + 17}' class='a'>{100 * v:.1f} % {_esc(note)}</text>")
    out.append("</svg>")
    return "".join(out)


# --- the sections ---------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p class='nodata'>no data</p>"
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v: Any) -> str:
    return "–" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.1f} %"


def _bins(t: np.ndarray, n: int = 60) -> np.ndarray:
    """Bin index of each time: about ``n`` equal time bins over the range."""
    if len(t) == 0:
        return np.zeros(0, int)
    span = float(t.max() - t.min()) or 1.0
    return np.minimum(((t - t.min()) / span * n).astype(int), n - 1)


def _classes(data: StoreData, bundle: Any) -> tuple[str, str | None]:
    """(positive class, negative class): from the bundle, else from the labels of rejects and passes."""
    if bundle is not None:
        neg = next((c for c in bundle.classes if c != bundle.positive_class), None)
        return str(bundle.positive_class), neg
    rej = [lab for lab, r in zip(data.label, data.rejected, strict=True) if r]
    acc = [lab for lab, r in zip(data.label, data.rejected, strict=True) if not r]
    pos = max(set(rej), key=rej.count) if rej else "bad"
    neg = max(set(acc), key=acc.count) if acc else None
    return pos, neg


@dataclass
class DriftReplay:
    """The bundle's drift detectors run again over a store's frames (:func:`replay_drift`).

    Frame numbers (``frames``, and ``frame`` / ``since`` of each alarm) index the frames of the
    :class:`StoreData` replayed, in id order. ``alarms`` are the monitor's last 1,000 (what the report
    lists); ``fired`` every alarm raised, in order.
    """

    names: list[str]
    frames: np.ndarray  # sampled frame indices
    levels: np.ndarray  # frames x signals, CUSUM / h
    h: np.ndarray
    alarms: list[dict[str, Any]]
    note: str = ""
    fired: list[dict[str, Any]] = field(default_factory=list)


def replay_drift(data: StoreData, bundle: Any) -> DriftReplay | str:
    """Run the bundle's calibrated monitor over the stored frames' signals; a reason string when it cannot.

    The detectors start from rest at the first frame of ``data`` (the start of ``since`` when the
    store was read with one), as the station's monitor did when it started.
    """
    from lineguard.monitor.online import Monitor

    if bundle is None:
        return ("the alarm thresholds come from the bundle's monitoring reference: pass --bundle to replay the "
                "drift detectors over these frames")
    try:
        mon = Monitor.from_bundle(bundle)
    except MonitorError as exc:
        return f"the bundle has no monitoring reference ({exc})"
    names = list(mon.names)
    step = max(1, data.n // MAX_POINTS)
    frames, levels, fired = [], [], []
    for i in range(data.n):
        fired += mon.update(data.stats[i], None, float(data.score[i]), data.recipe[i], time=float(data.time[i]),
                            rejected=bool(data.rejected[i]))
        if i % step == 0 or i == data.n - 1:
            st = mon.cusum_state
            frames.append(i)
            levels.append(np.maximum(st.upper, st.lower) / mon.h)
    alarms = [a.to_dict() for a in mon.alarms]
    note = "" if len(mon.alarms) < (mon.alarms.maxlen or 0) else f"only the last {mon.alarms.maxlen} alarms are listed"
    return DriftReplay(names, np.array(frames), np.array(levels), np.asarray(mon.h, float), alarms, note,
                       [a.to_dict() for a in fired])


def _section_signals(data: StoreData, replay: DriftReplay | str, bundle: Any) -> str:
    out = ["<h2>1. Signals over time</h2>"]
    names = sorted({k for s in data.stats for k in s})
    if not names:
        return out[0] + "<p class='nodata'>no data: the stored records carry no image statistics</p>"
    ref_stats = ((bundle.meta.get("reference") or {}).get("image_stats") or {}) if bundle is not None else {}
    if isinstance(replay, str):
        out.append(f"<p class='note'>{_esc(replay)}</p>")
    else:
        active = {a["signal"] for a in replay.alarms}
        out.append(f"<p>Replayed the bundle's calibrated CUSUM detectors over {data.n:,} frames: "
                   f"{len(replay.alarms)} alarms on {len(active)} signals. A level of 1 is the alarm threshold "
                   f"<i>h</i>.{(' ' + _esc(replay.note)) if replay.note else ''}</p>")
        # One row per signal and direction: a persisting change fires again after each CUSUM restart.
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for a in replay.alarms:
            groups.setdefault((a["signal"], a["direction"]), []).append(a)
        rows = []
        for (signal, way), fired in sorted(groups.items(), key=lambda kv: kv[1][0]["frame"]):
            first = fired[0]
            rows.append([signal, way, _stamp(first.get("time")), first["since"], first["frame"], len(fired),
                         f"{max((a['shift_sd'] for a in fired), key=abs):+.1f}",
                         ", ".join(sorted({a.get("recipe") or "(none)" for a in fired}))])
        out.append(_table(["signal", "way", "first alarm", "changed since frame", "first alarm at frame", "alarms",
                           "largest shift (sd)", "recipes"], rows))
    for name in names:
        vals = np.array([float(s.get(name, np.nan)) if isinstance(s.get(name), int | float) else np.nan for s in data.stats])
        ref = ref_stats.get(name) if isinstance(ref_stats, dict) else None
        band = None
        if isinstance(ref, dict):
            q = ref.get("quantiles") or {}
            lo, hi = q.get("0.01", q.get("0.05")), q.get("0.99", q.get("0.95"))
            if isinstance(lo, int | float) and isinstance(hi, int | float):
                band = (float(lo), float(hi))
        marks: list[float] = []
        if not isinstance(replay, str):
            marks = [float(a["time"]) for a in replay.alarms if a["signal"] == name and a.get("time") is not None]
        out.append("<div class='pair'>")
        out.append(svg_lines([(name, data.time, vals)], title=f"{name}: value per frame"
                             + (" (band: training data 1-99 %)" if band else ""), band=band, marks=marks))
        if not isinstance(replay, str) and name in replay.names:
            j = replay.names.index(name)
            h_text = f"h = {replay.h[j]:.2f}" if math.isfinite(replay.h[j]) else "constant in the reference: never alarms"
            out.append(svg_lines([(name, data.time[replay.frames], replay.levels[:, j])],
                                 title=f"{name}: CUSUM level ({h_text})", threshold=1.0, marks=marks))
        out.append("</div>")
    if not isinstance(replay, str):
        for name in [n for n in replay.names if n not in names]:
            out.append(f"<p class='nodata'>{_esc(name)}: no data (this signal needs the model's embedding, which "
                       "the store does not keep)</p>")
    return "".join(out)


def _section_rejects(data: StoreData) -> str:
    out = ["<h2>2. Reject rate per recipe</h2>"]
    if not data.n:
        return out[0] + "<p class='nodata'>no data</p>"
    recipes = sorted({r or "" for r in data.recipe})
    rec = np.array([r or "" for r in data.recipe])
    rows = []
    for r in recipes:
        m = rec == r
        rows.append((r or "(none)", float(data.rejected[m].mean()), f"{int(data.rejected[m].sum())}/{int(m.sum())}"))
    out.append(svg_bars(rows, title="reject rate per recipe"))
    b = _bins(data.time)
    series = []
    for r in recipes:
        xs, ys = [], []
        for k in np.unique(b):
            m = (b == k) & (rec == r)
            if m.any():
                xs.append(float(data.time[m].mean()))
                ys.append(float(data.rejected[m].mean()))
        series.append((r or "(none)", np.array(xs), np.array(ys)))
    out.append(svg_lines(series, title="reject rate over time, per recipe", y_range=(0.0, 1.0)))
    return "".join(out)


def _section_accuracy(data: StoreData, positive: str, window: int, replay: DriftReplay | str) -> str:
    out = ["<h2>3. Estimated vs feedback accuracy</h2>"]
    if data.n < 10:
        return out[0] + "<p class='nodata'>no data: fewer than 10 decisions</p>"
    index = {int(pid): i for i, pid in enumerate(data.ids)}
    fb_idx = np.array([index[f["prediction_id"]] for f in data.feedback if f["prediction_id"] in index], int)
    fb_def = np.array([f["label"] == positive for f in data.feedback if f["prediction_id"] in index], bool)
    alarm_frames = [] if isinstance(replay, str) else [int(a["frame"]) for a in replay.alarms]
    xs, est, lo, hi, meas, trusted = [], [], [], [], [], []
    for start in range(0, data.n, window):
        end = min(data.n, start + window)
        if end - start < 10:
            break
        e = cbpe(data.score[start:end], data.rejected[start:end], draws=200, seed=start)
        xs.append(float(data.time[start:end].mean()))
        est.append(e.balanced_accuracy)
        lo.append(e.balanced_accuracy_interval[0])
        hi.append(e.balanced_accuracy_interval[1])
        trusted.append(not any(start <= f < end for f in alarm_frames))
        m = (fb_idx >= start) & (fb_idx < end)
        meas.append(measured(fb_def[m], data.rejected[fb_idx[m]]).balanced_accuracy if m.sum() >= 5 else np.nan)
    x = np.array(xs)
    series = [("estimated (CBPE)", x, np.array(est)), ("interval (95 %)", x, np.array(lo)), ("interval ", x, np.array(hi))]
    if np.isfinite(meas).any():
        series.append(("feedback-measured (>= 5 labels per window)", x, np.array(meas)))
    out.append(svg_lines(series, title=f"balanced accuracy per window of {window} frames", y_range=(0.0, 1.0)))
    untrusted = sum(1 for t in trusted if not t)
    if untrusted:
        out.append(f"<p class='note'>{untrusted} of {len(trusted)} windows had a drift alarm: their estimate is not "
                   "trustworthy (the calibrated scores' promise does not hold under input drift).</p>")
    total = cbpe(data.score, data.rejected, draws=200)
    rows = [["estimated, all frames", f"{total.n:,}", _pct(total.balanced_accuracy), _pct(total.false_reject_rate),
             _pct(total.escape_rate)]]
    if len(fb_idx):
        mm = measured(fb_def, data.rejected[fb_idx])
        ee = cbpe(data.score[fb_idx], data.rejected[fb_idx], draws=200)
        rows += [["estimated, labelled frames", f"{ee.n:,}", _pct(ee.balanced_accuracy), _pct(ee.false_reject_rate),
                  _pct(ee.escape_rate)],
                 ["measured on feedback", f"{mm.n:,}", _pct(mm.balanced_accuracy), _pct(mm.false_reject_rate),
                  _pct(mm.escape_rate)]]
    else:
        out.append("<p class='nodata'>no feedback yet: the measured side has no data</p>")
    out.append(_table(["", "frames", "balanced accuracy", "false-reject rate", "escape rate"], rows))
    return "".join(out)


def _section_shadow(data: StoreData) -> str:
    out = ["<h2>4. Shadow agreement</h2>"]
    if not data.shadow:
        why = "no shadow table in the store" if data.shadow is None else "its shadow table is empty"
        return out[0] + f"<p class='nodata'>no data: no challenger model ran in shadow on this station ({why})</p>"
    index = {int(pid): i for i, pid in enumerate(data.ids)}
    rows = [(index[s["prediction_id"]], s["agree"], s["version"]) for s in data.shadow if s["prediction_id"] in index]
    if not rows:
        return out[0] + "<p class='nodata'>no data in this time range</p>"
    idx = np.array([r[0] for r in rows])
    agree = np.array([r[1] for r in rows], float)
    b = _bins(data.time[idx])
    xs = np.array([data.time[idx][b == k].mean() for k in np.unique(b)])
    ys = np.array([agree[b == k].mean() for k in np.unique(b)])
    out.append(svg_lines([("agreement", xs, ys)], title="champion / challenger agreement over time", y_range=(0.0, 1.0)))
    table = []
    for v in sorted({r[2] for r in rows}):
        m = np.array([r[2] == v for r in rows])
        table.append([v or "(challenger)", int(m.sum()), _pct(agree[m].mean()), int((1 - agree[m]).sum())])
    out.append(_table(["challenger", "frames", "agreement", "disagreements"], table))
    return "".join(out)


def _stamp(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "–"


def _gallery(data: StoreData, picks: Sequence[tuple[int, str]]) -> str:
    cells = []
    for pid, caption in picks:
        png = _image(data.path, pid)
        uri = _thumbnail_uri(png) if png else None
        if uri is None:
            continue
        cells.append(f"<figure><img src='{uri}' alt='frame {pid}'><figcaption>{_esc(caption)}</figcaption></figure>")
    return "<div class='gallery'>" + "".join(cells) + "</div>" if cells else "<p class='nodata'>no data: no kept image</p>"


def _section_frames(data: StoreData, replay: DriftReplay | str, positive: str) -> str:
    out = ["<h2>5. Drifted and disputed frames</h2>", "<h3>At the drift alarms</h3>"]
    if isinstance(replay, str) or not replay.alarms:
        out.append("<p class='nodata'>no data: " + _esc("no drift alarm" if not isinstance(replay, str) else replay) + "</p>")
    else:
        picks, seen = [], set()
        for a in replay.alarms:
            start = int(a["frame"])
            pid = next((int(data.ids[i]) for i in range(max(0, start - 5), min(data.n, start + 200))
                        if int(data.ids[i]) in data.has_image), None)
            if pid is None or pid in seen:
                continue
            seen.add(pid)
            picks.append((pid, f"#{pid} {a['signal']} {a['direction']} ({a['shift_sd']:+.1f} sd) "
                               f"recipe {a.get('recipe') or '(none)'}"))
            if len(picks) >= THUMBS:
                break
        out.append(_gallery(data, picks))
    out.append("<h3>Disputed by feedback</h3>")
    index = {int(pid): i for i, pid in enumerate(data.ids)}
    disputed = []
    for f in data.feedback[::-1]:
        i = index.get(f["prediction_id"])
        if i is None or (f["label"] == positive) == bool(data.rejected[i]):
            continue
        disputed.append((f["prediction_id"], f"#{f['prediction_id']} decided {'reject' if data.rejected[i] else 'pass'} "
                                              f"(score {data.score[i]:.3f}), operator: {f['label']}; recipe "
                                              f"{data.recipe[i] or '(none)'}"))
        if len(disputed) >= THUMBS:
            break
    out.append(_gallery(data, disputed) if disputed else "<p class='nodata'>no data: no feedback contradicts a decision</p>")
    return "".join(out)


def _score_curve(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)[0].astype(float)
    return np.asarray(counts / max(1.0, counts.sum()))


def _section_outputs(data: StoreData, bundle: Any, window: int) -> str:
    from lineguard.monitor.outputs import MIN_FRAMES, output_report, validation_scores

    out = ["<h2>7. Model outputs against the reference and the previous model</h2>"]
    if not data.n:
        return out[0] + "<p class='nodata'>no data</p>"
    current = str(bundle.version) if bundle is not None else data.version[-1]
    validation = None
    if bundle is not None:
        try:
            validation = validation_scores(bundle)
        except (MonitorError, OSError, ValueError) as exc:
            out.append(f"<p class='note'>the bundle's validation scores cannot be read: {_esc(exc)}</p>")
    report = output_report(data.score, data.rejected, data.recipe, data.version, current_version=current,
                           threshold_for=bundle.decision.threshold_for if bundle is not None else None,
                           validation=validation, window=max(window, MIN_FRAMES))
    if not report["available"]:
        return out[0] + f"<p class='nodata'>no data: {_esc(report.get('reason', ''))}</p>"
    prev = report["previous_version"]
    out.append(f"<p>The last {report['window']:,} decisions per recipe of version <code>{_esc(current)}</code>"
               + (f", against version <code>{_esc(prev)}</code>'s last decisions on this line" if prev else
                  " (no earlier version decided on this line)")
               + (" and against the bundle's validation scores" if validation is not None else "")
               + f". Overall: <b>{_esc(report['verdict'])}</b>.</p>")
    if validation is None:
        out.append("<p class='note'>" + _esc("Pass --bundle (the bundle that decides now) to compare with its "
                                              "validation scores." if bundle is None else
                                              report.get("reference_reason", "")) + "</p>")

    def cells(c: dict[str, Any] | None) -> list[Any]:
        if not c:
            return ["–", "–", "–", "–"]
        st, rt = c.get("scores") or {}, c.get("reject_rate") or {}
        p = st.get("ks_p_value")
        return [c["verdict"], "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}"),
                "–" if st.get("psi") is None else f"{st['psi']:.2f}", _pct(rt.get("reference_rate"))]

    rows = [[r["recipe"] or "(none)", f"{r['n']:,}", _pct(r["reject_rate"]), *cells(r.get("reference")),
             *cells(r.get("previous"))] for r in report["per_recipe"]]
    out.append(_table(["recipe", "frames", "reject rate", "vs validation", "KS p", "PSI", "expected reject rate",
                       "vs previous", "KS p", "PSI", "previous reject rate"], rows))
    notes = [c["message"] for r in report["per_recipe"] for c in (r.get("reference"), r.get("previous"))
             if c and c["verdict"] not in ("stable",)]
    if notes:
        out.append("<ul>" + "".join(f"<li>{_esc(m)}</li>" for m in notes) + "</ul>")
    edges = np.linspace(0.0, 1.0, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    rec = np.array([r or "" for r in data.recipe], dtype=object)
    ver = np.array(data.version, dtype=object)
    for r in report["per_recipe"][:6]:
        name = r["recipe"] or ""
        mine = np.flatnonzero((ver == current) & (rec == name))[-report["window"]:]
        series = [(f"version {current}", centres, _score_curve(data.score[mine], edges))]
        if prev is not None:
            theirs = np.flatnonzero((ver == prev) & (rec == name))[-report["window"]:]
            if len(theirs):
                series.append((f"version {prev}", centres, _score_curve(data.score[theirs], edges)))
        if validation is not None:
            vs, _, vr = validation
            own = vs[vr == name] if len(vr) and int(np.sum(vr == name)) >= 30 else vs
            series.append(("validation split", centres, _score_curve(own, edges)))
        out.append(svg_lines(series, title=f"{name or '(none)'}: share of frames per score", x_time=False,
                             y_label="score (calibrated probability of a defect)"))
    return "".join(out)


def _section_kpis(data: StoreData, bundle: Any, positive: str, shifts: Sequence[int], tz: str) -> str:
    out = ["<h2>6. KPIs per shift and per bundle version</h2>"]
    if not data.n:
        return out[0] + "<p class='nodata'>no data</p>"
    if bundle is not None:
        cost = bundle.decision.cost
        cfr, cmd = float(cost.false_reject), float(cost.missed_defect)
        out.append(f"<p>Cost matrix of the bundle: a false reject costs {cfr:g}, an escape {cmd:g}.</p>")
    else:
        cfr = cmd = 1.0
        out.append("<p class='note'>Costs are 1 per error: pass --bundle for the bundle's cost matrix.</p>")
    book = KpiBook(cfr, cmd, tuple(shifts), tz)
    for i in range(data.n):
        book.add(float(data.time[i]), data.recipe[i], data.version[i], float(data.score[i]), bool(data.rejected[i]))
    index = {int(pid): i for i, pid in enumerate(data.ids)}
    for f in data.feedback:
        k = index.get(f["prediction_id"])
        if k is not None:
            book.add_feedback(float(data.time[k]), data.recipe[k], data.version[k], bool(data.rejected[k]),
                              f["label"] == positive)
    header = ["", "inspected", "rejected", "reject rate", "expected escapes", "expected false rejects", "expected cost",
              "feedback", "counted escapes", "counted false rejects", "counted cost"]

    def line(name: str, r: dict[str, Any]) -> list[Any]:
        return [name, f"{r['inspected']:,}", f"{r['rejected']:,}", _pct(r["reject_rate"]), f"{r['expected_escapes']:.1f}",
                f"{r['expected_false_rejects']:.1f}", f"{r['expected_cost']:.1f}", r["feedback"], r["counted_escapes"],
                r["counted_false_rejects"], f"{r['counted_cost']:.1f}"]

    out.append(f"<h3>per shift (starting at {', '.join(f'{h:02d}:00' for h in shifts)}, {_esc(tz)})</h3>")
    out.append(_table(header, [line(r["shift"], r) for r in book.table(("shift",))]))
    out.append("<h3>per bundle version</h3>")
    out.append(_table(header, [line(r["bundle_version"], r) for r in book.table(("bundle_version",))]))
    out.append("<h3>per recipe</h3>")
    out.append(_table(header, [line(r["recipe"] or "(none)", r) for r in book.table(("recipe",))]))
    out.append("<p class='note'>Expected escapes and false rejects come from the calibrated scores and hold while the "
               "inputs are in distribution; counted ones are what operator feedback found on the labelled frames.</p>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1100px;
color:#1b1f24;padding:0 16px}h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:2px solid #d5d9df}
table{border-collapse:collapse;margin:8px 0;font-size:.9rem}th,td{border-bottom:1px solid #d5d9df;padding:4px 8px;
text-align:right;overflow-wrap:anywhere}th{overflow-wrap:normal}th:first-child,td:first-child{text-align:left}svg{width:100%;height:auto;
display:block;margin:6px 0}svg .t{font-size:13px;font-weight:600}svg .a{font-size:11px;fill:#5b6470}
.nodata{color:#8a5a00;background:#fff2d6;padding:6px 10px;border-radius:6px}.note{color:#5b6470}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px}figure img{width:160px;height:160px;object-fit:contain;background:#20242a;border-radius:6px}
figcaption{font-size:.8rem;overflow-wrap:anywhere}
"""


def render_report(data: StoreData, *, bundle: Any = None, window: int = 500, shifts: Sequence[int] = DEFAULT_SHIFTS,
                  tz: str = "UTC", title: str = "") -> str:
    """The HTML page (module docstring) for ``data``; ``bundle`` (a loaded edge bundle) adds the drift replay,
    the reference bands, the classes and the cost matrix."""
    if window < 10:
        raise MonitorError(f"the estimate window must hold at least 10 frames, got {window}")
    positive, _neg = _classes(data, bundle)
    replay = replay_drift(data, bundle) if data.n else "no decisions in this time range"
    span = (f"{_stamp(data.time.min())} to {_stamp(data.time.max())}" if data.n else "no decisions")
    versions = sorted(set(data.version))
    head = [f"<h1>{_esc(title or 'LineGuard monitoring report')}</h1>",
            f"<p>Store <code>{_esc(Path(data.path).name)}</code>: {data.n:,} decisions, {span}; "
            f"bundle versions {_esc(', '.join(versions) or '–')}; {len(data.feedback):,} feedback labels; "
            f"{len(data.has_image):,} kept images. Generated {_esc(_stamp(time.time()))}."
            + (f" Only the newest {data.n:,} decisions are shown." if data.truncated else "") + "</p>"]
    if bundle is not None:
        head.append(f"<p>Bundle <code>{_esc(bundle.name)}</code> version <code>{_esc(bundle.version)}</code>, "
                    f"defect class <code>{_esc(positive)}</code>.</p>")
    body = [_section_signals(data, replay, bundle), _section_rejects(data), _section_accuracy(data, positive, window, replay),
            _section_shadow(data), _section_frames(data, replay, positive), _section_kpis(data, bundle, positive, shifts, tz),
            _section_outputs(data, bundle, window)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title or 'LineGuard monitoring report')}</title><style>{_CSS}</style></head><body>"
            + "".join(head) + "".join(body) + "</body></html>")


def write_report(store: str | os.PathLike[str], out: str | os.PathLike[str] = "monitoring-report.html", *,
                 since: float | None = None, until: float | None = None, bundle: Any = None, window: int = 500,
                 shifts: Sequence[int] = DEFAULT_SHIFTS, tz: str = "UTC", max_rows: int = MAX_ROWS) -> Path:
    """Read ``store`` and write the report to ``out`` (atomically, through :mod:`lineguard.storage`); returns ``out``."""
    from lineguard import storage

    data = read_store(store, since=since, until=until, max_rows=max_rows)
    page = render_report(data, bundle=bundle, window=window, shifts=shifts, tz=tz)
    storage.write_text(str(out), page)
    return Path(out)


