# Two commands do all setup: `make demo` and `make test`. Each bootstraps .venv when it is missing
# or older than pyproject.toml, installing torch==2.13.0 first (a CPU wheel here; an unpinned torch
# would pull multi-GB CUDA builds), then the package with its dev and eval extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest

.PHONY: demo test test-slow test-all bench lint clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,eval]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/prolong demo

test: $(STAMP)
	$(PYTEST) -q

test-slow: $(STAMP)
	$(PYTEST) -q -m slow

test-all: $(STAMP)
	$(PYTEST) -q -m ''

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(PY) -m ruff check prolong tests benchmarks
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)
