# The front door: `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := $(VENV)/bin/fashion
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
SHARED_ZIP ?= ../shared/data/fashion-product-images-small.zip
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing pinned dependencies into $(VENV) (first time: a few minutes)..."
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) ## Create/refresh the virtual environment (idempotent)

run: setup ## Run the main job end to end on the bundled demo data
	$(FASHION) ingest --preset demo --out $(WORKDIR)/ingest

test: setup ## Install and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## Ruff lint (docstrings included)
	$(VENV)/bin/ruff check .

bench-ingest: setup ## Benchmark ingestion on the full shared zip
	$(PY) bench/ingest.py --source $(SHARED_ZIP)

clean: ## Remove run outputs (keeps the virtual environment)
	rm -rf runs .pytest_cache

.PHONY: help setup run test lint bench-ingest clean
