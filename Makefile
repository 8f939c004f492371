# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SDLAB := $(VENV)/bin/sdlab
STAMP := $(VENV)/.installed
# torch: where a local CPU wheel of this version is on pip's find-links (workshop and CI machines), take it:
# fast and offline. Elsewhere this step is skipped and pyproject's range picks the build (CUDA where present).
TORCH_LOCAL ?= 2.13.0
PYTEST_ARGS ?=
# two pytest workers (pytest-xdist): many tests wait on queues and timeouts, so two share the cores well. Each test
# file runs whole on one worker (--dist loadfile), so the notebook course runs in order on its one stack.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2

.PHONY: env demo test test-fast lint up down clean lab notebooks-clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	-$(PY) -m pip install -q --no-index --no-deps "torch==$(TORCH_LOCAL)" 2>/dev/null || echo "no local torch $(TORCH_LOCAL) wheel; pip resolves torch from the index"
	$(PY) -m pip install -q -e ".[all]"
	touch $@

demo: env
	$(SDLAB) up
	$(SDLAB) demo --out outputs/demo; rc=$$?; $(SDLAB) down; exit $$rc

# The checks run beside the suite (mypy on one core while the tests mostly wait on processes); any failure fails `make test`.
test: env
	$(VENV)/bin/ruff check sdlab agent tests
	$(VENV)/bin/mypy > .mypy.log 2>&1 & mypy=$$!; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	wait $$mypy; mrc=$$?; cat .mypy.log; \
	[ $$rc -eq 0 ] && [ $$mrc -eq 0 ]

test-fast: env
	$(PY) -m pytest -m "not integration and not faults and not notebooks" $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check sdlab agent tests
	$(VENV)/bin/mypy

up: env
	$(SDLAB) up

# The workshop: the stack up (or the one already running), JupyterLab on notebooks/ at 127.0.0.1; the stack stops
# when JupyterLab does (Ctrl-C). Kernels find the stack through SDLAB_HOME.
LAB_PORT ?= 8888
lab: env
	@export SDLAB_HOME="$(CURDIR)/.sdlab"; \
	$(PY) -c "import sys; from sdlab.workshop.session import running; sys.exit(0 if running() else 1)" \
	  && echo "using the stack already running from $$SDLAB_HOME" || $(SDLAB) up || exit 1; \
	trap '$(SDLAB) down' EXIT; \
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

down: env
	$(SDLAB) down

# notebooks are committed without outputs (tests/notebooks checks it): strip them before a commit
notebooks-clean: env
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace --ClearMetadataPreprocessor.enabled=True \
	  --ClearMetadataPreprocessor.preserve_cell_metadata_mask=tags \
	  --ClearMetadataPreprocessor.preserve_nb_metadata_mask=kernelspec \
	  --ClearMetadataPreprocessor.preserve_nb_metadata_mask=language_info notebooks/[0-9][0-9]_*.ipynb

clean:
	-$(SDLAB) down 2>/dev/null
	rm -rf .sdlab outputs
