"""Train a YOLO nano classifier from scratch, export it to ONNX and predict the test split.

Runs ONLY inside the peer's own virtual environment (.bench-peers/, made by run.sh): Ultralytics is
AGPL-3.0, a benchmark peer, never imported by LineGuard. Nothing is downloaded: the architecture
comes from the yaml shipped with Ultralytics (no pretrained weights), YOLO_OFFLINE=1, plots off
(plotting fetches a font), the MLflow/Ray/W&B/... callbacks off.

Input: an imagefolder ``DATA/{train,val,test}/<class>/*.png``. Output (``--out``): ``yolo.onnx``
at ``--imgsz`` (batch 1, static) and ``result.json``: training wall/CPU seconds, epochs run,
parameters, class names and Ultralytics' own prediction (top-1 class) for every test image, so
accuracy is measured with the peer's own preprocessing.

Usage: .bench-peers/bin/python benchmarks/peers/yolo_train.py --data DIR --out DIR --seconds 90
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # belt and braces: the mlflow callback is off anyway
os.environ.setdefault("WANDB_MODE", "disabled")


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="imagefolder with train/ val/ test/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, required=True, help="training wall-time budget")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--model", default="yolo11n-cls.yaml", help="architecture yaml (from scratch)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ultralytics import YOLO, settings

    settings.update(
        {
            k: False
            for k in (
                "mlflow",
                "raytune",
                "wandb",
                "tensorboard",
                "clearml",
                "comet",
                "dvc",
                "hub",
                "neptune",
                "sync",
            )
            if k in settings
        }
    )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    model = YOLO(args.model, task="classify")  # a yaml: random init, nothing downloaded
    t0, c0 = time.perf_counter(), _cpu_seconds()
    model.train(
        data=str(data),
        imgsz=args.imgsz,
        epochs=1000,
        time=args.seconds / 3600.0,
        batch=args.batch,
        device="cpu",
        workers=0,
        pretrained=False,
        amp=False,
        plots=False,
        val=True,
        seed=args.seed,
        deterministic=True,
        project=str(out / "runs"),
        name="train",
        exist_ok=True,
        verbose=False,
        patience=1000,
    )
    train_wall, train_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    trainer = model.trainer
    best = Path(trainer.best) if trainer and Path(trainer.best).exists() else Path(trainer.last)
    trained = YOLO(str(best), task="classify")
    epochs = int(getattr(trainer, "epoch", -1)) + 1 if trainer else -1
    names = {int(k): str(v) for k, v in trained.names.items()}

    onnx_file = Path(trained.export(format="onnx", imgsz=args.imgsz, dynamic=False, simplify=False, batch=1))
    shutil.copyfile(onnx_file, out / "yolo.onnx")

    predictions: dict[str, str] = {}
    test_files = sorted(p for p in (data / "test").rglob("*.png"))
    for i in range(0, len(test_files), 64):
        chunk = test_files[i : i + 64]
        for path, res in zip(
            chunk,
            trained.predict([str(p) for p in chunk], imgsz=args.imgsz, device="cpu", verbose=False),
            strict=True,
        ):
            predictions[str(path.relative_to(data / "test"))] = names[int(res.probs.top1)]
    result = {
        "model": args.model,
        "imgsz": args.imgsz,
        "seconds_budget": args.seconds,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "epochs": epochs,
        "params": int(sum(p.numel() for p in trained.model.parameters())),
        "classes": names,
        "onnx": str(out / "yolo.onnx"),
        "test_predictions": predictions,
        "torch": torch.__version__,
        "ultralytics": __import__("ultralytics").__version__,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "test_predictions"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
