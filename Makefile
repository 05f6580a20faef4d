# `make test` and `make bench` do all the set-up: .venv, dependencies, the package (and its CUDA extension where a
# CUDA toolkit and a CUDA build of torch are present). Nothing else needs installing or exporting.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.masksub-installed
PYTHON_FOR_VENV ?= python3
SOURCES := masksub_kernels tests benchmarks tools setup.py

.PHONY: test bench lint format install clean

$(STAMP): requirements-dev.txt pyproject.toml setup.py masksub_kernels/_sources.py $(wildcard csrc/* csrc/platform/*)
	test -x $(PYTHON) || $(PYTHON_FOR_VENV) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(SOURCES)
	$(VENV)/bin/ruff format $(SOURCES)

# The suite runs on pytest-xdist's workers (one per core), a test file per worker at a time (--dist loadfile: a
# module's expensive module fixture is built once; loadgroup's xdist_group marks do not group under pytest 9.2 with
# pytest-xdist 3.8, pytest-dev/pytest-xdist#1386) in the order of tests/conftest.py, slow files first
# (--no-loadscope-reorder: loadfile would otherwise send the files with most tests first), and prints its slowest
# tests, to keep CI's time in view. TEST_WORKERS=0: one process.
# The loss kernels' Triton tests (marked gpu_math by tests/conftest.py) are not run there but in a second pass, with a
# GPU's fp32 arithmetic in the Triton interpreter (MASKSUB_GPU_MATH=1, tools/gpu_math.py: approximate exp, exp2,
# rsqrt and division, fma contraction, bf16 rounded to nearest): once, under the arithmetic their tolerances are for
# (~5 minutes here; on a machine with a GPU they run on it in the first pass and the second skips).
TEST_WORKERS ?= auto
test: lint
	MASKSUB_GPU_MATH=defer $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30
	MASKSUB_GPU_MATH=1 $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile -q -m gpu_math tests/ops

bench: $(STAMP)
	$(PYTHON) -m masksub_kernels.bench $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info masksub_kernels/*.so .pytest_cache .ruff_cache
