# The README's commands. Each creates or refreshes .venv/ and installs what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE := $(VENV)/.installed-core
# One torch thread per process unless the caller says otherwise (2-core machines: OpenMP contention).
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench install clean system-deps

# What the demo needs (torch, the package, matplotlib for the report): ~25 s less to install than
# everything. `make test` (and `make install`) add the test tools and the labeling app's packages.
$(CORE): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -e '.[report]'
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -e '.[dev,report,app]'
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE)
	$(BIN)/instructkit demo

# Debian's chromium and postgresql for the labeling app's browser and PostgreSQL tests; quiet, and
# skipped when both are present. Where apt-get cannot run, those tests skip and say why.
system-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "installing Debian packages:$$missing"; \
	  ( $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing ) >/dev/null \
	    || echo "warning: could not install$$missing; the browser / PostgreSQL tests will skip"; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -e '.[bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/generation.py --family llama
	$(BIN)/python benchmarks/sft.py
	$(BIN)/python benchmarks/rm.py
	$(BIN)/python benchmarks/direct.py
	$(BIN)/python benchmarks/ppo.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/instructkit pipeline configs/headline.yaml   # the small policy, pretrained like the base; ~11 min
	$(BIN)/python benchmarks/headline.py --eval-seeds 0,1,2   # the 7.7x base (~30 min on one core), 3 evals

clean:
	rm -rf $(VENV) runs .pytest_cache
