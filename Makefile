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
	$(BIN)/ruff check batchroute tests bench data
	$(BIN)/ruff format --check batchroute tests bench data
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

# Every benchmark of bench/RESULTS.md, each writing its own section there (about 13 minutes).
bench: install $(VENV)/.bench-installed
	$(BIN)/python bench/sim_throughput.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/rate_limits.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/cascade.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/store_cost.py
	$(BIN)/python bench/profile.py
	$(BIN)/python bench/before_after.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
