# Everything runs inside a project-local virtualenv that `make venv` builds from scratch.
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
# The CPU wheel of this release lies on the build machines' disk; asking for it by version keeps pip
# from resolving `torch>=2.4` to a CUDA build of several GB on machines without a GPU.
CPU_TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: venv test demo lint clean distclean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --upgrade pip
	@if $(VENV_PY) -c "import torch" >/dev/null 2>&1; then \
		echo "keeping torch $$($(VENV_PY) -c 'import torch; print(torch.__version__)') already in $(VENV)"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes from the package's own requirement"; \
	else \
		echo "no GPU: installing the CPU build torch==$(CPU_TORCH_VERSION)"; \
		$(VENV_PY) -m pip install "torch==$(CPU_TORCH_VERSION)"; \
	fi
	$(VENV_PY) -m pip install -e ".[test,demo]"
	touch $@

test: venv
	$(VENV_PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV_PY) examples/demo.py $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf build dist demo_out .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
