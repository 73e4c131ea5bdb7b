# Two commands for a new user: `make demo` and `make test`. Both are idempotent.
#
# torch: TORCH is installed before the `train` extra so that a version range
# never pulls a second build. On this project's CI machines torch==2.13.0 is
# the CPU wheel on local disk; on a machine with an NVIDIA GPU the same pin
# from PyPI is the CUDA build. Override it, e.g. `make test TORCH=torch==2.14.1`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip
DEMO   ?= demo

.PHONY: demo test lint typecheck venv dev clean

venv: $(VENV)/.stamp-base
dev: $(VENV)/.stamp-dev

$(VENV)/.stamp-base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[train,dev,dist]"
	touch $@

demo: $(VENV)/.stamp-base
	$(BIN)/medai synth $(DEMO)/studies --cases 3 --seed 7 --slices 120
	$(BIN)/medai inspect $(DEMO)/studies
	$(BIN)/medai score $(DEMO)/studies --out $(DEMO)/results.csv --saliency-dir $(DEMO)/saliency
	@echo "results: $(DEMO)/results.csv   key images: $(DEMO)/saliency/   (research use only, not for diagnosis)"

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check medai tests scripts
	$(BIN)/ruff format --check medai tests scripts
	$(BIN)/lint-imports

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache .mypy_cache
