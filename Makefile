# One command for the main job (`make demo`), one for the tests (`make test`), one for a
# real Kaggle submission with the shipped weights (`make submission`).
# All create or refresh the local virtual environment .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DSB    := $(VENV)/bin/dsb
STAMP  := $(VENV)/.dsb-installed
# Compiled numba kernels are cached here so a second process does not pay the compile.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

# `make submission`: the stage-1 test images (a zip or stage folder; or a data folder that
# holds stage1_test.zip / stage1_test/) predicted with the shipped weights and d4 TTA.
DSB_DATA ?= ../shared/dsb2018/stage1_test.zip
WEIGHTS  ?= unetpp_r18_nostain_full
TTA      ?= d4
# Nuclei grown by this many pixels after the instance filter (postprocess.expand_px): the
# stage-1 test annotations are drawn about 1 px wider than the training labels
# (docs/annotation-width.md); 0 reproduces the training labels' outlines.
EXPAND_PX ?= 1
# Each image is predicted at the scale that makes its median nucleus this many pixels
# (--rescale-area). The set's own infer.rescale_area_px, 500 (the training scale, what
# `dsb segment` uses), is faster; 700 scored higher on held-out images, most of all on ones
# like the test set's, smaller nuclei (docs/results.md, "Predicting larger").
RESCALE_AREA ?= 700
SUBMISSION ?= submissions/stage1_test.csv
TEST_INPUT = $(shell if [ -e "$(DSB_DATA)/stage1_test.zip" ]; then echo "$(DSB_DATA)/stage1_test.zip"; \
	elif [ -d "$(DSB_DATA)/stage1_test" ]; then echo "$(DSB_DATA)/stage1_test"; else echo "$(DSB_DATA)"; fi)

.PHONY: setup browser demo submission test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(DSB) demo

submission: setup
	$(DSB) predict --checkpoint $(WEIGHTS) --input "$(TEST_INPUT)" --out $(SUBMISSION) --tta $(TTA) --expand $(EXPAND_PX) --rescale-area $(RESCALE_AREA)
	$(DSB) validate $(SUBMISSION) --images "$(TEST_INPUT)"

# The HTML report's browser test needs headless Chromium: `browser` finds one or installs
# Debian's package (as root or with password-less sudo); where none can be had it says so and
# the suite runs without that test (its skip, with the reason, ends the summary).
browser:
	@bash tests/ensure_browser.sh

test: setup browser
	$(PY) -m pytest -q

# The edit-and-rerun loop: everything but the tests marked `slow` (training for epochs,
# fresh processes, the CLI pipeline, the shipped weights on real images, fuzzing, the browser).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Every speed and memory benchmark: each script in benchmarks/ (not _common.py, the helper
# they share; not benchmarks/research/, whose scripts measure model choices on a training
# run or shipped set and are run by hand). BENCH_ARGS_<name> passes arguments to one; a
# benchmark whose data are absent says so and passes. All run; a failure (a missed bound,
# an error) is listed at the end and fails the target.
BENCHMARKS := $(sort $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)))
BENCH_ARGS_segment_speed ?= --big-px 0

bench: setup
	@failed=""; $(foreach b,$(BENCHMARKS),echo "== $(strip $(b) $(BENCH_ARGS_$(basename $(notdir $(b)))))"; \
	  $(PY) $(b) $(BENCH_ARGS_$(basename $(notdir $(b)))) || failed="$$failed $(b)";) \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi; echo "all $(words $(BENCHMARKS)) benchmarks ran"

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .hypothesis
