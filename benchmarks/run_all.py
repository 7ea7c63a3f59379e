"""Run every benchmark script in order; each writes its own section of docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/run_all.py [NAME ...]   (names: the script stems, e.g. synth ingest)
Run on a quiet machine: these are medians of repeated runs, but two cores shared with
other work still skew them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["synth", "ingest", "train", "onboard", "models", "evaluate", "edge_latency", "compress", "pipeline"]


def main(names: list[str]) -> int:
    wanted = names or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    failed = []
    for name in wanted:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"no benchmark named {name!r}; have: {', '.join(p.stem for p in HERE.glob('*.py'))}")
            return 2
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
