# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
BENCH_RUN := runs/bench

.PHONY: install install-test demo test lint format bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install $(TORCH_PINS) -e .
	touch $@

# the test extras include the optional integrations (transformers, wandb, mlflow, bcos)
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install $(TORCH_PINS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/dave-lightning demo

test: install-test
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every figure of docs/benchmarks.md, with the settings the text states.
bench: install-test
	$(BIN)/pip install $(TORCH_PINS) -e ".[test,bench]"
	$(BIN)/python benchmarks/bench_engine.py --n-samples 8 --repeats 2 --threads 1
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_callback.py --repeats 3
	$(BIN)/python benchmarks/bench_overhead.py --epochs 1 --images 512 --repeats 1 --threads 1
	rm -rf $(BENCH_RUN) && $(BIN)/dave-lightning demo --out $(BENCH_RUN) --quiet
	$(BIN)/python benchmarks/claims.py --checkpoint $$(ls $(BENCH_RUN)/shapes/version_0/checkpoints/*.ckpt)
	$(BIN)/python benchmarks/bench_reliability.py --checkpoint $$(ls $(BENCH_RUN)/shapes/version_0/checkpoints/*.ckpt)
	$(BIN)/python benchmarks/bench_probe_size.py --checkpoint $$(ls $(BENCH_RUN)/shapes/version_0/checkpoints/*.ckpt)
	$(BIN)/python benchmarks/bench_shortcut.py
	$(BIN)/python benchmarks/bench_shortcut.py --first-seed 5
