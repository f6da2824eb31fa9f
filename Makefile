# Set-up and checks for a fresh machine. `make demo` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TIMM_SUITE_DIR ?= .cache/timm-suite

.PHONY: setup demo test lint docs-check timm-suite bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	bash scripts/install_system_data.sh
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'

demo: setup
	$(BIN)/python recipes/demo.py --out outputs/demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The README and docs/ agree with results/, and the README's Python blocks run.
docs-check: setup
	$(BIN)/python scripts/render_docs.py --check

timm-suite: setup
	bash scripts/run_timm_model_tests.sh $(BIN)/python $(TIMM_SUITE_DIR)

test: setup lint docs-check
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow
	$(MAKE) timm-suite

bench: setup
	$(BIN)/python benchmarks/bench_cipher.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/params.py
