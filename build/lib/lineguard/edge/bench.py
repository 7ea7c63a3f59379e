"""Latency and throughput of a bundle as the edge runs it, printed as JSON.

Run in a fresh process (``python -m lineguard.edge.bench BUNDLE ...``, which is what
``lineguard bench`` does) so nothing left over from the caller -- other threads, warm
caches, a loaded torch -- skews the figures. Three things are timed, each after its own
warm-up and over the same number of repeats:

- ``model``: the runtime alone on an already preprocessed batch, plus the decision
  (preprocessing excluded);
- ``end_to_end``: decoded frames -> preprocess -> model -> decision (preprocessing
  included), the cost per frame on the line;
- ``preprocess``: the preprocessing alone.

Frames are the bundle's golden images scaled to ``frame_size`` (default: twice the
model's input side, so the resize is exercised). Latency is per call (one batch):
median, p90, p99, mean; throughput is images per second from the mean. The timing and the
summary are :mod:`lineguard.edge.latency`'s, shared with compression.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lineguard import LineguardError
from lineguard.edge.bundle import GOLDEN_FILE, load_bundle
from lineguard.edge.latency import latency_summary, time_calls
from lineguard.edge.predictor import Predictor
from lineguard.edge.runner import BACKENDS
from lineguard.preprocess import preprocess_batch


def _frames(bundle_images: np.ndarray | None, frame_size: tuple[int, int], n: int) -> list[np.ndarray]:
    """``n`` uint8 frames of ``frame_size`` (h, w): the golden images resized, or a seeded pattern."""
    from PIL import Image

    fh, fw = frame_size
    if bundle_images is None or len(bundle_images) == 0:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8) for _ in range(n)]
    out = []
    for i in range(n):
        img = bundle_images[i % len(bundle_images)]
        out.append(np.asarray(Image.fromarray(img).resize((fw, fh), Image.Resampling.BILINEAR)))
    return out


def bench(
    bundle: str | Path,
    threads: int = 1,
    backend: str = "ort",
    batch: int = 1,
    repeats: int = 500,
    warmup: int = 50,
    frame_size: tuple[int, int] | None = None,
    precision_hint: str = "f32",
) -> dict[str, Any]:
    """Time a bundle in this process; see the module docstring for what is measured."""
    if repeats < 1 or warmup < 0 or batch < 1:
        raise LineguardError("repeats and batch must be >= 1 and warmup >= 0")
    if frame_size:
        frame_size = check_frame_size(frame_size)
    if batch > MAX_BATCH:
        raise LineguardError(f"batch {batch} is larger than {MAX_BATCH}")
    b = load_bundle(bundle)
    predictor = Predictor(b, threads=threads, backend=backend, precision_hint=precision_hint)
    params = b.preprocess
    h, w = params.size
    size = frame_size or (2 * h, 2 * w)
    if batch * size[0] * size[1] > MAX_BATCH_PIXELS:
        raise LineguardError(f"batch {batch} of {size[0]}x{size[1]} frames is more than {MAX_BATCH_PIXELS:,} pixels "
                             "in memory at once; use a smaller batch or frame size")
    golden = b.load_arrays(GOLDEN_FILE).get("images") if GOLDEN_FILE in b.meta["files"] else None
    frames = _frames(golden, size, batch)
    x = preprocess_batch(frames, params)
    first_decision_ms = time_calls(lambda: predictor.predict_tensor(x), 0, 1)[0]
    model = time_calls(lambda: predictor.predict_tensor(x), warmup, repeats)
    if batch == 1:
        frame = frames[0]
        end_to_end = time_calls(lambda: predictor.predict(frame), warmup, repeats)
    else:
        end_to_end = time_calls(lambda: predictor.predict(frames), warmup, repeats)
    pre = time_calls(lambda: preprocess_batch(frames, params), warmup, repeats)
    import onnxruntime as ort

    m, e = latency_summary(model, batch), latency_summary(end_to_end, batch)
    return {
        "bundle": str(bundle),
        "name": b.name,
        "version": b.version,
        "precision": b.precision,
        "backend": backend,
        "precision_hint": precision_hint if backend == "openvino" else None,
        "threads": threads,
        "batch": batch,
        "warmup": warmup,
        "repeats": repeats,
        "input_size": [h, w],
        "frame_size": list(size),
        "model": m,
        "end_to_end": e,
        "preprocess": latency_summary(pre, batch),
        "preprocess_share": (e["median_ms"] - m["median_ms"]) / e["median_ms"] if e["median_ms"] > 0 else 0.0,
        "first_call_ms": first_decision_ms,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "onnxruntime": ort.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


MAX_FRAME_SIDE = 8192
MAX_BATCH = 1024
MAX_BATCH_PIXELS = 200_000_000  # frames of one batch held at once (uint8: 600 MB)


def check_frame_size(frame_size: tuple[int, int], max_pixels: int = 40_000_000) -> tuple[int, int]:
    """A bench frame size within bounds: each side 8..8192 px and at most ``max_pixels`` (limits.max_pixels)."""
    h, w = frame_size
    if not (8 <= h <= MAX_FRAME_SIDE and 8 <= w <= MAX_FRAME_SIDE) or h * w > max_pixels:
        raise LineguardError(
            f"frame size {h}x{w} is out of bounds: each side 8..{MAX_FRAME_SIDE} px and at most "
            f"{max_pixels:,} pixels (limits.max_pixels)"
        )
    return h, w


def bench_in_subprocess(
    bundle: str | Path,
    threads: int = 1,
    backend: str = "ort",
    batch: int = 1,
    repeats: int = 500,
    warmup: int = 50,
    frame_size: tuple[int, int] | None = None,
    precision_hint: str = "f32",
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Run :func:`bench` in a fresh Python process and return its JSON result."""
    if frame_size:
        frame_size = check_frame_size(frame_size)
    cmd = [sys.executable, "-m", "lineguard.edge.bench", str(bundle), "--threads", str(threads), "--backend", backend,
           "--batch", str(batch), "--repeats", str(repeats), "--warmup", str(warmup),
           "--precision-hint", precision_hint]
    if frame_size:
        cmd += ["--frame-size", f"{frame_size[0]}x{frame_size[1]}"]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise LineguardError(f"bench of '{bundle}' did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise LineguardError(lines[-1].removeprefix("error: ") if lines else f"bench exited with {proc.returncode}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise LineguardError(f"bench printed no JSON: {proc.stdout[-300:]!r}") from None
    return result


def _frame_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must look like 256x256 (height x width), got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError("frame size must be positive")
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lineguard.edge.bench BUNDLE [--threads N] ...``: print the JSON result."""
    ap = argparse.ArgumentParser(prog="python -m lineguard.edge.bench", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", choices=BACKENDS, default="ort")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--frame-size", type=_frame_size, default=None)
    ap.add_argument("--precision-hint", default="f32", choices=("f32", "bf16", "f16"))
    args = ap.parse_args(argv)
    try:
        result = bench(args.bundle, args.threads, args.backend, args.batch, args.repeats, args.warmup,
                       args.frame_size, args.precision_hint)
    except LineguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
