# `make test` and `make bench` do all the set-up: .venv, dependencies, the package (and its CUDA extension where a
# CUDA toolkit and a CUDA build of torch are present). Nothing else needs installing or exporting.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.masksub-installed
PYTHON_FOR_VENV ?= python3
SOURCES := masksub_kernels tests benchmarks tools setup.py

.PHONY: test bench lint format install clean

$(STAMP): requirements-dev.txt pyproject.toml setup.py $(wildcard csrc/* csrc/platform/*)
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
# Then the loss kernels' Triton tests (-m triton: tests/conftest.py) again, with a GPU's fp32 arithmetic in the Triton
# interpreter (MASKSUB_GPU_MATH=1, tools/gpu_math.py: approximate exp, exp2, rsqrt and division, fma contraction, bf16
# rounded to nearest): their tolerances must hold for both (~4 minutes here; skipped on a machine with a GPU).
TEST_WORKERS ?= auto
GPU_MATH_TESTS := $(addprefix tests/ops/test_,loss_inputs.py masksub_loss.py masksub_loss_split.py \
	masksub_loss_reduced.py linear_loss_chunks.py linear_loss_kernels.py linear_loss_paths.py linear_masksub_loss.py)
test: lint
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30
	MASKSUB_GPU_MATH=1 $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile -q -m triton $(GPU_MATH_TESTS)

bench: $(STAMP)
	$(PYTHON) -m masksub_kernels.bench $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info masksub_kernels/*.so .pytest_cache .ruff_cache
