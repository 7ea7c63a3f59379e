"""The fair anchor of Q2: a plain 4-block CNN that a competent engineer writes in 40 lines.

Grey input at 128x128, conv3x3-BN-ReLU-maxpool x4 (32-64-128-256 channels), global average
pooling and a linear head; class-balanced sampling, horizontal and vertical flips and
brightness jitter; AdamW with a one-cycle learning rate whose length is set from the wall-time
budget (the first epoch is timed, then the cycle is fitted to the time left); the weights of the
best validation epoch are kept. It is given the same wall time as LineGuard's default on the same
split. Benchmark-only: it uses nothing of LineGuard but the dataset reader.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

SIZE = 128


@dataclass
class AnchorResult:
    test_labels: np.ndarray  # 1 = defect
    test_scores: np.ndarray  # P(defect)
    epochs: int
    wall_s: float
    latency_ms: float


def _load(dataset: Any, split: str, positive: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rows = dataset.split(split)
    images = np.empty((len(rows), 1, SIZE, SIZE), dtype=np.uint8)
    for i, path in enumerate(rows["path"]):
        grey = Image.fromarray(dataset.read_image(path)).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        images[i, 0] = np.asarray(grey)
    return images, (rows["label"].to_numpy() == positive).astype(np.int64)


def _net() -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    ch = 1
    for out in (32, 64, 128, 256):
        layers += [nn.Conv2d(ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        ch = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 2))


def train_plain_cnn(dataset: Any, budget_s: float, positive: str = "bad", seed: int = 0,
                    batch_size: int = 32, max_lr: float = 3e-3) -> AnchorResult:
    """Train the anchor on ``dataset``'s train split for ``budget_s`` seconds of wall time (decoding included)."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    (xtr, ytr), (xva, yva), (xte, yte) = (_load(dataset, s, positive) for s in ("train", "val", "test"))
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=max_lr, weight_decay=1e-4)

    def batches_of_epoch() -> list[np.ndarray]:
        # Balanced sampling: each class drawn equally often, an epoch as long as the train split.
        by_class = [np.flatnonzero(ytr == c) for c in (0, 1)]
        picks = np.concatenate([rng.choice(m, len(ytr) // 2, replace=True) for m in by_class])
        rng.shuffle(picks)
        return [picks[i : i + batch_size] for i in range(0, len(picks) - 1, batch_size)]

    def augment(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        flip_h = torch.rand(n) < 0.5
        flip_v = torch.rand(n) < 0.5
        x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
        x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
        return x * (1 + 0.4 * (torch.rand(n, 1, 1, 1) - 0.5))  # brightness jitter +-20 %

    def scores(x: np.ndarray) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            out = [F.softmax(net(torch.from_numpy(x[i : i + 128]).float() / 255.0), 1)[:, 1]
                   for i in range(0, len(x), 128)]
        return torch.cat(out).numpy()

    def balanced_accuracy(y: np.ndarray, s: np.ndarray) -> float:
        pred = s >= 0.5
        return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]))

    def run_epoch(sched: Any | None) -> None:
        net.train()
        for idx in batches_of_epoch():
            x = augment(torch.from_numpy(xtr[idx]).float() / 255.0)
            loss = F.cross_entropy(net(x), torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()

    # Time one epoch at a low constant lr, then fit the one-cycle schedule to the budget left.
    for g in opt.param_groups:
        g["lr"] = max_lr / 25
    t_epoch = time.perf_counter()
    run_epoch(None)
    epoch_s = time.perf_counter() - t_epoch
    epochs = max(1, int((budget_s - (time.perf_counter() - t0)) / (epoch_s * 1.08)))
    steps = epochs * len(batches_of_epoch())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps + 1)
    best = (-1.0, {k: v.clone() for k, v in net.state_dict().items()})
    for _ in range(epochs):
        run_epoch(sched)
        bal = balanced_accuracy(yva, scores(xva))
        if bal >= best[0]:
            best = (bal, {k: v.clone() for k, v in net.state_dict().items()})
        if time.perf_counter() - t0 > budget_s * 1.05:
            break
    net.load_state_dict(best[1])
    wall = time.perf_counter() - t0
    torch.set_num_threads(1)
    one = torch.from_numpy(xte[:1]).float() / 255.0
    times = []
    with torch.no_grad():
        for _ in range(30):
            t = time.perf_counter()
            net(one)
            times.append(time.perf_counter() - t)
    torch.set_num_threads(os.cpu_count() or 1)
    return AnchorResult(yte, scores(xte), epochs + 1, wall, 1000 * float(np.median(times[5:])))
