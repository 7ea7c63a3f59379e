"""Monitoring on the edge: is the line still the one the model was trained for, and how well is it doing?

Pure numpy/scipy (no torch, no training stack), cheap enough to run on every frame:

- :func:`frame_signals` -- per-frame image statistics (brightness, contrast, sharpness,
  colourfulness, saturation, colour balance, clipped pixels, haze);
- :class:`Reference` -- their reference distributions, and the embedding's, from the
  training split, shipped in the bundle's ``reference.npz`` (:func:`build_reference`,
  :func:`load_reference`);
- :func:`cusum_step`, :func:`page_hinkley_step` -- sequential detectors;
  :func:`ks_test`, :func:`psi`, :func:`mmd_test` -- windowed two-sample tests;
- :func:`calibrate_cusum` -- thresholds calibrated by simulation to a target mean run
  length between false alarms (``arl0``), split over the signals;
- :func:`cbpe`, :func:`atc`, :func:`measured`, :func:`concept_drift` -- performance
  without labels, with feedback labels, and concept drift;
- :func:`kpis`, :class:`KpiBook` -- inspected, rejected, expected escapes and false
  rejects and their cost, per recipe, shift and bundle version;
- :class:`Monitor` -- all of it as the one stateful object the runtime feeds per frame.

See docs/monitoring.md for what each signal means on a line and what to do when it fires.
"""

from lineguard.monitor.calibrate import Calibration, calibrate_cusum
from lineguard.monitor.drift import (
    CusumState,
    PageHinkleyState,
    TestResult,
    cusum_step,
    ks_test,
    mmd_test,
    page_hinkley_step,
    psi,
)
from lineguard.monitor.estimate import ConceptDrift, Estimate, atc, cbpe, concept_drift, measured
from lineguard.monitor.kpi import KpiBook, kpis, shift_of
from lineguard.monitor.online import EDGE_BATCH, Alarm, Monitor
from lineguard.monitor.reference import (
    MonitorError,
    Reference,
    build_reference,
    load_reference,
    reference_from_images,
)
from lineguard.monitor.signals import IMAGE_SIGNALS, ImageSignals, as_stats, frame_signals, signal_vector

__all__ = [
    "EDGE_BATCH", "IMAGE_SIGNALS", "Alarm", "Calibration", "ConceptDrift", "CusumState", "Estimate", "ImageSignals",
    "KpiBook", "Monitor", "MonitorError", "PageHinkleyState", "Reference", "TestResult", "as_stats", "atc",
    "build_reference", "calibrate_cusum", "cbpe", "concept_drift", "cusum_step", "frame_signals", "kpis", "ks_test",
    "load_reference", "measured", "mmd_test", "page_hinkley_step", "psi", "reference_from_images", "shift_of",
    "signal_vector",
]
