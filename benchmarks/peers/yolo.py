"""TARGETS P1 (peer part): LineGuard's default bundle vs a YOLO nano classifier, side by side in one run.

Both are trained on the same split of the same toy dataset for the same time budget (the wall time
LineGuard's default training took, measured here; CPU seconds are reported too), both are ONNX
models at the same input size run by the same harness (``lineguard.compress.measure_latency``:
ONNX Runtime, batch 1, 1 thread, fresh subprocesses in interleaved rounds), and both are scored on
the same test images: LineGuard through its bundle (its own preprocessing and thresholds), YOLO
through Ultralytics' own predictor (its own preprocessing). The YOLO side runs in its own venv
(.bench-peers/, see run.sh): Ultralytics is AGPL-3.0 and never imported by LineGuard.

Writes the ``## Peer: YOLO nano classifier`` section of docs/benchmarks.md, or, if the peer cannot
run, that section with the exact error.

Usage (from the repository root, normally through ``bash benchmarks/peers/run.sh``):
    .venv/bin/python benchmarks/peers/yolo.py [--data DATASET] [--bundle BUNDLE --train-seconds S]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import args_for_docs, write_section  # noqa: E402

TITLE = "Peer: YOLO nano classifier"
PEER_PYTHON = ROOT / ".bench-peers" / "bin" / "python"
# Below this balanced accuracy a model has not learnt the task: no accuracy verdict is drawn from it.
CHANCE_LEVEL = 0.6


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _toy_dataset(work: Path) -> str:
    """The default toy dataset: synth (default config) -> ingest (default config)."""
    from lineguard.config import load_config
    from lineguard.ingest import ingest
    from lineguard.synth import synth

    cfg = load_config(None)
    synth(str(work / "raw"), cfg.synth)
    ingest(str(work / "raw"), str(work / "dataset"), cfg.ingest)
    return str(work / "dataset")


def _lineguard_default(data: str, work: Path) -> tuple[Path, float, float]:
    """Train the default config on ``data`` and export it: (bundle, train wall s, train CPU s)."""
    from lineguard.config import load_config
    from lineguard.export import export
    from lineguard.manifest import load_dataset
    from lineguard.train import train

    cfg = load_config(None, [f"workdir={work / 'lineguard-work'}"])
    dataset = load_dataset(data)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    result = train(cfg, dataset, progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    assert result.run_id is not None
    bundle = export(result.run_id, data, work / "lineguard-bundle", cfg, overwrite=True).path
    return Path(bundle), wall, cpu


def export_imagefolder(data: str, out: Path) -> dict[str, str]:
    """The dataset's splits as ``out/{train,val,test}/<label>/<image_id>.png`` (the layout YOLO-cls reads).

    Returns test relpath (``<label>/<id>.png``) -> label. The stored PNGs are copied byte for byte.
    """
    from lineguard import storage
    from lineguard.manifest import load_dataset

    ds = load_dataset(data)
    test: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for row in ds.split(split).itertuples():
            rel = f"{row.label}/{row.image_id}.png"
            target = out / split / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(ds.image_url(row.path)))
            if split == "test":
                test[rel] = str(row.label)
    return test


def rename_io(src: Path, dst: Path, input_name: str = "image", output_name: str = "logits") -> Path:
    """Copy an ONNX model with its single input/first output renamed, so the edge's runner (which feeds
    ``image`` and fetches ``logits``) times it exactly like a LineGuard model. Names only: same graph."""
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    initializers = {i.name for i in g.initializer}
    old_in = next(i.name for i in g.input if i.name not in initializers)
    old_out = g.output[0].name
    for node in g.node:
        node.input[:] = [input_name if n == old_in else n for n in node.input]
        node.output[:] = [output_name if n == old_out else n for n in node.output]
    for v in g.input:
        if v.name == old_in:
            v.name = input_name
    g.output[0].name = output_name
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def _balanced_accuracy(truth: dict[str, str], predicted: dict[str, str], positive: str) -> float:
    from lineguard.evaluate.metrics import confusion, rates

    keys = sorted(truth)
    y = [1 if truth[k] == positive else 0 for k in keys]
    p = [1 if predicted.get(k) == positive else 0 for k in keys]
    return float(rates(confusion(y, p))["balanced_accuracy"])


def _lineguard_predictions(bundle: Path, imagefolder: Path, truth: dict[str, str]) -> dict[str, str]:
    from lineguard.edge import Predictor

    predictor = Predictor(bundle, threads=1)
    return {rel: predictor.predict_file(imagefolder / "test" / rel).label for rel in truth}


def _onnx_params(path: Path) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    return int(sum(np.prod(numpy_helper.to_array(i).shape) for i in onnx.load(str(path)).graph.initializer))


def run(args: argparse.Namespace) -> str:
    import numpy as np

    from lineguard.compress import measure_latency
    from lineguard.edge import load_bundle

    work = Path(tempfile.mkdtemp(prefix="lineguard-peer-"))
    data = args.data or _toy_dataset(work)
    if args.bundle:
        bundle, lg_wall, lg_cpu = Path(args.bundle), float(args.train_seconds), float("nan")
    else:
        print("training LineGuard's default model...", flush=True)
        bundle, lg_wall, lg_cpu = _lineguard_default(data, work)
    b = load_bundle(bundle)
    h, w = b.preprocess.size
    if h != w:
        raise RuntimeError(f"YOLO-cls takes square inputs; the bundle's input is {h}x{w}")
    folder = work / "imagefolder"
    truth = export_imagefolder(data, folder)
    print(f"training {args.model} from scratch for {lg_wall:.0f} s in .bench-peers...", flush=True)
    cmd = [
        str(PEER_PYTHON),
        str(ROOT / "benchmarks" / "peers" / "yolo_train.py"),
        "--data",
        str(folder),
        "--out",
        str(work / "yolo"),
        "--seconds",
        f"{lg_wall:.1f}",
        "--imgsz",
        str(h),
        "--model",
        args.model,
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"the YOLO peer failed (exit {proc.returncode}):\n{tail}")
    yolo = json.loads((work / "yolo" / "result.json").read_text())
    yolo_onnx = rename_io(Path(yolo["onnx"]), work / "yolo" / "yolo-io.onnx")

    print("measuring latency side by side...", flush=True)
    sample = np.zeros((1, 3, h, w), np.float32)  # latency of these CNNs does not depend on pixel values
    lat = measure_latency(
        {"lineguard": (b.model_path, "ort"), "yolo": (yolo_onnx, "ort")},
        sample,
        threads=(1,),
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
    )
    lg_pred = _lineguard_predictions(bundle, folder, truth)
    pos = b.positive_class
    lg_ba = _balanced_accuracy(truth, lg_pred, pos)
    yolo_ba = _balanced_accuracy(truth, yolo["test_predictions"], pos)
    lg_l, yo_l = lat["lineguard"][1], lat["yolo"][1]
    ratio = yo_l.median_ms / lg_l.median_ms
    lg_cpu_text = "not measured here" if lg_cpu != lg_cpu else f"{lg_cpu:.0f} s"
    model_name = load_bundle(bundle).meta.get("lineage", {}).get("model", "default")
    rows = [
        "| model | params (k) | ONNX (KB) | training budget | epochs | median ms @1t | p99 ms @1t | balanced accuracy (%) |",
        "|---|---|---|---|---|---|---|---|",
        f"| LineGuard default ({model_name}) | {_onnx_params(b.model_path) / 1e3:.0f} | "
        f"{b.model_path.stat().st_size / 1024:.0f} | {lg_wall:.0f} s wall / {lg_cpu_text} CPU | - | "
        f"{lg_l.median_ms:.3f} | {lg_l.p99_ms:.3f} | {lg_ba * 100:.2f} |",
        f"| YOLO nano ({yolo['model']}, from scratch) | {yolo['params'] / 1e3:.0f} | "
        f"{Path(yolo['onnx']).stat().st_size / 1024:.0f} | {yolo['train_wall_s']:.0f} s wall / "
        f"{yolo['train_cpu_s']:.0f} s CPU | {yolo['epochs']} | {yo_l.median_ms:.3f} | {yo_l.p99_ms:.3f} | "
        f"{yolo_ba * 100:.2f} |",
    ]
    if min(lg_ba, yolo_ba) <= CHANCE_LEVEL:
        p1 = f"not decidable from this run (a model is at chance level, <= {CHANCE_LEVEL:.0%} balanced accuracy)"
    else:
        p1 = "met" if ratio >= 3 and lg_ba >= yolo_ba else "NOT met"
    return (
        "\n".join(rows) + "\n\n"
        f"LineGuard is **{ratio:.1f}x** faster (YOLO median / LineGuard median, batch 1, 1 thread, ONNX Runtime, "
        f"{args.rounds} interleaved rounds of fresh processes, {args.repeats} timed runs each model after "
        f"{args.warmup} warm-up runs per round). Balanced accuracy on the same {len(truth)} test images: "
        f"LineGuard {lg_ba * 100:.2f} % vs YOLO {yolo_ba * 100:.2f} %. P1 peer target (>= 3x faster at equal or "
        f"better balanced accuracy): **{p1}**.\n\n"
        f"Input {h}x{w} for both. YOLO: Ultralytics {yolo['ultralytics']}, torch {yolo['torch']}, trained from the "
        f"architecture yaml (no pretrained weights, nothing downloaded) with `time=` set to LineGuard's training "
        f"wall time, exported to ONNX (batch 1) and timed through the same runner after renaming its input/output "
        f"to `image`/`logits` (names only). LineGuard's accuracy uses its bundle (own preprocessing, thresholds); "
        f"YOLO's uses Ultralytics' own predictor on the same files. "
        + (
            "LineGuard's training time is the one given with --bundle (measured when that bundle's run was trained).\n"
            if args.bundle
            else "Both trainings ran on the same machine, one after the other, in this run.\n"
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a LineGuard dataset (default: make the default toy dataset)")
    parser.add_argument("--bundle", help="an existing LineGuard bundle instead of training the default model")
    parser.add_argument(
        "--train-seconds", type=float, default=90.0, help="YOLO's budget when --bundle is given"
    )
    parser.add_argument("--model", default="yolo11n-cls.yaml")
    parser.add_argument(
        "--threads", type=int, default=0, help="YOLO's torch threads (match train.threads; 0 = all)"
    )
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--section", default=TITLE, help="the docs/benchmarks.md section to write (e.g. one per dataset)"
    )
    parser.add_argument(
        "--note", default="", help="a caveat printed at the top of the section (e.g. a loaded machine)"
    )
    args = parser.parse_args()
    command = "bash benchmarks/peers/run.sh" + args_for_docs(sys.argv[1:])
    try:
        body = run(args)
        status = 0
    except Exception as exc:  # the section must say why the peer could not run, with the error
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        body = f"The YOLO peer could not run on this machine:\n\n```\n{detail}\n```\n"
        status = 1
    if args.note:
        body = f"**Note:** {args.note}\n\n{body}"
    write_section(args.section, body, command)
    print(body)
    return status


if __name__ == "__main__":
    sys.exit(main())
