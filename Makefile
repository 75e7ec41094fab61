SHELL := /bin/bash
# Everything runs inside project-local virtualenvs that make builds from scratch.
#   .venv         `make venv`: the exact versions of requirements-cpu.txt (what `make test`, `make demo` and CI use)
#   .venv-latest  `make test-latest`: the newest versions pyproject.toml allows (drift check, not part of CI)
#   .venv-lock    `make lock`: pip-tools, to regenerate requirements-cpu.txt
#   .venv-peers   `make bench-peers`: llama-cpp-python built from its pinned sdist, for benchmarks/peers_cpu.py only
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
LOCK_VENV ?= .venv-lock
LOCK := requirements-cpu.txt
LOCK_INPUT := requirements-cpu.in
PIP_TOOLS_VERSION ?= 7.6.2
# The extras every locked environment carries.
EXTRAS := test,demo,bench
PYTEST_ARGS ?=
DEMO_ARGS ?=

PEERS_VENV ?= .venv-peers
PEERS_REQUIREMENTS := benchmarks/requirements-peers.txt
# llama.cpp build options: the x86-64 instruction sets up to AVX-512 (VNNI, BF16) named one by one, AMX off. On a
# Xeon with AMX, -DGGML_NATIVE=ON builds the AMX matmul, which crashed every multi-token batch (prefill) with a
# segfault in ggml_backend_amx_mul_mat, with or without llamafile and weight repacking; one-token decode worked.
# On a CPU without AVX-512 set PEERS_CMAKE_ARGS=-DGGML_NATIVE=ON.
PEERS_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
PEERS_ARGS ?= --output benchmarks/results/peers_cpu-cpu.md --plot docs/peers_cpu.png

.PHONY: venv test demo lint lock test-latest bench-peers clean distclean

venv: $(VENV_STAMP)

# On a machine without a GPU the whole lock installs, hash-checked, the CPU build of torch included. With a
# working GPU every locked package but torch installs, then pip takes the CUDA build of the locked torch
# version from the package index (its CUDA libraries are not in the lock).
$(VENV_STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the lock without torch's CPU build, then torch's CUDA build"; \
		awk '/^[^ #]/ { skip = ($$0 ~ /^torch==/) } !skip' $(LOCK) > $(VENV)/lock-without-torch.txt; \
		$(VENV_PY) -m pip install --require-hashes --no-deps -r $(VENV)/lock-without-torch.txt && \
		$(VENV_PY) -m pip install "torch==$$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' $(LOCK))"; \
	else \
		echo "no GPU: installing $(LOCK), torch's CPU build included"; \
		$(VENV_PY) -m pip install --require-hashes --no-deps -r $(LOCK); \
	fi
	$(VENV_PY) -m pip install --no-deps --no-build-isolation -e .
	$(VENV_PY) -m pip check
	touch $@

test: venv
	$(VENV_PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV_PY) examples/demo.py $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The CPU peer benchmark: packed models against llama.cpp on the demo's GGUF (about 4 minutes to build the peer
# on 2 cores, the first time and whenever PEERS_CMAKE_ARGS change; the benchmark itself about 5 minutes).
bench-peers: venv $(PEERS_VENV)/.installed
	$(VENV_PY) benchmarks/peers_cpu.py --peer-python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

# Rebuilt when the requirements change or the recorded build flags differ from PEERS_CMAKE_ARGS.
ifneq ($(shell cat $(PEERS_VENV)/build-flags.txt 2>/dev/null),CMAKE_ARGS=$(PEERS_CMAKE_ARGS))
.PHONY: $(PEERS_VENV)/.installed
endif
$(PEERS_VENV)/.installed: $(PEERS_REQUIREMENTS)
	$(PYTHON) -m venv --clear $(PEERS_VENV)
	grep -v '^llama-cpp-python' $(PEERS_REQUIREMENTS) > $(PEERS_VENV)/dependencies.txt
	$(PEERS_VENV)/bin/python -m pip install -r $(PEERS_VENV)/dependencies.txt
	CMAKE_ARGS="$(PEERS_CMAKE_ARGS)" $(PEERS_VENV)/bin/python -m pip install --no-cache-dir --no-build-isolation \
		--no-deps $$(grep '^llama-cpp-python==' $(PEERS_REQUIREMENTS))
	echo "CMAKE_ARGS=$(PEERS_CMAKE_ARGS)" > $(PEERS_VENV)/build-flags.txt
	touch $@

# Regenerate the lock after changing dependencies in pyproject.toml or requirements-cpu.in (and now and then
# to take upstream fixes): resolves the newest versions the metadata allows, with every file's hash.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install "pip-tools==$(PIP_TOOLS_VERSION)"
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --upgrade --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links $(addprefix --extra=,$(subst $(comma), ,$(EXTRAS))) \
		--output-file=$(LOCK) pyproject.toml $(LOCK_INPUT)

# Drift check: a fresh venv with the newest versions pyproject.toml allows (torch held at the lock's CPU build
# on machines without a GPU, so no multi-GB CUDA build is pulled), then the whole suite.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(LATEST_VENV)/bin/python -m pip install --upgrade pip && \
		$(LATEST_VENV)/bin/python -m pip install --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"; \
	else \
		grep '^torch==' $(LOCK_INPUT) > $(LATEST_VENV)/torch-cpu.txt; \
		$(LATEST_VENV)/bin/python -m pip install --upgrade pip && \
		$(LATEST_VENV)/bin/python -m pip install --upgrade --upgrade-strategy eager \
			-c $(LATEST_VENV)/torch-cpu.txt -e ".[$(EXTRAS)]"; \
	fi
	$(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable > $(LATEST_VENV)/versions.txt
	@echo "versions under test: $(LATEST_VENV)/versions.txt (differences from the lock below)"
	@diff <(sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' $(LOCK) | tr 'A-Z_' 'a-z-' | sort) \
		<(tr 'A-Z_' 'a-z-' < $(LATEST_VENV)/versions.txt | sort) | grep '^[<>]' || echo "  (none)"
	$(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

comma := ,

clean:
	rm -rf build dist demo_out .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) $(PEERS_VENV)
