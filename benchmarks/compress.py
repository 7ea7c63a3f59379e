"""TARGETS P7: INT8 is chosen only where it measures faster than fp32, with a balanced-accuracy drop <= 0.3 points.

Trains the default model on the default toy dataset (or takes ``--run``/``--data``), runs
``lineguard compress`` with the default config (fp32, static INT8 QDQ, pruned 25 % and 50 % with
fine-tuning, a distilled half-width student, fp32 on OpenVINO with the f32 hint) and writes the
candidate table, the selection and the P7 verdict to the ``## Compression`` section of
docs/benchmarks.md. Latency: batch 1, median and p99 over ``compress.repeats`` runs split into
``compress.rounds`` interleaved fresh processes per candidate and thread count.

Usage:
    .venv/bin/python benchmarks/compress.py                       # toy data + default training (minutes)
    .venv/bin/python benchmarks/compress.py --run RUN_ID --data DATASET [--set compress.repeats=1000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import args_for_docs, write_section

P7_MAX_DROP = 0.003
CHANCE_LEVEL = 0.6  # below this balanced accuracy the float model has not learnt the task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a tracked run id (default: train the config's model on --data)")
    parser.add_argument("--data", help="the dataset (default: make the default toy dataset)")
    parser.add_argument("--workdir", help="LineGuard workdir holding --run's MLflow store")
    parser.add_argument(
        "--set", action="append", default=[], help="config override, e.g. compress.repeats=1000"
    )
    parser.add_argument(
        "--section", default="Compression", help="the docs/benchmarks.md section to (re)write"
    )
    parser.add_argument("--note", default="", help="a caveat printed at the top of the section")
    args = parser.parse_args()

    from lineguard.compress import (
        Candidate,
        CompressError,
        LatencyStats,
        comparison_table,
        compress,
        select_candidate,
    )
    from lineguard.config import load_config

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lineguard-bench-compress-"))
    cfg = load_config(None, [f"workdir={work}", *args.set])
    data, run_id = args.data, args.run
    if run_id is None:
        from lineguard.ingest import ingest
        from lineguard.manifest import load_dataset
        from lineguard.synth import synth
        from lineguard.train import train

        if data is None:
            print("making the toy dataset...", flush=True)
            synth(str(work / "raw"), cfg.synth)
            ingest(str(work / "raw"), str(work / "dataset"), cfg.ingest)
            data = str(work / "dataset")
        print("training the default model...", flush=True)
        trained = train(cfg, load_dataset(data), progress=False)
        run_id = trained.run_id
        print(f"default training took {trained.seconds:.0f} s wall (run {run_id})", flush=True)
        # kept for the YOLO peer (benchmarks/peers/yolo.py --bundle ... --train-seconds ...)
        (work / "train.json").write_text(
            f'{{"run_id": "{run_id}", "seconds": {trained.seconds:.1f}, "data": "{data}"}}\n'
        )
    assert run_id is not None and data is not None
    command = "python benchmarks/compress.py" + args_for_docs(sys.argv[1:])
    try:
        result = compress(run_id, data, cfg, say=lambda m: print(m, flush=True), progress=False)
        candidates, selection = result.candidates, result.selection
        chosen = selection.chosen
        bundle_line = f"Chosen: **{chosen.name}**; bundle written." if chosen else ""
    except CompressError as exc:
        import json

        raw = json.loads((work / "compress" / run_id / "candidates.json").read_text())
        candidates = [
            Candidate(**{**c, "latency": {int(t): LatencyStats(**s) for t, s in c["latency"].items()}})
            for c in raw
        ]
        selection = select_candidate(
            candidates, cfg.compress.budget_ms, cfg.compress.max_drop, cfg.compress.budget_threads
        )
        bundle_line = f"Nothing chosen: {exc}"

    by = {c.name: c for c in candidates}
    fp32, int8 = by.get("fp32"), by.get("int8-qdq")
    verdict = "no INT8 candidate"
    if fp32 and int8:
        drop = fp32.balanced_accuracy - int8.balanced_accuracy
        t = cfg.compress.budget_threads
        faster = int8.latency_ms(t) < fp32.latency_ms(t)
        chosen_int8 = selection.chosen is not None and selection.chosen.name == "int8-qdq"
        rule_ok = faster or not chosen_int8
        drop_ok = not math.isnan(drop) and drop <= P7_MAX_DROP
        learnt = fp32.balanced_accuracy > CHANCE_LEVEL
        p7 = "met" if rule_ok and drop_ok else "NOT met"
        if not learnt:
            p7 = f"not decidable (the float model is at chance level, <= {CHANCE_LEVEL:.0%}); INT8 rule {'kept' if rule_ok else 'BROKEN'}"
        verdict = (
            f"INT8 {int8.latency_ms(t):.3f} ms vs fp32 {fp32.latency_ms(t):.3f} ms at {t} thread(s): "
            f"{'faster' if faster else 'NOT faster'}, {'chosen' if chosen_int8 else 'not chosen'} "
            f"(rule {'kept' if rule_ok else 'BROKEN'}); balanced-accuracy drop {drop * 100:+.2f} points "
            f"({'within' if drop_ok else 'OVER'} the 0.3-point target). P7: **{p7}**."
        )
    body = (
        (f"**Note:** {args.note}\n\n" if args.note else "")
        + f"Run `{run_id}` (default config: {cfg.train.model} width {cfg.train.width:g} at "
        f"{cfg.preprocess.size[0]}x{cfg.preprocess.size[1]}); budget {selection.budget_ms:g} ms at "
        f"{selection.threads} thread(s), max drop {selection.max_drop * 100:.2f} points; "
        f"{cfg.compress.repeats} timed runs per candidate and thread count in {cfg.compress.rounds} interleaved "
        f"fresh processes, {cfg.compress.warmup} warm-up runs each.\n\n"
        + comparison_table(candidates, selection)
        + f"\n{verdict}\n\n{bundle_line}\n"
        + "".join(f"\n- {c.name}: {c.note}" for c in candidates if c.note)
        + "\n"
    )
    write_section(args.section, body, command)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
