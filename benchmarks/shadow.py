"""Shadow mode: the champion's decision latency with and without a challenger running beside it.

Usage:
    .venv/bin/python benchmarks/shadow.py                   # default model (random weights), 2000 frames, 3 repeats
    .venv/bin/python benchmarks/shadow.py --bundle BUNDLE   # an exported bundle as champion (and, re-versioned, challenger)
    .venv/bin/python benchmarks/shadow.py --frames 2000 --repeats 5 --fps 0 --no-write

The champion's path is what the edge loop does for a live camera (batch 1): preprocess + ONNX Runtime + the
bundle's decision (``inference``), then the record committed to the SQLite store through the station's
``StoreRecorder`` (``decision``: from the frame to its acknowledged record). With the shadow on, the recorder
also offers each recorded frame to a :class:`~lineguard.edge.shadow.ShadowRunner` holding the challenger --
the same bundle with another version and a higher threshold, so some frames disagree and keep their image.

Frames arrive at ``--fps`` (0: as fast as the champion decides, which starves a challenger of the same cost
on 2 cores: frames are then skipped, counted). Runs alternate off / on (the order flips each repeat), each on a
fresh store; the figures are the medians over the repeats of each run's median and 99th percentile. The store
keeps no sampled images for the champion (so the figures are the decision's and the challenger's, not PNG
encoding's). Writes the ``## Shadow mode: champion latency`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import args_for_docs, load_note, median, percentile, write_section

REPO = Path(__file__).resolve().parent.parent
CHALLENGER_THRESHOLD = 0.6


def frames(n_distinct: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic cones of two recipes, a tenth of them defective (cycled over the run)."""
    from lineguard.synth import draw_cone

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_distinct):
        bad = i % 10 == 0
        recipe = ("vanilla_sprinkles", "chocolate_nuts")[i % 2]
        out.append(draw_cone(rng, recipe, "bad" if bad else "good", "missing_topping" if bad else "", size=size))
    return out


def challenger_of(champion: Path, out: Path) -> Path:
    """The champion's bundle as another version with a higher default threshold (re-sealed)."""
    import json

    from lineguard.edge.signing import integrity_block

    if champion.is_file():  # an archive: unpack it next to the copy
        import tarfile

        dest = out.parent / f"{out.name}-src"
        with tarfile.open(champion) as tar:
            tar.extractall(dest, filter="data")
        champion = next(p.parent for p in dest.rglob("bundle.json"))
    shutil.copytree(champion, out)
    meta = json.loads((out / "bundle.json").read_text())
    meta["version"] = f"{meta.get('version', '')}-challenger"
    meta["decision"]["default_threshold"] = CHALLENGER_THRESHOLD
    meta["decision"]["per_recipe"] = {}
    meta["integrity"] = integrity_block(meta)
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


