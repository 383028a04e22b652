# The two commands of the README: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint format bench-accuracy bench-aggregate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

## run: set up, then run the product on its embedded default (API, worker, demo federation)
# FEDALIGN_DATA_DIR (default ./.fedalign) holds everything; building the digit domains there first (seconds,
# once) lets the demo start training as soon as it is started.
DATA_DIR ?= $(or $(FEDALIGN_DATA_DIR),.fedalign)
run: setup
	FEDALIGN_DATA_DIR=$(DATA_DIR) $(BIN)/fedalign data build
	FEDALIGN_DATA_DIR=$(DATA_DIR) $(BIN)/fedalign up

## test: set up, then lint and run every test
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-accuracy: setup
	$(BIN)/python bench/accuracy.py --seeds 0 1 --json bench/results/accuracy.json

bench-aggregate: setup
	$(BIN)/python bench/aggregate_bench.py --json bench/results/aggregate.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
