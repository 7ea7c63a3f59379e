"""``lineguard monitor select``: the frames of a station's store most worth a human label.

:func:`select_for_labelling` reads an edge store read-only (:func:`lineguard.monitor.report.read_store`)
and picks ``n`` of the frames whose image the station kept (only those can be labelled). Each candidate
gets the reasons it is worth a label, in this order of worth:

1. ``feedback_disagreement`` -- an operator's latest feedback label is not the label the model decided;
2. ``shadow_disagreement`` -- the challenger running in shadow decided the frame otherwise;
3. ``drift`` -- with the bundle: the frame lies in an *alarm segment* of its calibrated drift monitor,
   replayed over the stored signals (:func:`lineguard.monitor.report.replay_drift`). An alarm's segment
   is its frames from the CUSUM's change point (``since``) to the frame where it fired (``frame``),
   both included: the frames whose evidence raised it. A change that persists fires again after each
   CUSUM restart, so the segments cover the drifted stretch and stop when the alarms stop; frames
   after the last alarm are not flagged. Without the bundle drift is skipped, with a note;
4. ``low_confidence`` -- ``|score - threshold| <= low_confidence_band``: closer means higher;
5. ``coverage`` -- none of the above: picked only when the others cannot fill ``n``, for a spread of
   ordinary frames.

Each reason has a strength in [0, 1] (a confident decision the operator or the challenger
contradicted, a large drift shift, a score near the threshold), and a candidate's ``priority`` is
``rank of its best reason + 0.8 x strength + 0.05 per further reason``, so a better reason always
outranks a worse one. :func:`pick_diverse` then picks greedily: the next pick comes from the best
reason still under its quota (and from a recipe under its quota); within it, the candidate farthest
from every frame picked so far, on standardised per-frame signals and score and on its recipe,
weighted by its strength (a weighted farthest-point choice). No reason and no recipe takes more than ``max_share`` of the
picks while other candidates remain. Ties are broken by a seeded draw: the same store, arguments and
seed give the same picks.

Writing the picks as Label Studio tasks is :func:`lineguard.labelstudio.write_selection` (the
Label Studio formats live there). Numpy and the standard library only; no model is run.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lineguard.monitor.reference import MonitorError
from lineguard.monitor.report import StoreData, read_store, replay_drift

__all__ = ["REASONS", "Pick", "Selection", "drift_segments", "pick_diverse", "select_for_labelling"]

REASONS = ("feedback_disagreement", "shadow_disagreement", "drift", "low_confidence", "coverage")
_RANK = {r: len(REASONS) - 1 - i for i, r in enumerate(REASONS)}  # feedback 4 ... coverage 0
STRENGTH_WEIGHT = 0.8
EXTRA_REASON_BONUS = 0.05
DRIFT_FULL_SD = 4.0  # a drift shift of this many reference sd counts as full strength


@dataclass(frozen=True)
class Pick:
    """One frame chosen for labelling, with what the store says of it and why it was chosen."""

    prediction_id: int
    key: str
    frame_id: str
    station: str
    recipe: str | None
    time: float
    score: float
    decision: str  # "accept" | "reject"
    label: str  # the class the model decided
    threshold: float
    bundle_version: str
    reasons: tuple[str, ...]  # best first
    priority: float
    feedback_label: str = ""  # the operator's latest label, "" without feedback
    detail: str = ""  # one line: what each reason saw

    @property
    def reason(self) -> str:
        """The best reason (what the quotas count)."""
        return self.reasons[0]


@dataclass(frozen=True)
class Selection:
    """What :func:`select_for_labelling` chose: the picks in pick order, and what there was to choose from."""

    store_path: str
    picks: list[Pick]
    candidates: int  # frames with a stored image in the range
    decisions: int  # frames in the range
    available: dict[str, int]  # candidates per best reason
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    bundle: str = ""  # "name:version" of the bundle whose drift monitor was replayed, "" without

    def per_reason(self) -> dict[str, int]:
        """Picks per best reason, in :data:`REASONS` order (reasons with no pick left out)."""
        counts = Counter(p.reason for p in self.picks)
        return {r: counts[r] for r in REASONS if counts[r]}

    def per_recipe(self) -> dict[str, int]:
        """Picks per recipe ("" for frames without one), most first."""
        return dict(Counter(p.recipe or "" for p in self.picks).most_common())


# --- pure parts -----------------------------------------------------------------------------------


def drift_segments(alarms: list[dict[str, Any]], n: int) -> tuple[np.ndarray, list[list[str]]]:
    """Per frame of ``n``: the largest ``|shift_sd|`` of the alarms whose segment ``[since, frame]`` holds it
    (0 when none does), and those alarms' ``signal direction`` names."""
    strength = np.zeros(n)
    names: list[list[str]] = [[] for _ in range(n)]
    for a in alarms:
        lo, hi = max(0, int(a["since"])), min(n - 1, int(a["frame"]))
        if hi < lo:
            continue
        shift = abs(float(a.get("shift_sd") or 0.0))
        if not math.isfinite(shift):
            shift = DRIFT_FULL_SD
        strength[lo : hi + 1] = np.maximum(strength[lo : hi + 1], max(shift, 1e-6))
        tag = f"{a['signal']} {a['direction']}"
        for i in range(lo, hi + 1):
            if tag not in names[i]:
                names[i].append(tag)
    return strength, names


