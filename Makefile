# One command for the main job (`make demo`), one for the tests (`make test`).
# Both create or refresh the local virtual environment .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DSB    := $(VENV)/bin/dsb
STAMP  := $(VENV)/.dsb-installed
# Compiled numba kernels are cached here so a second process does not pay the compile.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(DSB) demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/rle_speed.py
	$(PY) benchmarks/score_speed.py
	$(PY) benchmarks/watershed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/predict_memory.py
	$(PY) benchmarks/predict_speed.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .hypothesis
