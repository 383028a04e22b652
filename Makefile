# The two commands of the README: `make run` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test docs docs-serve lint format frontend-api bench-accuracy bench-aggregate bench-lambda \
        bench-load bench-privacy bench-recovery bench-round bench-transfer bench-steps bench-data \
        bench-ablation bench-signals bench-guard bench-variants bench-clinics bench-label-free clean

# The dev set includes the optional extras (export: ONNX; parquet; the trackers), so that their tests run. setuptools says
# on every editable install that it is one ("Editable installation" / "Please be careful with folders ..."):
# that notice is filtered, so a first `make run` prints what FedAlign has to say.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e '.[server,dev,bench,docs,export,parquet,mlflow,tensorboard]'
	touch $(STAMP)

# The dashboard: npm packages exactly as locked, then the static build the API serves at /.
FRONTEND     := frontend
NPM_STAMP    := $(FRONTEND)/node_modules/.installed-stamp
DASHBOARD    := $(FRONTEND)/dist/index.html
FRONTEND_SRC := $(shell find $(FRONTEND)/src $(FRONTEND)/index.html $(FRONTEND)/vite.config.ts \
                  $(FRONTEND)/tsconfig.json -type f 2>/dev/null)

$(NPM_STAMP): $(FRONTEND)/package.json $(FRONTEND)/package-lock.json
	cd $(FRONTEND) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

$(DASHBOARD): $(NPM_STAMP) $(FRONTEND_SRC)
	cd $(FRONTEND) && npm run --silent build

setup: $(STAMP) $(DASHBOARD)

## run: set up, then run the product on its embedded default (API, worker, demo federation)
# FEDALIGN_DATA_DIR (default ./.fedalign) holds everything; building the digit domains there first (seconds,
# once) lets the demo start training as soon as it is started.
DATA_DIR ?= $(or $(FEDALIGN_DATA_DIR),.fedalign)
run: setup
	FEDALIGN_DATA_DIR=$(DATA_DIR) $(BIN)/fedalign data build
	FEDALIGN_DATA_DIR=$(DATA_DIR) $(BIN)/fedalign up

## test: set up, then lint, build the docs site (warnings are errors) and run every test
test: setup docs
	$(BIN)/ruff check .
	cd $(FRONTEND) && npm run --silent check:api && npm test --silent
	scripts/ensure-chromium.sh
	$(BIN)/python -m pytest

## docs: build the documentation site (docs/, mkdocs.yml) into build/site; offline, warnings are errors
DOCS_SITE := build/site
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(DOCS_SITE)

## docs-serve: the documentation site on http://127.0.0.1:8001, rebuilt as pages change
docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

## frontend-api: regenerate the dashboard's typed API client from the backend's OpenAPI document
frontend-api: setup
	cd $(FRONTEND) && npm run --silent gen:api

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (docs: Benchmarks) are modules of the `bench` package, run from the repository root; each
# writes its figures with the date, commit and command that produced them.
bench-accuracy: setup
	$(BIN)/python -m bench.accuracy --seeds 0 1 --json bench/results/accuracy.json

bench-aggregate: setup
	$(BIN)/python -m bench.aggregate_bench --json bench/results/aggregate.json

# 100 simulated REST nodes polling and uploading at once against one API process.
bench-load: setup
	$(BIN)/python -m bench.load_bench --json bench/results/load.json

# What differential privacy and secure aggregation cost on digits (target mnistm), four seeds.
bench-privacy: setup
	$(BIN)/python -m bench.privacy_bench --seeds 0 1 2 3 --steps 300 --json bench/results/privacy.json

# System performance: served rounds (API, Redis, Celery, PostgreSQL) against the in-process simulator; a
# 100 MB model through the API against a bare socket; the local training step against a bare PyTorch loop
# (CUDA with bf16 autocast when present).
bench-round: setup
	$(BIN)/python -m bench.round_overhead --json bench/results/round-overhead.json

bench-recovery: setup
	$(BIN)/python -m bench.recovery --kills 10 --json bench/results/recovery.json

bench-transfer: setup
	$(BIN)/python -m bench.transfer_bench --json bench/results/transfer.json

bench-steps: setup
	$(BIN)/python -m bench.step_throughput --json bench/results/step-throughput.json

# What the target's live label-free scores cost at each evaluation, against a pass over its whole split.
bench-label-free: setup
	$(BIN)/python -m bench.label_free_cost --json bench/results/label-free-cost.json

# A node's peak memory on 20,000 generated 128x128 images: read lazily against stacked into memory.
bench-data: setup
	$(BIN)/python -m bench.lazy_data --json bench/results/lazy-data.json

# Choose the adversarial weight per target on source-only validation tasks, then run the choice with two
# seeds (bench.select; results in bench/results/lambda-*.jsonl).
bench-lambda: setup
	PY=$(BIN)/python bench/lambda_study.sh

# The paired ablation of the adversarial term on digits: the recipe, lambda = 0, FedAvg with and without the
# target terms, source-only, five paired seeds (CPU-hours; resumable: runs already logged are skipped).
bench-ablation: setup
	PY=$(BIN)/python bench/ablation_study.sh

# The second benchmark family (signals): the recipe's procedure (lambda, then IM or not) on source-only
# validation tasks, then the paired table on five seeds (about an hour on two cores; resumable).
bench-signals: setup
	PY=$(BIN)/python bench/signals_study.sh

# Candidate recipes for making the alignment add accuracy: each validated on source-only tasks, the best per
# target (no target labels) then run with five paired seeds beside the same pipeline with lambda = 0
# (signals: under an hour on two cores; digits: CPU-hours; resumable).
bench-variants: setup
	PY=$(BIN)/python bench/variants_study.sh

# The third family (clinics), a confirmation declared before its runs: the normalisation chosen by the
# target's label-free information, five paired seeds, then its tables (under an hour on two cores; resumable).
bench-clinics: setup
	PY=$(BIN)/python bench/clinics_study.sh

# A label-free guard against negative transfer: FedAvg on the same source-only validation tasks as the
# recipe's settings, per target whichever validates best (both families; resumable), then its paired table.
bench-guard: setup
	PY=$(BIN)/python bench/guard_study.sh
	$(BIN)/python -m bench.guard --family signals --validation bench/results/signals-validation.jsonl \
		--final bench/results/signals.jsonl
	$(BIN)/python -m bench.guard --family digits --validation bench/results/lambda-validation.jsonl \
		--final bench/results/ablation.jsonl --recipe-arm fedalign_im_selected

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(FRONTEND)/node_modules $(FRONTEND)/dist $(DOCS_SITE)