def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns to zero median and unit spread (a constant column becomes 0); missing values sit at the median."""
    x = np.array(x, float)
    if x.size == 0:
        return x
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    x = np.where(np.isfinite(x), x, med)
    sd = x.std(axis=0)
    return np.where(sd > 1e-12, (x - med) / np.where(sd > 1e-12, sd, 1.0), 0.0)


def pick_diverse(
    features: np.ndarray,
    priority: np.ndarray,
    reason: list[str],
    recipe: list[str],
    n: int,
    *,
    max_share: float = 0.5,
    seed: int = 0,
) -> tuple[list[int], set[str]]:
    """Indices of ``n`` candidates in pick order, and the quotas (``reason``, ``recipe``) lifted to fill ``n``.

    ``features``: one standardised row per candidate; ``priority``: :func:`select_for_labelling`'s
    (integer part: the rank of the best reason, fraction: its strength); ``reason`` / ``recipe``: what
    the quotas count. Each pick comes from the best-ranked candidates under both quotas
    (``ceil(max_share * n)`` picks per reason and per recipe); among them, the first pick is the one of
    highest priority, every later one the farthest from the picks so far, its distance weighted by
    ``0.5 + 0.5 x strength``. When no candidate is under both quotas the recipe quota alone holds, then
    the reason quota alone, then none. Ties go to a seeded draw.
    """
    m = len(priority)
    if n < 1:
        raise MonitorError(f"the number of frames to pick must be >= 1, got {n}")
    if not 0.0 < max_share <= 1.0:
        raise MonitorError(f"max_share must be in (0, 1], got {max_share}")
    feats = np.asarray(features, float).reshape(m, -1)
    prio = np.asarray(priority, float)
    tier = np.floor(prio)
    weight = 0.5 + 0.5 * np.clip((prio - tier) / STRENGTH_WEIGHT, 0.0, 1.0)
    jitter = np.random.default_rng(seed).random(m) * 1e-9
    quota = max(1, math.ceil(max_share * n))
    reasons, recipes = np.array(reason, dtype=object), np.array(recipe, dtype=object)
    left = np.ones(m, bool)
    d_min = np.full(m, np.inf)
    per_reason: Counter[str] = Counter()
    per_recipe: Counter[str] = Counter()
    picks: list[int] = []
    lifted: set[str] = set()
    gave_way: tuple[set[str], ...] = (set(), {"reason"}, {"recipe"}, {"reason", "recipe"})
    while len(picks) < min(n, m):
        ok_reason = np.array([per_reason[r] < quota for r in reasons], bool)
        ok_recipe = np.array([per_recipe[r] < quota for r in recipes], bool)
        for k, mask in enumerate((ok_reason & ok_recipe, ok_recipe, ok_reason, np.ones(m, bool))):
            eligible = left & mask
            if eligible.any():
                lifted |= gave_way[k]
                break
        best = eligible & (tier == tier[eligible].max())
        value = prio + jitter if not picks else weight * (d_min + 1e-6) + jitter
        i = int(np.flatnonzero(best)[np.argmax(value[best])])
        picks.append(i)
        left[i] = False
        per_reason[str(reasons[i])] += 1
        per_recipe[str(recipes[i])] += 1
        d_min = np.minimum(d_min, np.sqrt(((feats - feats[i]) ** 2).sum(axis=1)))
    return picks, lifted


# --- over a store ---------------------------------------------------------------------------------


def _signal_matrix(data: StoreData, idx: list[int]) -> np.ndarray:
    """Standardised per-frame signals (the numeric ``stats``) and score of the candidates, and their recipe.

    The recipe is one column per recipe (1 for the frame's own): frames of two recipes lie
    ``sqrt(2)`` standard deviations apart on that account, so the spread reaches every recipe
    without drowning a real difference in the signals.
    """
    names = sorted(
        {
            k
            for i in idx
            for k, v in data.stats[i].items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    cols = np.full((len(idx), len(names) + 1), np.nan)
    for r, i in enumerate(idx):
        s = data.stats[i]
        for c, name in enumerate(names):
            v = s.get(name)
            if isinstance(v, int | float) and not isinstance(v, bool):
                cols[r, c] = float(v)
        cols[r, -1] = float(data.score[i])
    recipes = sorted({data.recipe[i] or "" for i in idx})
    one_hot = np.array([[float((data.recipe[i] or "") == name) for name in recipes] for i in idx]).reshape(
        len(idx), -1
    )
    return np.hstack([_standardise(cols), one_hot if len(recipes) > 1 else np.zeros((len(idx), 0))])


def select_for_labelling(
    store_path: str | os.PathLike[str],
    n: int,
    *,
    bundle: Any = None,
    since: float | None = None,
    until: float | None = None,
    low_confidence_band: float = 0.15,
    seed: int = 0,
    max_share: float = 0.5,
) -> Selection:
    """Pick the ``n`` stored frames most worth a human label, kept diverse (module docstring).

    ``bundle``: the station's loaded bundle (:func:`lineguard.edge.load_bundle`); its monitoring
    reference replays the drift detectors, which flags drifted frames. ``since`` / ``until``: unix
    seconds bounding the frames' time (``[since, until)``). Fewer than ``n`` picks come back when fewer
    frames kept their image. Errors are one-line :class:`MonitorError`: no store or not a store,
    ``n < 1``, a bad band, nothing to pick from.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise MonitorError(f"--for-labelling must be a whole number of frames >= 1, got {n!r}")
    if not 0.0 <= float(low_confidence_band) <= 1.0:
        raise MonitorError(f"the low-confidence band must be within 0..1, got {low_confidence_band}")
    data = read_store(store_path, since=since, until=until)
    if not data.n:
        span = " in this time range" if since is not None or until is not None else ""
        raise MonitorError(f"the store {store_path} holds no decisions{span}: nothing to label")
    idx = [i for i in range(data.n) if int(data.ids[i]) in data.has_image]
    if not idx:
        raise MonitorError(
            f"none of the {data.n:,} decisions in {store_path} kept its image, and only frames with a "
            "stored image can be labelled: the station keeps images by its sample policy "
            "(store.sampling in station.yaml: rejects, low_confidence_band, pass_share) and the disk "
            "policy (store.images); widen it and let the line run"
        )
    notes: list[str] = []
    if data.truncated:
        notes.append(f"only the newest {data.n:,} decisions were read; pass --since/--until for older frames")

    index = {int(pid): i for i, pid in enumerate(data.ids)}
    feedback: dict[int, str] = {}
    for f in data.feedback:  # in id order: the latest feedback of a frame wins
        if f["prediction_id"] in index:
            feedback[f["prediction_id"]] = f["label"]
    shadow = {s["prediction_id"]: s for s in (data.shadow or []) if s["prediction_id"] in index}

    drift = np.zeros(data.n)
    drift_names: list[list[str]] = [[] for _ in range(data.n)]
    bundle_name = ""
    if bundle is None:
        notes.append(
            "drift flags skipped: pass --bundle (the station's bundle) to replay its calibrated drift "
            "detectors over the stored frames"
        )
    else:
        bundle_name = f"{getattr(bundle, 'name', '')}:{getattr(bundle, 'version', '')}"
        replay = replay_drift(data, bundle)
        if isinstance(replay, str):
            notes.append(f"drift flags skipped: {replay}")
        else:
            drift, drift_names = drift_segments(replay.fired, data.n)
            if not replay.fired:
                notes.append(f"the replayed drift detectors raised no alarm over these {data.n:,} frames")

    band = float(low_confidence_band)
    reasons_of: list[tuple[str, ...]] = []
    priority = np.zeros(len(idx))
    details: list[str] = []
    for r, i in enumerate(idx):
        pid = int(data.ids[i])
        margin = abs(float(data.score[i]) - float(data.threshold[i]))
        found: list[tuple[str, float, str]] = []  # reason, strength, detail
        fb = feedback.get(pid)
        if fb is not None and fb != data.label[i]:
            found.append(
                (
                    "feedback_disagreement",
                    min(1.0, 2 * margin),
                    f"operator said {fb}, model decided {data.label[i]}",
                )
            )
        sh = shadow.get(pid)
        if sh is not None and not sh["agree"]:
            other = sh.get("score")
            gap = abs(float(other) - float(data.score[i])) if isinstance(other, int | float) else 0.5
            found.append(
                (
                    "shadow_disagreement",
                    min(1.0, 2 * gap),
                    f"challenger {sh['version'] or '?'} decided {sh.get('decision') or 'otherwise'}"
                    + (f" (score {other:.3f})" if isinstance(other, int | float) else ""),
                )
            )
        if drift[i] > 0:
            found.append(
                (
                    "drift",
                    min(1.0, drift[i] / DRIFT_FULL_SD),
                    f"drift: {', '.join(drift_names[i])} (up to {drift[i]:.1f} sd)",
                )
            )
        if margin <= band:
            found.append(
                (
                    "low_confidence",
                    1.0 - margin / band if band > 0 else 1.0,
                    f"score {float(data.score[i]):.3f} within {margin:.3f} of threshold "
                    f"{float(data.threshold[i]):.3f}",
                )
            )
        if not found:
            found.append(("coverage", 0.0, "no reason: picked for coverage"))
        found.sort(key=lambda x: -_RANK[x[0]])
        reasons_of.append(tuple(x[0] for x in found))
        priority[r] = (
            _RANK[found[0][0]] + STRENGTH_WEIGHT * found[0][1] + EXTRA_REASON_BONUS * (len(found) - 1)
        )
        details.append("; ".join(x[2] for x in found))

    best = [rs[0] for rs in reasons_of]
    recipes = [data.recipe[i] or "" for i in idx]
    order, lifted = pick_diverse(
        _signal_matrix(data, idx), priority, best, recipes, n, max_share=max_share, seed=seed
    )
    if len(set(recipes)) < 2:
        lifted.discard("recipe")  # one recipe: nothing to balance
    for what in sorted(lifted):
        notes.append(
            f"the {what} quota (at most {max_share:.0%} of the picks per {what}) gave way: the other "
            f"{what}s had too few frames to fill the selection"
        )
    if len(idx) < n:
        notes.append(f"only {len(idx):,} frames kept their image: picked all of them, not {n:,}")
    picks = []
    for r in order:
        i = idx[r]
        pid = int(data.ids[i])
        picks.append(
            Pick(
                prediction_id=pid,
                key=data.key[i],
                frame_id=data.frame_id[i],
                station=data.station[i],
                recipe=data.recipe[i],
                time=float(data.time[i]),
                score=float(data.score[i]),
                decision="reject" if data.rejected[i] else "accept",
                label=data.label[i],
                threshold=float(data.threshold[i]),
                bundle_version=data.version[i],
                reasons=reasons_of[r],
                priority=round(float(priority[r]), 6),
                feedback_label=feedback.get(pid, ""),
                detail=details[r],
            )
        )
    available = Counter(best)
    return Selection(
        store_path=str(store_path),
        picks=picks,
        candidates=len(idx),
        decisions=data.n,
        available={r: available[r] for r in REASONS if available[r]},
        notes=notes,
        seed=seed,
        bundle=bundle_name,
    )
