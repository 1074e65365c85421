# `make demo` and `make test` set everything up on a fresh machine: a .venv with the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/batchroute run jobs/demo.toml --force

lint: install
	$(BIN)/ruff check batchroute tests bench data jobs
	$(BIN)/ruff format --check batchroute tests bench data jobs
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/sim_throughput.py
	$(BIN)/python bench/headroom.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
