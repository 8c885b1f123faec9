# Two entry points for a fresh machine: `make demo` (train, evaluate, report) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/townlet demo

test: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -m "not benchmark"

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/world_throughput.py
