# Everything runs inside .venv so a fresh machine with only Python 3.11+ works.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint unit demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check modelsync tests benchmarks manifests
	$(BIN)/ruff format --check modelsync tests benchmarks manifests
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest

test: lint unit

demo: install
	$(BIN)/python manifests/demo.py

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info demo-models
