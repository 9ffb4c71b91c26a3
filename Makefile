# The README's commands. Each creates or refreshes .venv/ and installs what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# One torch thread per process unless the caller says otherwise (2-core machines: OpenMP contention).
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,report]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/instructkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/sft.py

clean:
	rm -rf $(VENV) runs .pytest_cache
