# Two commands for a fresh machine (see README):
#   make book   set up .venv, execute every chapter with papermill, build the Jupyter Book
#   make test   set up .venv, run the test suite (includes executing the chapters with CI parameters)
#
# TORCH is what pip installs for PyTorch before the package. Leave the default on a plain
# machine; on a machine whose Python already has the torch you want (Colab, a cluster module),
# run `make TORCH= test` to keep it.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup book test lint clean gpu-wheels gpu-check

setup: $(STAMP)

# dmd_core with the book's and the tests' extras, and the chapters' helpers (book/: dmd-book, package dmd_book),
# in one pip command (dmd-book requires dmd-core, which it finds here, not on a registry).
$(STAMP): pyproject.toml book/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[book,dev]" -e ./book
	touch $(STAMP)

book: setup
	$(BIN)/python book/build.py

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check dmd_core tests benchmarks book
	$(BIN)/ruff format --check dmd_core tests benchmarks book

clean:
	rm -rf _build book/executed runs

# The GPU check (benchmarks/gpu_check.py): `make gpu-wheels` here downloads into .wheels/ what a bare GPU machine
# without a package registry lacks (papermill, ipykernel, ...); `make gpu-check` there runs the check, see its
# docstring (bring .wheels/ along and add GPU_CHECK_ARGS="--install-wheels .wheels" on a bare machine). It prints
# its plan first (400 s in all, installs included; GPU_CHECK_ARGS="--budget S" scales it) and rewrites its report
# after every stage and when stopped.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

gpu-wheels:
	$(GPU_PYTHON) benchmarks/gpu_check.py --download-wheels .wheels

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
