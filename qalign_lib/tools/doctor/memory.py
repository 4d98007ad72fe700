"""The doctor's memory and disk model: bytes per process, per node and per checkpoint of training a model's shape
with a launch config (:func:`footprint`), the parameters counted on a meta-device model (:func:`model_shape`), and
the disk a study's unfinished runs need (:func:`disk_need`)."""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from qalign_lib.core import config, log
from qalign_lib.tools.doctor.machine import GB, GiB
from qalign_lib.train import training

logger = log.get(__name__)


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


def terms_text(fp: Footprint) -> str:
    """The footprint's device terms that show at one decimal (GiB)."""
    return ", ".join(f"{k} {v:.1f}" for k, v in fp.terms.items() if v >= 0.05)


def describe(fp: Footprint, gpu: bool) -> str:
    terms = terms_text(fp)
    where = "GPU" if gpu else "memory"
    return (f"{where} ~{fp.device_gib:.1f} GiB/process ({terms}), host ~{fp.host_gib:.0f} GiB/node, checkpoint "
            f"~{fp.checkpoint_bytes / GB:.1f} GB ({fp.writers}), model {fp.model_bytes / GB:.1f} GB")


def disk_need(fp: Footprint | None, runs_todo: int) -> float | None:
    """Bytes a study's unfinished runs write: each run's final model, and while one trains up to three checkpoints
    (save_total_limit 2, plus the one being written)."""
    if fp is None:
        return None
    if runs_todo == 0:
        return 0.0
    return runs_todo * fp.model_bytes + 3 * fp.checkpoint_bytes + 2 * GB  # + evaluations, logs, notebooks