def run_once(champion: Any, challenger: Path | None, images: list[np.ndarray], n: int, fps: float,
             tmp: Path) -> dict[str, Any]:
    """One run of ``n`` frames; per-frame decision and inference latency (ms) and the shadow's counts."""
    from lineguard.edge.shadow import ShadowSlot
    from lineguard.edge.station import StoreRecorder
    from lineguard.edge.store import PredictionRecord, SamplePolicy, Store

    store = Store(tmp / "edge.db", sample=SamplePolicy(rejects=False, low_confidence_band=0.0, pass_share=0.0),
                  min_free_bytes=0)
    slot = None
    if challenger is not None:
        slot = ShadowSlot(store, upload_dir=tmp / "uploads", queue_size=32)
        slot.install(challenger)
    recorder = StoreRecorder(store, (), (), slot)
    recipe = (champion.bundle.recipes or [None])[0]
    decision_ms, inference_ms = [], []
    period = 1.0 / fps if fps > 0 else 0.0
    start = time.perf_counter()
    for i in range(n):
        if period:
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        image = images[i % len(images)]
        t0 = time.perf_counter()
        pred = champion.predict(image, recipe)
        rec = PredictionRecord(f"f{i}", time.time(), "bench", "camera", recipe, pred.label, pred.score, pred.decision,
                               pred.threshold, pred.bundle_name, pred.bundle_version, pred.latency_ms)
        recorder.record(rec, image)
        decision_ms.append((time.perf_counter() - t0) * 1000.0)
        inference_ms.append(pred.latency_ms)
    out: dict[str, Any] = {"decision_ms": decision_ms, "inference_ms": inference_ms}
    if slot is not None and slot.runner is not None:
        slot.runner.drain(10.0)
        st = slot.remove()
        out.update(compared=st["frames_compared"], skipped=st["skipped"], disagreements=st["disagreements"])
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="an exported bundle as champion (default: the default model, random weights)")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fps", type=float, action="append",
                    help="frame rate(s) to run at; 0 = as fast as the champion decides (default: 30 and 0)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the champion (the station's default: 1)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = ap.parse_args()
    rates = args.fps or [30.0, 0.0]

    from lineguard.edge.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="lg-shadow-bench-") as d:
        tmp = Path(d)
        if args.bundle is not None:
            champion_path, label = args.bundle, f"`{args.bundle.name}`"
        else:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from edge_runtime import random_bundle

            from lineguard.config import load_config

            cfg = load_config(None)
            print(f"exporting {cfg.train.model} (random weights)", flush=True)
            champion_path = random_bundle(cfg.train.model, tmp / "champion")
            label = f"default model: {cfg.train.model} {cfg.preprocess.size[0]} px (random weights)"
        challenger = challenger_of(champion_path, tmp / "challenger")
        champion = Predictor(champion_path, threads=args.threads)
        images = frames(200, 128)
        champion.predict(images[0])  # warm the session
        rows = []
        for fps in rates:
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for r in range(args.repeats):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    work = tmp / f"run-{fps}-{r}-{mode}"
                    work.mkdir()
                    got = run_once(champion, challenger if mode == "on" else None, images, args.frames, fps, work)
                    runs[mode].append(got)
                    print(f"fps {fps:g} repeat {r} shadow {mode}: decision median "
                          f"{median(got['decision_ms']):.3f} ms, p99 {percentile(got['decision_ms'], 99):.3f} ms"
                          + (f", compared {got['compared']}, skipped {got['skipped']}" if mode == "on" else ""),
                          flush=True)
                    shutil.rmtree(work, ignore_errors=True)
            rows.append((fps, runs))

    def fig(runs: list[dict[str, Any]], key: str, q: float | None) -> float:
        return median([median(x[key]) if q is None else percentile(x[key], q) for x in runs])

    lines = [
        f"Champion: {label}; challenger: the same model re-versioned with default threshold {CHALLENGER_THRESHOLD} "
        f"(its own ONNX Runtime session, 1 thread, worker at nice +10, queue 32). {args.frames} frames of "
        f"128x128 synthetic cones per run, batch 1 (a live camera), champion ONNX Runtime {args.threads} thread(s); "
        f"runs alternate shadow off / on, {args.repeats} repeats each, a fresh store per run, no sampled images "
        "for the champion. *decision* = preprocess + inference + decision + the record committed to the store "
        "(and, with the shadow on, offered to it); *inference* = the Predictor's own latency. Figures: median over "
        "the repeats of each run's median and p99, in ms.",
        "",
        "| frame rate | shadow | decision median | decision p99 | inference median | inference p99 | compared | skipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fps, runs in rows:
        rate = "as fast as decided" if fps <= 0 else f"{fps:g} fps"
        for mode in ("off", "on"):
            rs = runs[mode]
            compared = f"{median([x['compared'] for x in rs]):.0f}" if mode == "on" else "–"
            skipped = f"{median([x['skipped'] for x in rs]):.0f}" if mode == "on" else "–"
            lines.append(f"| {rate} | {mode} | {fig(rs, 'decision_ms', None):.3f} | {fig(rs, 'decision_ms', 99):.3f} | "
                         f"{fig(rs, 'inference_ms', None):.3f} | {fig(rs, 'inference_ms', 99):.3f} | {compared} | "
                         f"{skipped} |")
        off, on = fig(runs["off"], "decision_ms", None), fig(runs["on"], "decision_ms", None)
        lines.append(f"| {rate} | on / off | {on / off:.2f}x | | | | | |")
    lines += ["", load_note()]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Shadow mode: champion latency", body, f"python benchmarks/shadow.py{args_for_docs(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
