# The two commands of the README: `make repro` (whole default pipeline) and `make test` (test suite).
# Both create or update the same virtual environment first; re-running them is safe.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hardmask-installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: repro test test-all lint env clean-env mlflow-ui bench params study

env: $(STAMP)

# Reinstall only when the declared dependencies change.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

# dvc runs the stage commands (`python stages/...`) with the environment's python first on PATH.
repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Two pytest-xdist workers keep both cores of a small machine busy (TEST_WORKERS=0: one process, in order).
# Test by test, longest first (tests/conftest.py), in the collection's order; a module that shares a fixture
# or the one local SLURM node marks its tests as one `xdist_group`, which a single worker runs.
test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

# params.yaml is composed from conf/ (Hydra, as `dvc exp run -S ...` does); rewrite it after editing conf/.
params: $(STAMP)
	$(BIN)/python -m hardmask.config $(OVERRIDES)

lint: $(STAMP)
	$(BIN)/ruff check src stages tests
	$(BIN)/ruff format --check src stages tests

bench: $(STAMP)
	$(BIN)/python -m hardmask.bench

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The opt-in study: the paper's comparison and ablation tables and a robustness grid, as queued DVC
# experiments (reports/study.md). 35 min on an idle 2-core machine (README, "The study").
study: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m hardmask.study run

clean-env:
	rm -rf $(VENV)
