"""What "in distribution" means for one bundle: reference distributions of every monitored signal.

Built at export from the training split (:func:`build_reference`) and shipped in the
bundle's ``reference.npz`` under ``monitor_*`` / ``embedding_pca_*`` keys (:meth:`Reference.to_arrays`);
read back on the edge with :func:`load_reference`. It holds

- the raw signal values of the reference images and the recipe of each, so windowed tests
  (KS, PSI) and the calibration can resample them;
- per recipe, how to standardise each signal: ``z = (clip((x - centre) / scale, +-CLIP) - offset) / spread``
  -- per recipe because a chocolate cone is darker than a vanilla one, and a line changes
  recipes; clipped because a single freak frame must not be able to raise an alarm;
- a PCA of the model's embedding (mean, ``k`` components, eigenvalues): the Mahalanobis
  distance in that subspace and the reconstruction error are two more signals;
- the calibrated scores, labels and recipes of the validation split (for score tests, the
  reject rate a recipe's threshold gives -- :mod:`lineguard.monitor.outputs` -- and ATC) and
  the training prior (the defect share), for the label-free performance estimate;
- the calibrated detector thresholds (:mod:`lineguard.monitor.calibrate`), when export
  calibrated them.

Pure numpy; no file I/O here except through the bundle's own bounded reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lineguard import LineguardError
from lineguard.monitor.signals import IMAGE_SIGNALS, RAW_PIXELS, ImageSignals

if TYPE_CHECKING:
    from lineguard.preprocess import PreprocessParams

EMBEDDING_SIGNALS = ("embedding_distance", "embedding_residual")
CLIP = 4.0  # standardised values are clipped here before the detectors see them
MIN_RECIPE_IMAGES = 30  # fewer reference images than this: the recipe is standardised with all recipes
# No recipe's spread of a signal counts as narrower than this share of the median recipe's spread.
# A signal nearly constant for one recipe (clipped pixels on a dark chocolate cone: zero on 98 % of
# frames) has a spread its reference estimates badly, and a line whose rare non-zero frames come
# a little more often than in the reference would alarm far beyond the promise (docs/benchmarks.md).
MIN_SPREAD_SHARE = 0.25
PCA_K = 8
# 2: image signals on the model input (ImageSignals), recorded in monitor_signal_source; 1 (frame pixels,
# other definitions of sharpness, clipping and saturation) is refused: re-export.
REFERENCE_SCHEMA = 2
ALL = "*"  # the name of the pooled row (every recipe together)


class MonitorError(LineguardError):
    """Monitoring cannot be set up or fed as asked; the message names what was wrong."""


class _BundleLike(Protocol):
    meta: dict[str, Any]
    source: str

    def load_arrays(self, name: str, max_bytes: int = ...) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Pca:
    """The embedding's principal subspace: ``mean`` (d), ``components`` (k x d), ``eigenvalues`` (k)."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def signals(self, embeddings: np.ndarray) -> np.ndarray:
        """N x d embeddings -> N x 2: Mahalanobis distance in the subspace, and the reconstruction error."""
        e = np.atleast_2d(np.asarray(embeddings, np.float64)) - self.mean
        proj = e @ self.components.T
        dist = np.sqrt(np.sum(proj * proj / self.eigenvalues, axis=1))
        resid = np.sqrt(np.maximum(np.sum(e * e, axis=1) - np.sum(proj * proj, axis=1), 0.0))
        return np.stack([dist, resid], axis=1)

    def whitened(self, embeddings: np.ndarray) -> np.ndarray:
        """N x d embeddings -> N x k coordinates in the subspace with unit variance (for MMD)."""
        e = np.atleast_2d(np.asarray(embeddings, np.float64)) - self.mean
        return np.asarray((e @ self.components.T) / np.sqrt(self.eigenvalues))


