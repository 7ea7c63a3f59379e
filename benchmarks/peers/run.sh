#!/usr/bin/env bash
# The YOLO nano peer benchmark (TARGETS P1, peer part). `make bench-peers` runs this.
#
# Ultralytics is AGPL-3.0: it lives in its own virtual environment (.bench-peers/, gitignored), is never a
# dependency of LineGuard and is never imported by it. This script:
#   1. creates .bench-peers/ and installs benchmarks/peers/requirements.txt with the project's constraints
#      (torch==2.13.0 resolves to the CPU build here; torchvision 0.28 comes from the registry as a CUDA build),
#   2. patches that torchvision so it imports on CPU torch (../shared/tools/torchvision_cpu_stub.py, needs patchelf),
#   3. runs benchmarks/peers/yolo.py in LineGuard's .venv, which trains LineGuard's default model and a
#      yolo11n-cls from scratch (in .bench-peers, offline) on the same split for the same time, and measures both.
# Arguments are passed to yolo.py (e.g. --bundle BUNDLE --train-seconds 90, --model yolov8n-cls.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."
PEER=.bench-peers
STUB=../shared/tools/torchvision_cpu_stub.py
export YOLO_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1

if [ ! -x .venv/bin/python ]; then
  echo "LineGuard's .venv is missing: run 'make install' first" >&2
  exit 2
fi
if [ ! -f "$PEER/.installed" ] || [ benchmarks/peers/requirements.txt -nt "$PEER/.installed" ]; then
  test -x "$PEER/bin/python" || python3 -m venv "$PEER"
  "$PEER/bin/python" -m pip install -q --upgrade pip
  "$PEER/bin/pip" install -q -c constraints.txt -r benchmarks/peers/requirements.txt
  # The constraint must have kept torch on the CPU build; a CUDA torch would mean GBs of downloads.
  "$PEER/bin/python" -c "import torch, sys; v = torch.__version__; print('peer torch', v); sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else 1)"
  if [ ! -f "$STUB" ]; then
    echo "missing $STUB (the shared torchvision CPU stub); cannot make torchvision import" >&2
    exit 2
  fi
  PATH="$PWD/$PEER/bin:$PATH" "$PEER/bin/python" "$STUB" || echo "(torchvision stub: nothing to do)"
  "$PEER/bin/python" -c "import torchvision, ultralytics; print('torchvision', torchvision.__version__, 'ultralytics', ultralytics.__version__)"
  touch "$PEER/.installed"
fi
exec .venv/bin/python benchmarks/peers/yolo.py "$@"
