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

from lineguard import LineguardError
from lineguard.monitor.calibrate import Calibration, calibrate_cusum
from lineguard.monitor.drift import CusumState, ks_test, mmd_test, psi, shift_estimate
from lineguard.monitor.estimate import Estimate, atc, cbpe, concept_drift, measured
from lineguard.monitor.kpi import DEFAULT_SHIFTS, KpiBook
from lineguard.monitor.reference import CLIP, EMBEDDING_SIGNALS, MonitorError, Reference, load_reference
from lineguard.monitor.signals import IMAGE_SIGNALS, RAW_PIXELS, ImageSignals

DEFAULT_ARL0 = 100_000.0
DEFAULT_K = 0.5
# The station's monitor advances its detectors 16 frames at a time (Monitor's ``batch``): an alarm
# reaches the line at most 15 frames after its frame (half a second at 30 fps) for a fraction of the
# per-frame cost (TARGETS P8).
EDGE_BATCH = 16


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


def _signals_of(reference: Reference) -> ImageSignals:
    """The :class:`ImageSignals` the reference's image signals were computed with (what frames must be fed)."""
    if reference.signal_source == RAW_PIXELS:
        return ImageSignals(None)
    import json

    from lineguard.preprocess import PreprocessParams

    try:
        return ImageSignals(PreprocessParams.from_dict(json.loads(reference.signal_source)))
    except (ValueError, TypeError, LineguardError) as exc:
        raise MonitorError(f"the monitoring reference's signal source is not a preprocessing ({exc}); "
                           "re-export the bundle") from None


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

    ``batch``: frames the detectors advance together. With 1 (the default) each ``update``
    returns the alarms of its own frame. With ``batch`` > 1, ``update`` queues the frame and
    every ``batch`` frames advances the detectors over all of them in a few whole-array
    operations (the CUSUM's closed form, :meth:`_advance`): the same alarms, with their own
    frame and start, returned by the ``update`` that completes the batch -- up to ``batch - 1``
    frames later -- for a fraction of the per-frame cost. Everything that reads the monitor
    (``status``, ``estimate``, ``report``, ...) first processes what is queued; :meth:`flush`
    does it and returns the alarms not yet returned (at the end of a stream).
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
        batch: int = 1,
    ) -> None:
        if window < 10:
            raise MonitorError(f"the monitor window must hold at least 10 frames, got {window}")
        if not 1 <= batch <= min(window, 1000):
            raise MonitorError(f"the monitor batch must be 1..{min(window, 1000)} frames, got {batch}")
        self.reference = reference
        self.names = reference.names
        self._n_image = sum(1 for n in self.names if n not in EMBEDDING_SIGNALS)
        if tuple(self.names[: self._n_image]) != IMAGE_SIGNALS[: self._n_image]:
            raise MonitorError(f"the reference's signals {list(self.names)} are not this LineGuard's "
                               f"{list(IMAGE_SIGNALS)}; re-export the bundle")
        self._pca = reference.pca if any(n in EMBEDDING_SIGNALS for n in self.names) else None
        self.signals = _signals_of(reference)
        self.calibration = self._calibration(arl0, k, seed)
        self.k, self.h = self.calibration.k, self.calibration.h
        self._threshold = _threshold_fn(thresholds, default_threshold)
        self.bundle_version = bundle_version
        self.window = int(window)
        self.clear_after = int(clear_after)
        self.kpi = KpiBook(cost_false_reject, cost_missed_defect, tuple(shifts), tz)
        m = len(self.names)
        # The CUSUM's two sides as one 2 x m state (row 0 upper, row 1 lower), so a frame is a few
        # whole-array operations (see _step): its statistics, where each excursion began, and h.
        self._state = np.zeros((2, m))
        self._since = np.zeros((2, m), np.int64)
        self._h2 = np.stack([self.h, self.h])
        self._zero2 = np.zeros((2, m))
        self._u = np.zeros((2, m))
        self._mask = np.zeros((2, m), bool)
        self._nan = np.zeros(m, bool)
        self._fired = False
        self._x = np.zeros(m)
        if self._pca is not None:
            pca = self._pca
            self._e = np.zeros(pca.dim)
            self._proj = np.zeros(pca.components.shape[0])
            self._inv_sqrt_eig = 1.0 / np.sqrt(pca.eigenvalues)
        self._rows: dict[str | None, int] = {}
        self._sides = [self._sides_for(row) for row in range(len(reference.centre))]
        self.batch = int(batch)
        self._queued = 0
        self._undelivered: list[Alarm] = []
        if self.batch > 1:
            self._qx = np.zeros((self.batch, m))
            self._qrow = np.zeros(self.batch, np.int64)
            self._qmeta: list[tuple[str | None, float | None]] = []
            self._sides_stack = [np.stack([sides[i] for sides in self._sides]) for i in range(4)]
            if self._pca is not None:
                pca = self._pca
                self._qe = np.zeros((self.batch, pca.dim))
                self._qhas = np.zeros(self.batch, bool)
                # One product gives both the whitened coordinates and the projection.
                self._qmat = np.concatenate([pca.components * self._inv_sqrt_eig[:, None], pca.components])
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
        source = ImageSignals(bundle.preprocess).source
        if ref.signal_source != source:
            raise MonitorError(f"the monitoring reference of bundle '{bundle.source}' was computed on "
                               f"{ref.signal_source[:200]}, not on this bundle's model input ({source}); "
                               "re-export the bundle")
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

    def _sides_for(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Standardisation row ``row`` fused with the slack, for both CUSUM sides at once.

        :meth:`Reference.standardise` is ``z = (clip((x - c) / s, +-CLIP) - o) / sp``; with
        ``sp > 0`` that is ``clip(x * A + B, lo, hi)``, and the sides' increments ``z - k`` and
        ``-z - k`` are ``clip(x * [A, -A] + [B, -B] - k, ...)``: one multiply, add and clip.
        """
        ref, k = self.reference, self.k
        inv_sp = 1.0 / ref.spread[row]
        gain = inv_sp / ref.scale[row]
        bias = -(ref.centre[row] / ref.scale[row] + ref.offset[row]) * inv_sp
        lo, hi = (-CLIP - ref.offset[row]) * inv_sp, (CLIP - ref.offset[row]) * inv_sp
        return (np.stack([gain, -gain]), np.stack([bias - k, -bias - k]),
                np.stack([lo - k, -hi - k]), np.stack([hi - k, -lo - k]))

    def _step(self, x: np.ndarray, row: int, slot: int) -> bool:
        """:func:`~lineguard.monitor.drift.cusum_step` in place, standardisation fused in (the per-frame
        hot path; a test proves both give the same alarms): sides above h restart, then both advance.
        A missing (NaN) signal counts as z = 0. Stores the frame's z in the window; True when a side fired."""
        state, since, u, mask = self._state, self._since, self._u, self._mask
        gain, bias, lo, hi = self._sides[row]
        if self._fired:
            np.greater(state, self._h2, out=mask)
            state[mask] = 0.0
        np.less_equal(state, self._zero2, out=mask)
        np.copyto(since, self.frames, where=mask)
        np.multiply(x, gain, out=u)
        u += bias
        np.minimum(u, hi, out=u)
        np.maximum(u, lo, out=u)
        np.isnan(x, out=self._nan)
        if np.count_nonzero(self._nan):
            u[:, self._nan] = -self.k
        state += u
        np.maximum(state, self._zero2, out=state)
        np.add(u[0], self.k, out=self._z[slot])
        np.greater(state, self._h2, out=mask)
        self._fired = bool(np.count_nonzero(mask))
        return self._fired

    @property
    def cusum_state(self) -> CusumState:
        """The detectors' state as a :class:`~lineguard.monitor.drift.CusumState` (a copy)."""
        self._catch_up()
        st, since = self._state, self._since
        return CusumState(st[0].copy(), st[1].copy(), since[0].copy(), since[1].copy(), self.frames)

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
        the recipe's threshold when None). A missing signal never fires. With ``batch`` > 1: the
        alarms found since the last update that returned any (see the class docstring).
        """
        if self.batch > 1:
            return self._enqueue(stats, embedding, score, recipe, time, rejected)
        n_img = self._n_image
        x = self._x
        if isinstance(stats, np.ndarray):
            x[:n_img] = stats
        else:
            get = stats.get
            x[:n_img] = [get(n, math.nan) for n in IMAGE_SIGNALS[:n_img]]
        t = self.frames
        slot = t % self.window
        if self._pca is not None:
            if embedding is not None:
                pca, e, proj = self._pca, self._e, self._proj
                if not isinstance(embedding, np.ndarray) or embedding.ndim != 1:
                    embedding = np.ravel(np.asarray(embedding, np.float64))
                np.subtract(embedding, pca.mean, out=e)
                np.dot(pca.components, e, out=proj)
                w = proj * self._inv_sqrt_eig
                x[n_img] = math.sqrt(float(np.dot(w, w)))
                x[n_img + 1] = math.sqrt(max(float(np.dot(e, e)) - float(np.dot(proj, proj)), 0.0))
                self._coords[slot] = w
            else:
                x[n_img:] = math.nan
                self._coords[slot] = math.nan
        row = self._rows.get(recipe)
        if row is None:
            row = self._row(recipe)
        fired: list[Alarm] = []
        if self._step(x, row, slot):
            fired = self._alarms(self._mask, self._state, self._since, t, recipe, time)
        if self.active and t % 50 == 0:
            self._clear(t)
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

    def update_many(self, stats: np.ndarray, embeddings: np.ndarray | None = None,
                    scores: Sequence[float] | np.ndarray | None = None, recipe: str | None = None, *,
                    times: Sequence[float] | None = None, rejected: Sequence[bool] | None = None) -> list[Alarm]:
        """Feed N frames of one recipe in order, as N :meth:`update` calls would; returns their alarms together.

        The station's inference batch: ``stats`` N x signals (:meth:`ImageSignals.of_inputs`),
        ``embeddings`` N x dim (None: none of them has one), ``scores``, ``times`` and
        ``rejected`` one per frame (or None). With ``batch`` > 1 the frames are queued with a
        few whole-array copies instead of N calls' worth of per-frame Python -- the same state,
        KPIs and alarms (a test holds it to the per-frame calls).
        """
        stats = np.asarray(stats, np.float64)
        count = len(stats)
        for name, given in (("embeddings", embeddings), ("scores", scores), ("times", times), ("rejected", rejected)):
            if given is not None and len(given) != count:
                raise MonitorError(f"update_many needs one {name} entry per frame: {count} frames, {len(given)} given")
        if self.batch == 1 or count == 1:  # nothing to gain over the per-frame path
            out: list[Alarm] = []
            for i in range(count):
                out += self.update(stats[i], None if embeddings is None else embeddings[i],
                                   None if scores is None else scores[i], recipe,
                                   time=None if times is None else times[i],
                                   rejected=None if rejected is None else rejected[i])
            return out
        row = self._rows.get(recipe)
        if row is None:
            row = self._row(recipe)
        if scores is not None:
            score = np.asarray(scores, np.float64)
            rej = score >= self._threshold(recipe) if rejected is None else np.asarray(rejected, bool)
        n_img, done = self._n_image, 0
        while done < count:
            q = self._queued
            c = min(count - done, self.batch - q)
            part = slice(done, done + c)
            self._qx[q:q + c, :n_img] = stats[part]
            if self._pca is not None:
                self._qhas[q:q + c] = embeddings is not None
                if embeddings is not None:
                    self._qe[q:q + c] = embeddings[part]
            self._qrow[q:q + c] = row
            self._qmeta.extend((recipe, None if times is None else times[i]) for i in range(done, done + c))
            slots = (self.frames + q + np.arange(c)) % self.window
            self._recipe_rows[slots] = row
            for slot in slots.tolist():
                self._recipe_names[slot] = recipe
            if scores is None:
                self._scores[slots] = math.nan
            else:
                self._scores[slots] = score[part]
                self._rejected[slots] = rej[part]
            self._queued = q + c
            if self._queued == self.batch:
                self._advance()
            done += c
        if scores is not None and times is not None:
            add, version = self.kpi.add, self.bundle_version
            for t, s, r in zip(times, score.tolist(), rej.tolist(), strict=True):
                add(t, recipe, version, s, r)
        if not self._undelivered:
            return []
        out, self._undelivered = self._undelivered, []
        return out

    def _alarms(self, fired: np.ndarray, stat: np.ndarray, since: np.ndarray, t: int, recipe: str | None,
                time: float | None) -> list[Alarm]:
        """The alarms of frame ``t``: ``fired``, ``stat`` and ``since`` are 2 x m (upper, lower side)."""
        out = []
        for side, j in zip(*np.nonzero(fired), strict=True):
            direction = "up" if side == 0 else "down"
            start = int(since[side, j])
            value = float(stat[side, j])
            shift = shift_estimate(value, t - start + 1, self.k)
            alarm = Alarm(self.names[j], direction, t, start, value, float(self.h[j]),
                          shift if direction == "up" else -shift, recipe, time)
            out.append(alarm)
            self.alarms.append(alarm)
            self.active[alarm.signal] = alarm
            self.alarm_count += 1
        return out

    # --- batches of frames ---------------------------------------------------------------------------

    def _enqueue(self, stats: Mapping[str, float] | np.ndarray, embedding: np.ndarray | None,
                 score: float | None, recipe: str | None, time: float | None, rejected: bool | None) -> list[Alarm]:
        """Queue one frame (its signals, embedding, recipe; its score and KPIs now); advance a full batch."""
        q = self._queued
        n_img = self._n_image
        x = self._qx[q]
        if isinstance(stats, np.ndarray):
            x[:n_img] = stats
        else:
            get = stats.get
            x[:n_img] = [get(n, math.nan) for n in IMAGE_SIGNALS[:n_img]]
        if self._pca is not None:
            self._qhas[q] = embedding is not None
            if embedding is not None:
                self._qe[q] = embedding if isinstance(embedding, np.ndarray) and embedding.ndim == 1 \
                    else np.ravel(np.asarray(embedding, np.float64))
        row = self._rows.get(recipe)
        if row is None:
            row = self._row(recipe)
        self._qrow[q] = row
        self._qmeta.append((recipe, time))
        slot = (self.frames + q) % self.window
        self._recipe_rows[slot] = row
        self._recipe_names[slot] = recipe
        if score is not None:
            s = float(score)
            rej = bool(s >= self._threshold(recipe)) if rejected is None else bool(rejected)
            self._scores[slot] = s
            self._rejected[slot] = rej
            if time is not None:
                self.kpi.add(time, recipe, self.bundle_version, s, rej)
        else:
            self._scores[slot] = math.nan
        self._queued = q + 1
        if self._queued == self.batch:
            self._advance()
        if not self._undelivered:
            return []
        out, self._undelivered = self._undelivered, []
        return out

    def flush(self) -> list[Alarm]:
        """Advance the detectors over the queued frames now (``batch`` > 1), and return the alarms no
        ``update`` has returned yet (they are returned once: call it when the stream ends)."""
        self._catch_up()
        out, self._undelivered = self._undelivered, []
        return out

    def _catch_up(self) -> None:
        """What every reader calls first: the queued frames processed, their alarms kept for the next ``update``."""
        if self._queued:
            self._advance()

    def _advance(self) -> None:
        """The queued frames through standardisation and both CUSUM sides at once.

        Lindley's closed form: from state ``S0``, ``S_t = max(0, S_{t-1} + u_t)`` is
        ``C_t - min(-S0, min_{j<=t} C_j)`` with ``C`` the running sum of the increments ``u`` --
        a cumulative sum and a running minimum over the batch. When a side passes ``h`` the
        batch is cut there: that frame's alarms are raised, the side restarts, and the rest of
        the batch is advanced from that state (a test proves the alarms equal the per-frame step's).
        """
        nb, t0, n_img = self._queued, self.frames, self._n_image
        x = self._qx[:nb]
        slots = (t0 + np.arange(nb)) % self.window
        if self._pca is not None:
            kdim = self._pca.components.shape[0]
            e = self._qe[:nb] - self._pca.mean
            y = e @ self._qmat.T  # nb x 2k: whitened coordinates, then the projection
            parts = np.add.reduce((y * y).reshape(nb, 2, kdim), axis=2)
            x[:, n_img] = np.sqrt(parts[:, 0])
            x[:, n_img + 1] = np.sqrt(np.maximum(np.einsum("ij,ij->i", e, e) - parts[:, 1], 0.0))
            coords = y[:, :kdim]
            missing = ~self._qhas[:nb]
            if missing.any():
                x[missing, n_img:] = math.nan
                coords[missing] = math.nan
            self._coords[slots] = coords
        rows = self._qrow[:nb]
        if (rows == rows[0]).all():
            gain, bias, lo, hi = self._sides[int(rows[0])]
        else:
            gain, bias, lo, hi = (part[rows] for part in self._sides_stack)
        u = x[:, None, :] * gain
        u += bias
        np.minimum(u, hi, out=u)
        np.maximum(u, lo, out=u)
        nan = np.isnan(u)
        if nan.any():
            u[nan] = -self.k  # a missing signal: z = 0
        self._z[slots] = u[:, 0, :] + self.k
        was_active = bool(self.active)
        self._alarmed[slots] = was_active
        state, since, h2 = self._state, self._since, self._h2
        if self._fired:
            state[state > h2] = 0.0
        start = 0
        fired_last = False
        while start < nb:
            seg = u[start:]
            run = np.cumsum(seg, axis=0)
            low = np.minimum.accumulate(run, axis=0)
            np.minimum(low, -state, out=low)
            stat = run - low
            over = stat > h2
            hits = over.reshape(len(seg), -1).any(axis=1)
            first = int(np.argmax(hits)) if hits.any() else -1
            end = first if first >= 0 else len(seg) - 1
            # Where each side's excursion began: the last frame at whose start the side stood at zero.
            at_zero = np.empty((end + 1, *state.shape), bool)
            np.less_equal(state, 0.0, out=at_zero[0])
            np.less_equal(stat[:end], 0.0, out=at_zero[1:])
            last = end - np.argmax(at_zero[::-1], axis=0)
            np.copyto(since, t0 + start + last, where=at_zero.any(axis=0))
            state[...] = stat[end]
            if first < 0:
                break
            t = t0 + start + first
            recipe, time = self._qmeta[start + first]
            self._undelivered += self._alarms(over[first], state, since, t, recipe, time)
            self._alarmed[slots[start + first:]] = True
            fired_last = start + first == nb - 1
            if not fired_last:
                state[over[first]] = 0.0  # the fired sides restart at the next frame
            start += first + 1
        self._fired = fired_last
        self.frames = t0 + nb
        self._queued = 0
        self._qmeta.clear()
        if self.active and (self.frames // 50 > t0 // 50):
            self._clear(self.frames - 1)

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
        self._catch_up()
        return not self.active

    def status(self) -> dict[str, Any]:
        """Small and JSON-safe: for ``/metrics`` and the API status (cheap: no window statistics)."""
        self._catch_up()
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
        self._catch_up()
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
