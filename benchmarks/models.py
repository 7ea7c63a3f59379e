"""Benchmark: the architectures of ``lineguard.models`` side by side at 128 px.

For each architecture (width 1.0 unless named otherwise): parameters, multiply-accumulates
(counted with forward hooks on every conv and linear layer), ONNX file size, ONNX Runtime
latency at batch 1 and 1 thread (median and p99 over ``--repeats`` runs after a warm-up),
and training throughput (images/s, forward + backward + AdamW step, batch 32, all cores).
Writes the ``## Architectures`` section of docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/models.py [--size 128] [--repeats 500] [--warmup 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _report import median, percentile, write_section

from lineguard.models import count_parameters, create_model

ARCHITECTURES: list[tuple[str, float]] = [
    ("tinycnn", 1.0),
    ("tinycnn", 0.5),
    ("mobilenetv3_small", 1.0),
    ("mobilenetv3_small", 0.5),
    ("mobilenetv3_large", 1.0),
    ("efficientnet_b0", 1.0),
    ("resnet18", 1.0),
]


def count_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of one forward pass at ``size`` x ``size`` (convs and linear layers)."""
    total = 0

    def conv_hook(m: torch.nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: torch.nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def onnx_latency(model: torch.nn.Module, size: int, repeats: int, warmup: int, tmp: Path) -> tuple[int, list[float]]:
    """Export to ONNX, then time batch-1 inference in ONNX Runtime with 1 thread (ms per run)."""
    import onnxruntime as ort

    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "model.onnx"
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    # large weights may sit in an external-data file beside the graph: count every file
    return sum(f.stat().st_size for f in tmp.iterdir() if f.is_file()), times


def train_throughput(model: torch.nn.Module, size: int, batch: int = 32, steps: int = 6) -> float:
    """Images per second of forward + backward + AdamW step (after one warm-up step)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return batch / median(times)


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lineguard-bench-models-") as tmp:
        for name, width in ARCHITECTURES:
            model = create_model(name, num_classes=2, width=width)
            params = count_parameters(model)
            macs = count_macs(model, args.size)
            size_bytes, lat = onnx_latency(model, args.size, args.repeats, args.warmup, Path(tmp) / f"{name}-{width:g}")
            ips = train_throughput(model, args.size)
            label = name if width == 1.0 else f"{name} (width {width:g})"
            rows.append(
                f"| {label} | {params / 1e6:.3f} | {macs / 1e6:.1f} | {size_bytes / 1e6:.2f} | "
                f"{median(lat):.3f} | {percentile(lat, 99):.3f} | {ips:.0f} |"
            )
            print(rows[-1], flush=True)
    body = (
        f"All at {args.size}x{args.size} input, 2 classes. Latency: ONNX Runtime (fp32, CPU), batch 1, 1 thread, "
        f"median and p99 of {args.repeats} runs after {args.warmup} warm-up runs. Training: images/s of forward + "
        f"backward + AdamW step, batch 32, {torch.get_num_threads()} torch threads. MACs counted from the conv and "
        "linear layers.\n\n"
        "| architecture | params (M) | MACs (M) | ONNX (MB) | latency median (ms) | latency p99 (ms) | "
        "train (img/s) |\n|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"numpy {np.__version__}, torch {torch.__version__}, onnxruntime {_ort_version()}."
    )
    if not args.no_write:
        write_section("Architectures", body, "python benchmarks/models.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
