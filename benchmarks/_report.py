"""Shared by the benchmark scripts: machine facts and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Figures measured by the scripts under `benchmarks/` (run them all with `make bench`). Each section says the\n"
    "machine, the date and the command. Times are medians over repeated runs on a shared, noisy 2-core machine;\n"
    "a figure that misses its target is reported as it is.\n"
)


def machine() -> str:
    """One line describing where a figure was measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {dt.date.today().isoformat()}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_note() -> str:
    """The 1-minute load average at the end of a run, with a warning when it exceeds the cores."""
    load = os.getloadavg()[0]
    busy = load > (os.cpu_count() or 1)
    return f"1-minute load average at the end: {load:.1f}" + (
        " -- a loaded machine: re-run on a quiet one." if busy else ".")


def balanced_accuracy_on(scorer: Any, dataset: Any, splits: Sequence[str]) -> float:
    """Balanced accuracy at the model's own 0.5 point (margin > 0) over the given splits of ``dataset``,
    scored through ``lineguard.evaluate.predict`` (the evaluation stage's own path)."""
    import numpy as np

    from lineguard.evaluate.metrics import confusion, rates
    from lineguard.evaluate.scoring import predict

    parts = [predict(scorer, dataset, s) for s in splits if len(dataset.split(s))]
    labels = np.concatenate([p.labels for p in parts])
    predicted = (np.concatenate([p.margins for p in parts]) > 0).astype(np.int64)
    return float(rates(confusion(labels, predicted))["balanced_accuracy"])


def args_for_docs(argv: list[str]) -> str:
    """The command-line arguments as shown in the docs: the --note text is shown above the table instead."""
    shown, skip = [], False
    for a in argv:
        if skip:
            shown.append('"..."')
            skip = False
        elif a == "--note":
            shown.append(a)
            skip = True
        else:
            shown.append(a)
    return "".join(f" {a}" for a in shown)


def _section_pattern(title: str) -> re.Pattern[str]:
    """The ``## title`` section of docs/benchmarks.md: its heading up to the next ``## `` or the end."""
    return re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)


def read_section(title: str) -> str:
    """The ``## title`` section of docs/benchmarks.md as it stands ("" when there is none)."""
    found = _section_pattern(title).search(DOC.read_text()) if DOC.exists() else None
    return found.group(0) if found else ""


def write_section(title: str, body: str, command: str) -> None:
    """Replace (or append) the ``## title`` section of docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"## {title}\n\nMachine: {machine()}. Command: `{command}`\n\n{body.strip()}\n"
    pattern = _section_pattern(title)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(DOC)