def fit_pca(embeddings: np.ndarray, k: int = PCA_K) -> Pca:
    """PCA of N x d embeddings, ``k`` components at most (fewer when N or d are smaller)."""
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2 or len(e) < 3:
        raise MonitorError(f"an embedding reference needs at least 3 embeddings of shape N x d, got {e.shape}")
    mean = e.mean(axis=0)
    _, s, vt = np.linalg.svd(e - mean, full_matrices=False)
    eig = s * s / (len(e) - 1)
    k = max(1, min(k, int(np.sum(eig > eig.max() * 1e-9)) if eig.max() > 0 else 1))
    floor = max(float(eig[0]) * 1e-6, 1e-12)
    return Pca(mean, vt[:k].copy(), np.maximum(eig[:k], floor))


@dataclass(frozen=True)
class Reference:
    """Reference distributions of one bundle's signals (see the module docstring).

    ``centre``, ``scale``, ``offset`` and ``spread`` have one row per entry of ``recipes``
    and a last row for all recipes pooled (``ALL``), one column per entry of ``names``.
    """

    names: tuple[str, ...]
    values: np.ndarray  # n x m raw signal values of the reference images
    value_recipes: np.ndarray  # n recipe names ('' when unknown)
    recipes: tuple[str, ...]
    centre: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    spread: np.ndarray
    pca: Pca | None = None
    val_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # 1 = defect
    val_recipes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.str_))  # empty: exported without them
    prior: float = float("nan")  # defect share of the training split
    calibration: dict[str, np.ndarray] = field(default_factory=dict)  # k, h, arl0 (see calibrate.py)
    embedding_coords: np.ndarray | None = None  # n x k whitened PCA coordinates of the reference (for MMD)
    signal_source: str = RAW_PIXELS  # what the image signals were computed on (ImageSignals.source)

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def row(self, recipe: str | None) -> int:
        """Which standardisation row a frame of ``recipe`` uses (the pooled row when unknown)."""
        try:
            return self.recipes.index(recipe) if recipe is not None else len(self.recipes)
        except ValueError:
            return len(self.recipes)

    def rows(self, recipes: Sequence[str | None] | np.ndarray) -> np.ndarray:
        lookup = {r: i for i, r in enumerate(self.recipes)}
        pooled = len(self.recipes)
        return np.array([lookup.get(r, pooled) if r is not None else pooled for r in recipes], np.int64)

    def standardise(self, values: np.ndarray, rows: np.ndarray | int) -> np.ndarray:
        """Raw N x m (or m) signal values -> standardised, clipped values (in control: mean 0, sd 1)."""
        c, s, o, sp = self.centre[rows], self.scale[rows], self.offset[rows], self.spread[rows]
        z = np.clip((np.asarray(values, np.float64) - c) / s, -CLIP, CLIP)
        return np.asarray((z - o) / sp)

    def reference_z(self) -> np.ndarray:
        """The reference images' own standardised values (what the calibration resamples)."""
        return self.standardise(self.values, self.rows(list(self.value_recipes)))

    def group_sizes(self) -> np.ndarray:
        """Per reference image, how many reference images its standardisation row was fitted on."""
        rows = self.rows(list(self.value_recipes))
        counts = np.bincount(rows, minlength=len(self.recipes) + 1)
        counts[-1] = self.n
        return np.asarray(counts[rows])

    def with_calibration(self, arrays: Mapping[str, np.ndarray]) -> Reference:
        """A copy carrying detector thresholds (``Calibration.to_arrays()``), shipped with the bundle."""
        from dataclasses import replace

        return replace(self, calibration={str(k): np.asarray(v) for k, v in arrays.items()})

    def summary(self) -> dict[str, Any]:
        """The ``reference.monitor`` block of bundle.json: what the arrays hold, for a reader."""
        return {
            "schema": REFERENCE_SCHEMA, "n": self.n, "signals": list(self.names), "recipes": list(self.recipes),
            "clip": CLIP, "embedding_dim": self.pca.dim if self.pca else None,
            "pca_k": int(self.pca.components.shape[0]) if self.pca else None,
            "prior": None if not np.isfinite(self.prior) else round(float(self.prior), 6),
            "calibrated_arl0": float(self.calibration["arl0"]) if "arl0" in self.calibration else None,
            "signals_on": "model input" if self.signal_source != RAW_PIXELS else RAW_PIXELS,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays that go into reference.npz (embedding ones prefixed ``embedding_`` so a
        re-bundle with another embedding width drops them)."""
        out: dict[str, np.ndarray] = {
            "monitor_schema": np.array(REFERENCE_SCHEMA, np.int64),
            "monitor_names": np.array(self.names, dtype=np.str_),
            "monitor_values": self.values.astype(np.float32),
            "monitor_value_recipes": np.array(self.value_recipes, dtype=np.str_),
            "monitor_recipes": np.array(self.recipes, dtype=np.str_),
            "monitor_centre": self.centre, "monitor_scale": self.scale,
            "monitor_offset": self.offset, "monitor_spread": self.spread,
            "monitor_prior": np.array(self.prior, np.float64),
            "monitor_val_scores": self.val_scores.astype(np.float64),
            "monitor_val_labels": self.val_labels.astype(np.int64),
            "monitor_signal_source": np.array(self.signal_source, dtype=np.str_),
        }
        if len(self.val_recipes) and len(self.val_recipes) == len(self.val_scores):
            out["monitor_val_recipes"] = np.asarray(self.val_recipes).astype(np.str_)
        for key, value in self.calibration.items():
            out[f"monitor_cal_{key}"] = np.asarray(value)
        if self.pca is not None:
            out["embedding_pca_mean"] = self.pca.mean
            out["embedding_pca_components"] = self.pca.components
            out["embedding_pca_eigenvalues"] = self.pca.eigenvalues
        if self.embedding_coords is not None:
            out["embedding_pca_coords"] = self.embedding_coords.astype(np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "reference.npz") -> Reference:
        """Read :meth:`to_arrays` back; a missing or inconsistent array is a one-line MonitorError."""
        if "monitor_names" not in arrays:
            raise MonitorError(f"{source} has no monitoring reference (exported before monitoring existed); "
                               "re-export the bundle with this LineGuard to monitor it")
        schema = int(arrays.get("monitor_schema", np.array(0)))
        if schema != REFERENCE_SCHEMA:
            raise MonitorError(f"{source}: monitoring reference schema {schema}, this LineGuard reads "
                               f"{REFERENCE_SCHEMA}; re-export the bundle")
        try:
            names = tuple(str(x) for x in arrays["monitor_names"])
            recipes = tuple(str(x) for x in arrays["monitor_recipes"])
            pca = None
            if "embedding_pca_mean" in arrays and any(n in names for n in EMBEDDING_SIGNALS):
                pca = Pca(np.asarray(arrays["embedding_pca_mean"], np.float64),
                          np.asarray(arrays["embedding_pca_components"], np.float64),
                          np.asarray(arrays["embedding_pca_eigenvalues"], np.float64))
            elif any(n in names for n in EMBEDDING_SIGNALS):
                keep = [i for i, n in enumerate(names) if n not in EMBEDDING_SIGNALS]
                arrays = {**arrays, **{k: np.asarray(arrays[k])[..., keep] for k in
                                       ("monitor_values", "monitor_centre", "monitor_scale", "monitor_offset",
                                        "monitor_spread")}}
                arrays = {k: v for k, v in arrays.items() if not k.startswith("monitor_cal_")}
                names = tuple(names[i] for i in keep)
            ref = cls(
                names=names,
                values=np.asarray(arrays["monitor_values"], np.float64),
                value_recipes=np.asarray(arrays["monitor_value_recipes"]).astype(str),
                recipes=recipes,
                centre=np.asarray(arrays["monitor_centre"], np.float64),
                scale=np.asarray(arrays["monitor_scale"], np.float64),
                offset=np.asarray(arrays["monitor_offset"], np.float64),
                spread=np.asarray(arrays["monitor_spread"], np.float64),
                pca=pca,
                val_scores=np.asarray(arrays.get("monitor_val_scores", np.zeros(0)), np.float64),
                val_labels=np.asarray(arrays.get("monitor_val_labels", np.zeros(0)), np.int64),
                val_recipes=np.asarray(arrays.get("monitor_val_recipes", np.zeros(0, np.str_))).astype(str),
                prior=float(arrays.get("monitor_prior", np.array(np.nan))),
                calibration={k[len("monitor_cal_"):]: np.asarray(v) for k, v in arrays.items()
                             if k.startswith("monitor_cal_")},
                embedding_coords=(np.asarray(arrays["embedding_pca_coords"], np.float64)
                                  if pca is not None and "embedding_pca_coords" in arrays else None),
                signal_source=str(arrays["monitor_signal_source"]),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise MonitorError(f"{source}: the monitoring reference is incomplete or malformed ({exc})") from None
        m, rows = len(ref.names), len(ref.recipes) + 1
        for key in ("centre", "scale", "offset", "spread"):
            arr = getattr(ref, key)
            if arr.shape != (rows, m) or not np.all(np.isfinite(arr)):
                raise MonitorError(f"{source}: monitor_{key} has shape {arr.shape}, expected ({rows}, {m}) finite")
        if np.any(ref.scale <= 0) or np.any(ref.spread <= 0):
            raise MonitorError(f"{source}: monitor_scale and monitor_spread must be > 0")
        if ref.values.ndim != 2 or ref.values.shape[1] != m or len(ref.value_recipes) != len(ref.values):
            raise MonitorError(f"{source}: monitor_values is {ref.values.shape} for {m} signals")
        if len(ref.val_recipes) not in (0, len(ref.val_scores)):
            raise MonitorError(f"{source}: {len(ref.val_recipes)} validation recipes for {len(ref.val_scores)} "
                               "validation scores")
        return ref


def _standardisation(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """centre, scale (mean and sd, floored), then offset and spread of the clipped values."""
    centre = values.mean(axis=0)
    sd = values.std(axis=0)
    floor = np.maximum(np.abs(centre) * 1e-3, 1e-6)
    scale = np.maximum(sd, floor)
    z = np.clip((values - centre) / scale, -CLIP, CLIP)
    offset = z.mean(axis=0)
    spread = np.maximum(z.std(axis=0), 1e-3)
    return centre, scale, offset, spread


def build_reference(
    signal_values: np.ndarray,
    recipes: Sequence[str] | np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    *,
    val_scores: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_recipes: Sequence[str] | np.ndarray | None = None,
    prior: float | None = None,
    names: Sequence[str] = IMAGE_SIGNALS,
    pca_k: int = PCA_K,
    pca_fit_share: float = 0.5,
    seed: int = 0,
    signal_source: str = RAW_PIXELS,
) -> Reference:
    """Pure: the reference from the training split's signals (N x m), recipes (N) and embeddings (N x d).

    The PCA is fitted on ``pca_fit_share`` of the embeddings and every distance / residual
    reference value is out of sample (cross-fitted): in-sample distances are smaller than
    any new frame's, which would look like drift on a clean line. ``val_labels``
    are 1 for a defect; ``val_recipes`` name each validation item's recipe (the output monitor
    compares a recipe's live scores with its own validation scores). Recipes with fewer than
    MIN_RECIPE_IMAGES images use the pooled row. ``signal_source`` says what the signals were
    computed on (:attr:`ImageSignals.source`).
    """
    vals = np.asarray(signal_values, np.float64)
    if vals.ndim != 2 or vals.shape[1] != len(names) or len(vals) < MIN_RECIPE_IMAGES:
        raise MonitorError(f"a monitoring reference needs at least {MIN_RECIPE_IMAGES} rows of {len(names)} signals, "
                           f"got an array of shape {vals.shape}")
    if not np.all(np.isfinite(vals)):
        raise MonitorError("the reference signal values hold NaN or infinity")
    rec = np.array([""] * len(vals)) if recipes is None else np.asarray(recipes).astype(str)
    if len(rec) != len(vals):
        raise MonitorError(f"{len(rec)} recipes for {len(vals)} reference rows")
    pca = None
    coords = None
    all_names = tuple(names)
    if embeddings is not None and np.asarray(embeddings).size:
        emb = np.asarray(embeddings, np.float64)
        if emb.ndim != 2 or len(emb) != len(vals):
            raise MonitorError(f"reference embeddings have shape {emb.shape}, expected {len(vals)} x d")
        order = np.random.default_rng(seed).permutation(len(emb))
        n_fit = max(3, min(len(emb) - 3, round(pca_fit_share * len(emb))))
        fit, rest = order[:n_fit], order[n_fit:]
        pca = fit_pca(emb[fit], pca_k)
        # Cross-fitted: the rows the shipped PCA was fitted on get their distances from a PCA of
        # the other rows, so every reference distance is out of sample, like a new frame's.
        emb_sig = pca.signals(emb)
        emb_sig[fit] = fit_pca(emb[rest], pca_k).signals(emb[fit])
        vals = np.concatenate([vals, emb_sig], axis=1)
        coords = pca.whitened(emb)
        all_names += EMBEDDING_SIGNALS
    names_present = sorted({r for r in rec if r})
    kept = tuple(r for r in names_present if np.sum(rec == r) >= MIN_RECIPE_IMAGES)
    rows = [_standardisation(vals[rec == r]) for r in kept] + [_standardisation(vals)]
    centre, scale, offset, spread = (np.stack([row[i] for row in rows]) for i in range(4))
    if len(kept) >= 2:  # the floor is a share of the typical recipe's own spread (not of the pooled one,
        typical = np.median(scale[:-1] * spread[:-1], axis=0)  # which holds the recipes' differences)
        spread = np.maximum(spread, MIN_SPREAD_SHARE * typical / scale)
    vs = np.zeros(0) if val_scores is None else np.asarray(val_scores, np.float64)
    vl = np.zeros(0, np.int64) if val_labels is None else np.asarray(val_labels, np.int64)
    if len(vs) != len(vl):
        raise MonitorError(f"{len(vs)} validation scores but {len(vl)} validation labels")
    vr = np.zeros(0, np.str_) if val_recipes is None else np.asarray(val_recipes).astype(str)
    if len(vr) not in (0, len(vs)):
        raise MonitorError(f"{len(vr)} validation recipes for {len(vs)} validation scores")
    if prior is None:
        prior = float(vl.mean()) if len(vl) else float("nan")
    return Reference(all_names, vals, rec, kept, centre, scale, offset, spread, pca, vs, vl, vr, float(prior),
                     embedding_coords=coords, signal_source=signal_source)


def reference_from_images(
    images: Sequence[np.ndarray],
    recipes: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    params: PreprocessParams | None = None,
    **kwargs: Any,
) -> Reference:
    """:func:`build_reference` from decoded training images, their signals computed here.

    ``params``: the bundle's preprocessing. The signals are then those of the model inputs
    (:class:`ImageSignals`), the very function the edge runs on every frame -- one contract,
    so train and edge agree whatever the camera's resolution. None: the images' own pixels
    (a reference without a model; a bundle's monitor refuses it).
    """
    if not images:
        raise MonitorError("a monitoring reference needs training images; got none")
    signals = ImageSignals(params)
    return build_reference(np.stack([signals.of_image(im) for im in images]), recipes, embeddings,
                           signal_source=signals.source, **kwargs)


def load_reference(bundle: _BundleLike) -> Reference:
    """The monitoring reference shipped in a loaded bundle's reference.npz (MonitorError when absent)."""
    files = bundle.meta.get("files", {})
    if "reference.npz" not in files:
        raise MonitorError(f"bundle '{bundle.source}' ships no reference.npz; re-export it to monitor it")
    return Reference.from_arrays(bundle.load_arrays("reference.npz"), f"reference.npz of bundle '{bundle.source}'")
