"""The stateful monitor the edge runtime calls once per frame; everything it reports is read from here.

``Monitor.update(stats, embedding, score, recipe)`` standardises the frame's signals
against its recipe's reference, advances one calibrated two-sided CUSUM per signal and
returns the alarms that fired on this frame (usually none). It also keeps the last
``window`` frames for the label-free performance estimate and the windowed two-sample
tests, the KPI tallies, and the operator feedback. ``status()`` is the small, JSON-safe
dict ``/metrics`` and the API read; ``estimate()``, ``report()``, ``feedback_report()`` and
``kpis()`` are heavier and run when asked, not per frame.

Not thread-safe by itself: the runtime calls ``update`` from its loop thread and reads
``status()`` under its own lock (or between frames).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lineguard.monitor.calibrate import Calibration, calibrate_cusum
from lineguard.monitor.drift import CusumState, ks_test, mmd_test, psi, shift_estimate
from lineguard.monitor.estimate import Estimate, atc, cbpe, concept_drift, measured
from lineguard.monitor.kpi import DEFAULT_SHIFTS, KpiBook
from lineguard.monitor.reference import CLIP, EMBEDDING_SIGNALS, MonitorError, Reference, load_reference
from lineguard.monitor.signals import IMAGE_SIGNALS

DEFAULT_ARL0 = 100_000.0
DEFAULT_K = 0.5


@dataclass(frozen=True)
class Alarm:
    """One detector firing: which signal, which way, since which frame, how strongly.

    ``frame`` is the monitor's frame count when it fired, ``since`` the CUSUM's estimate of
    the first changed frame, ``shift_sd`` the estimated size of the change in reference
    standard deviations (signed), ``statistic``/``threshold`` the CUSUM value and its ``h``.
    """

    signal: str
    direction: str  # "up" | "down"
    frame: int
    since: int
    statistic: float
    threshold: float
    shift_sd: float
    recipe: str | None
    time: float | None
    kind: str = "input"

    def message(self) -> str:
        return (f"{self.signal} {self.direction} by {abs(self.shift_sd):.1f} sd since frame {self.since} "
                f"(CUSUM {self.statistic:.1f} > {self.threshold:.1f} at frame {self.frame})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message()}


def _threshold_fn(thresholds: Callable[[str | None], float] | Mapping[str, float] | float,
                  default: float) -> Callable[[str | None], float]:
    if callable(thresholds):
        return thresholds
    if isinstance(thresholds, Mapping):
        table = {str(k): float(v) for k, v in thresholds.items()}
        return lambda recipe: table.get(recipe or "", default)
    value = float(thresholds)
    return lambda _recipe: value


class Monitor:
    """Per-frame drift detection, windowed estimates, KPIs and feedback for one station and bundle.

    ``reference``: the bundle's :class:`Reference`. ``thresholds``: the decision threshold
    per recipe (a callable such as ``Decision.threshold_for``, a mapping, or one number),
    used when ``update`` is not told the decision. ``arl0``: the promised mean number of
    clean frames between false alarms, all signals together; the thresholds shipped in the
    bundle are used when they were calibrated for the same ``arl0`` and ``k``, otherwise the
    monitor calibrates them now (about a second). ``clear_after``: frames without a new
    alarm after which a signal counts as back in distribution.
    """

    def __init__(
        self,
        reference: Reference,
        *,
        thresholds: Callable[[str | None], float] | Mapping[str, float] | float = 0.5,
        default_threshold: float = 0.5,
        cost_false_reject: float = 1.0,
        cost_missed_defect: float = 1.0,
        arl0: float = DEFAULT_ARL0,
        k: float = DEFAULT_K,
        window: int = 1000,
        clear_after: int = 1000,
        shifts: Sequence[int] = DEFAULT_SHIFTS,
        tz: str = "UTC",
        bundle_version: str = "",
        seed: int = 0,
    ) -> None:
        if window < 10:
            raise MonitorError(f"the monitor window must hold at least 10 frames, got {window}")
        self.reference = reference
        self.names = reference.names
        self._n_image = sum(1 for n in self.names if n not in EMBEDDING_SIGNALS)
        if tuple(self.names[: self._n_image]) != IMAGE_SIGNALS[: self._n_image]:
            raise MonitorError(f"the reference's signals {list(self.names)} are not this LineGuard's "
                               f"{list(IMAGE_SIGNALS)}; re-export the bundle")
        self._pca = reference.pca if any(n in EMBEDDING_SIGNALS for n in self.names) else None
        self.calibration = self._calibration(arl0, k, seed)
        self.k, self.h = self.calibration.k, self.calibration.h
        self._threshold = _threshold_fn(thresholds, default_threshold)
        self.bundle_version = bundle_version
        self.window = int(window)
        self.clear_after = int(clear_after)
        self.kpi = KpiBook(cost_false_reject, cost_missed_defect, tuple(shifts), tz)
        m = len(self.names)
        self._up, self._lo = np.zeros(m), np.zeros(m)
        self._up_since, self._lo_since = np.zeros(m, np.int64), np.zeros(m, np.int64)
        self._fired = False
        self._x = np.zeros(m)
        self._inv_sqrt_eig = 1.0 / np.sqrt(self._pca.eigenvalues) if self._pca is not None else np.zeros(0)
        self._rows: dict[str | None, int] = {}
        ref = reference  # per standardisation row: centre, 1/scale, offset, 1/spread (Reference.standardise, fused)
        self._affine = [(ref.centre[i], 1.0 / ref.scale[i], ref.offset[i], 1.0 / ref.spread[i])
                        for i in range(len(ref.centre))]
        self.frames = 0
        self.alarms: deque[Alarm] = deque(maxlen=1000)
        self.active: dict[str, Alarm] = {}
        self.alarm_count = 0
        kdim = self._pca.components.shape[0] if self._pca is not None else 0
        self._z = np.zeros((self.window, m))
        self._coords = np.full((self.window, kdim), np.nan)
        self._scores = np.full(self.window, np.nan)
        self._rejected = np.zeros(self.window, bool)
        self._recipe_rows = np.zeros(self.window, np.int64)
        self._recipe_names: list[str | None] = [None] * self.window
        self._alarmed = np.zeros(self.window, bool)  # an input alarm was active at this frame
        self._feedback: deque[tuple[float, bool, bool, str | None]] = deque(maxlen=10_000)
        self._seed = seed

    @classmethod
    def from_bundle(cls, bundle: Any, **kwargs: Any) -> Monitor:
        """A monitor for a loaded :class:`~lineguard.edge.Bundle`: its reference, thresholds, cost and version."""
        ref = load_reference(bundle)
        dec = bundle.decision
        kwargs.setdefault("thresholds", dec.threshold_for)
        kwargs.setdefault("cost_false_reject", dec.cost.false_reject)
        kwargs.setdefault("cost_missed_defect", dec.cost.missed_defect)
        kwargs.setdefault("bundle_version", f"{bundle.name}:{bundle.version}")
        return cls(ref, **kwargs)

    def _calibration(self, arl0: float, k: float, seed: int) -> Calibration:
        cal = self.reference.calibration
        if cal and {"k", "h", "arl0"} <= set(cal):
            shipped = Calibration.from_arrays(cal)
            if (math.isclose(shipped.arl0, arl0) and math.isclose(shipped.k, k)
                    and shipped.h.shape == (len(self.names),)):
                return shipped
        ref = self.reference
        return calibrate_cusum(ref.reference_z(), arl0, k=k, group_sizes=ref.group_sizes(),
                               groups=ref.rows(list(ref.value_recipes)),
                               seed=seed)

    def _cusum(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~lineguard.monitor.drift.cusum_step` in place (the per-frame hot path; a test
        proves both give the same alarms): sides above h restart, then both sides advance."""
        up, lo, h, t = self._up, self._lo, self.h, self.frames
        if self._fired:
            up[up > h] = 0.0
            lo[lo > h] = 0.0
        self._up_since[up <= 0.0] = t
        self._lo_since[lo <= 0.0] = t
        up += z
        up -= self.k
        np.maximum(up, 0.0, out=up)
        lo -= z
        lo -= self.k
        np.maximum(lo, 0.0, out=lo)
        fired_up, fired_down = up > h, lo > h
        self._fired = bool(fired_up.any() or fired_down.any())
        return fired_up, fired_down

    @property
    def cusum_state(self) -> CusumState:
        """The detectors' state as a :class:`~lineguard.monitor.drift.CusumState` (a copy)."""
        return CusumState(self._up.copy(), self._lo.copy(), self._up_since.copy(), self._lo_since.copy(), self.frames)

    def _row(self, recipe: str | None) -> int:
        row = self._rows.get(recipe)
        if row is None:
            row = self._rows[recipe] = self.reference.row(recipe)
        return row

    # --- per frame ---------------------------------------------------------------------------------

    def update(self, stats: Mapping[str, float] | np.ndarray, embedding: np.ndarray | None = None,
               score: float | None = None, recipe: str | None = None, *, time: float | None = None,
               rejected: bool | None = None) -> list[Alarm]:
        """Feed one frame; returns the alarms that fired on it (usually an empty list).

        ``stats``: the frame's :func:`~lineguard.monitor.signals.frame_signals` (or their
        vector). ``embedding``: the model's embedding of the frame (its signals are skipped
        when None). ``score``: the calibrated score; ``rejected`` the decision (derived from
        the recipe's threshold when None). A missing signal never fires.
        """
        n_img = self._n_image
        x = self._x
        if isinstance(stats, np.ndarray):
            x[:n_img] = stats
        else:
            get = stats.get
            x[:n_img] = [get(n, math.nan) for n in IMAGE_SIGNALS[:n_img]]
        slot = self.frames % self.window
        if self._pca is not None:
            pca = self._pca
            if embedding is not None:
                e = np.asarray(embedding, np.float64).ravel() - pca.mean
                proj = pca.components @ e
                w = proj * self._inv_sqrt_eig
                x[n_img] = math.sqrt(float(np.dot(w, w)))
                x[n_img + 1] = math.sqrt(max(float(np.dot(e, e)) - float(np.dot(proj, proj)), 0.0))
                self._coords[slot] = w
            else:
                x[n_img:] = math.nan
                self._coords[slot] = math.nan
        row = self._row(recipe)
        c, inv_s, o, inv_sp = self._affine[row]
        z = x - c
        z *= inv_s
        np.minimum(z, CLIP, out=z)
        np.maximum(z, -CLIP, out=z)
        z -= o
        z *= inv_sp
        z[np.isnan(z)] = 0.0
        up, down = self._cusum(z)
        t = self.frames
        fired: list[Alarm] = []
        if self._fired:
            fired = self._alarms(up, down, recipe, time)
        if self.active and t % 50 == 0:
            self._clear(t)
        self._z[slot] = z
        self._recipe_rows[slot] = row
        self._recipe_names[slot] = recipe
        self._alarmed[slot] = bool(self.active)
        if score is not None:
            s = float(score)
            rej = bool(s >= self._threshold(recipe)) if rejected is None else bool(rejected)
            self._scores[slot] = s
            self._rejected[slot] = rej
            if time is not None:
                self.kpi.add(time, recipe, self.bundle_version, s, rej)
        else:
            self._scores[slot] = math.nan
        self.frames = t + 1
        return fired

    def _alarms(self, up: np.ndarray, down: np.ndarray, recipe: str | None, time: float | None) -> list[Alarm]:
        st = self.cusum_state
        out = []
        t = self.frames
        for j in np.flatnonzero(up | down):
            direction = "up" if up[j] else "down"
            since = int(st.upper_since[j] if up[j] else st.lower_since[j])
            stat = float(st.upper[j] if up[j] else st.lower[j])
            shift = shift_estimate(stat, t - since + 1, self.k)
            alarm = Alarm(self.names[j], direction, t, since, stat, float(self.h[j]),
                          shift if direction == "up" else -shift, recipe, time)
            out.append(alarm)
            self.alarms.append(alarm)
            self.active[alarm.signal] = alarm
            self.alarm_count += 1
        return out

    def _clear(self, t: int) -> None:
        for name in [n for n, a in self.active.items() if t - a.frame >= self.clear_after]:
            del self.active[name]

    # --- feedback -----------------------------------------------------------------------------------

    def feedback(self, score: float, rejected: bool, defect: bool, recipe: str | None = None, *,
                 time: float | None = None) -> None:
        """An operator's true label for a decided frame (its score and decision as recorded)."""
        if not 0.0 <= float(score) <= 1.0:
            raise MonitorError(f"feedback score must be a calibrated probability within 0..1, got {score}")
        self._feedback.append((float(score), bool(rejected), bool(defect), recipe))
        if time is not None:
            self.kpi.add_feedback(time, recipe, self.bundle_version, bool(rejected), bool(defect))

    # --- what the runtime and the API read -------------------------------------------------------------

    @property
    def in_distribution(self) -> bool:
        """False while any input alarm is active."""
        return not self.active

    def status(self) -> dict[str, Any]:
        """Small and JSON-safe: for ``/metrics`` and the API status (cheap: no window statistics)."""
        st = self.cusum_state
        level = np.minimum(np.maximum(st.upper, st.lower) / self.h, 1.0)
        return {
            "frames": self.frames,
            "in_distribution": self.in_distribution,
            "alarms_total": self.alarm_count,
            "active_alarms": [a.to_dict() for a in self.active.values()],
            "cusum_level": {n: float(v) for n, v in zip(self.names, level, strict=True)},
            "arl0": self.calibration.arl0,
            "k": self.k,
            "thresholds": {n: (float(v) if np.isfinite(v) else None) for n, v in zip(self.names, self.h, strict=True)},
            "feedback": len(self._feedback),
        }

    def _window(self) -> np.ndarray:
        n = min(self.frames, self.window)
        if self.frames <= self.window:
            return np.arange(n)
        start = self.frames % self.window
        return np.concatenate([np.arange(start, self.window), np.arange(0, start)])

    def estimate(self, recipe: str | None = None, *, method: str = "cbpe", adjust_prior: bool = False,
                 last: int | None = None) -> Estimate:
        """Label-free performance over the window (or its ``last`` frames), optionally for one recipe.

        Not trustworthy when an input alarm is active now or was during the window.
        """
        idx = self._window()
        if last is not None:
            idx = idx[-int(last):]
        if recipe is not None:
            idx = idx[[self._recipe_names[i] == recipe for i in idx]]
        idx = idx[~np.isnan(self._scores[idx])]
        if not len(idx):
            raise MonitorError("no scored frames in the window" + (f" for recipe {recipe!r}" if recipe else ""))
        scores, rejected = self._scores[idx], self._rejected[idx]
        if method == "cbpe":
            prior = self.reference.prior if np.isfinite(self.reference.prior) else None
            est = cbpe(scores, rejected, train_prior=prior, adjust_prior=adjust_prior and prior is not None,
                       seed=self._seed, recipe=recipe)
        elif method == "atc":
            ref = self.reference
            if not len(ref.val_scores):
                raise MonitorError("ATC needs the validation scores in the bundle's reference")
            val_rej = ref.val_scores >= np.array([self._threshold(None)] * len(ref.val_scores))
            est = atc(scores, rejected, ref.val_scores, ref.val_labels, val_rej, recipe=recipe)
        else:
            raise MonitorError(f"unknown estimate method {method!r}; expected cbpe or atc")
        alarmed = self._alarmed[idx]
        if self.active or alarmed.any():
            names = sorted(self.active) or ["(earlier in the window)"]
            est = est.untrusted(f"input drift alarmed ({', '.join(names)}); the calibrated scores' "
                                "promise does not hold under drift")
        return est

    def feedback_report(self, *, alpha: float = 0.001) -> dict[str, Any]:
        """Measured rates on the frames with feedback, the estimate for the same frames, concept drift."""
        if not self._feedback:
            raise MonitorError("no feedback labels yet")
        scores = np.array([f[0] for f in self._feedback])
        rejected = np.array([f[1] for f in self._feedback])
        labels = np.array([f[2] for f in self._feedback])
        return {
            "measured": measured(labels, rejected).to_dict(),
            "estimated": cbpe(scores, rejected, seed=self._seed).to_dict(),
            "concept_drift": concept_drift(scores, rejected, labels, input_drift=not self.in_distribution,
                                           alpha=alpha).to_dict(),
        }

    def report(self, *, min_frames: int = 50, permutations: int = 200) -> dict[str, Any]:
        """Windowed two-sample tests against the reference: KS and PSI per signal, MMD of the embedding
        (reference rows drawn to the window's recipe mix), KS of the scores against validation."""
        idx = self._window()
        if len(idx) < min_frames:
            raise MonitorError(f"the window holds {len(idx)} frames; a report needs at least {min_frames}")
        ref = self.reference
        ref_z = ref.reference_z()
        out: dict[str, Any] = {"frames": len(idx), "signals": {}}
        for j, name in enumerate(self.names):
            win = self._z[idx, j]
            out["signals"][name] = {"ks": ks_test(ref_z[:, j], win).to_dict(), "psi": psi(ref_z[:, j], win).to_dict()}
        if ref.embedding_coords is not None and self._coords.shape[1]:
            coords = self._coords[idx]
            ok = ~np.isnan(coords).any(axis=1)
            if ok.sum() >= min_frames:
                rng = np.random.default_rng(self._seed)
                ref_rows = ref.rows(list(ref.value_recipes))
                win_rows = self._recipe_rows[idx][ok]
                picks = []
                for r in np.unique(win_rows):
                    pool = np.flatnonzero(ref_rows == r) if r < len(ref.recipes) else np.arange(ref.n)
                    if len(pool) == 0:
                        pool = np.arange(ref.n)
                    picks.append(rng.choice(pool, size=int(np.sum(win_rows == r)), replace=True))
                sample = ref.embedding_coords[np.concatenate(picks)]
                win = coords[ok]
                cap = 300  # MMD is quadratic: both sides subsampled to 300 rows
                if len(win) > cap:
                    win = win[rng.choice(len(win), cap, replace=False)]
                    sample = sample[rng.choice(len(sample), cap, replace=False)]
                out["embedding_mmd"] = mmd_test(sample, win, permutations=permutations, seed=self._seed).to_dict()
        scores = self._scores[idx]
        scores = scores[~np.isnan(scores)]
        if len(scores) >= min_frames and len(ref.val_scores) >= 2:
            out["score_ks"] = ks_test(ref.val_scores, scores).to_dict()
        return out

    def kpis(self, by: Sequence[str] = ("recipe", "shift", "bundle_version")) -> list[dict[str, Any]]:
        """The KPI table (see :mod:`lineguard.monitor.kpi`); estimated counts assume no input drift."""
        return self.kpi.table(by)
