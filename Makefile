# The two commands: `make demo` runs the whole lifecycle on the toy dataset, `make test` passes the tests.
# Both create .venv and install everything (pip packages with constraints.txt, Debian packages with apt-get).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -c constraints.txt
STAMP  := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: demo test install lint typecheck pytest system-deps bench bench-peers clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) -q -e '.[all,dev]'
	touch $(STAMP)

install: system-deps $(STAMP)

# Debian packages the tests start for real: the mosquitto MQTT broker and a headless chromium for the dashboard.
DEBS := mosquitto chromium
system-deps:
	@missing=""; for c in $(DEBS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends$$missing >/dev/null \
	    || { echo "could not install$$missing with apt-get; install them, then run make again" >&2; exit 1; }; \
	fi

demo: install
	$(BIN)/lineguard demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	bash .ci/pytest.sh

# The code is formatted by hand to the 110-120 columns of STYLE.md, not by `ruff format` (which would reflow
# ~170 files): lint is the checks `make test` enforces.
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run_all.py

# The YOLO nano peer, in its own venv (.bench-peers): benchmark-only, never a LineGuard dependency (AGPL).
bench-peers: install
	bash benchmarks/peers/run.sh

clean:
	rm -rf $(VENV) lineguard-work .pytest_cache .mypy_cache .ruff_cache
