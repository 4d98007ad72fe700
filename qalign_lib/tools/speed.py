"""Speed benchmark: the reference recipe against ours, in one run, on the same model and the same data.

Training -- stage-2 data (GSM8K train, Alpaca prompt) through the library's own path: training.tokenize ->
training.build_trainer, the trainer of every stage (TRL's SFTTrainer, its config, loss and callbacks), saving no
checkpoint.
  reference  right-padded random batches: padding_free, group_by_length and liger off, sdpa attention
  ours       padding-free batches, length-grouped sampling, Liger kernels and flash-attention-2 where installed (GPU)
  Each recipe trains a fresh copy of the model: `warmup_steps` optimizer steps (a train() call of their own), then a
  timed train() call over the SAME `train_steps` x `train_batch_size` examples for both recipes (one micro-batch
  per step). On GPU both recipes use fp32 master weights + bf16 autocast, as the paper's recipe does, so the ratio
  measures batching and kernels, not precision.
Generation -- the first `gen_per_lang` questions of every benchmark of `gen_benchmarks` (mGSM, mSVAMP) in every
language of `gen_langs`, greedy, `max_new_tokens` new tokens at most, the same prompts for every engine:
  reference  the reference's evaluation: one language at a time, prompts in dataset order, fixed batches of
             `gen_batch_size`, left padding, Transformers generate (every row computed until the batch's last stops)
  hf         ours (engine=hf): generation.generate over all prompts at once: sorted by length, at most `gen_batch_size`
             prompts and `token_budget` tokens a batch, generation.greedy (a row leaves the batch at its EOS)
  vllm       ours (engine=vllm, where vLLM is installed): engines.VLLM, every prompt in one chunk
  and, per engine, the share of prompts whose greedy output is identical to the reference's.
Fairness -- with `repeats` > 1 the recipes alternate (ref, ours, ours, ref, ...) and times are summed.

Metrics
  tokens/s  real (non-pad) training tokens / seconds of the timed train() call (on_train_begin to on_train_end)
  MFU       (6 N T + 12 n_layers d sum_i L_i^2) / seconds / peak FLOP/s.  N = weights used in matmuls (every
            parameter but the input embedding table; a tied output head counts once), T = real tokens, L_i = length
            of example i, d = hidden size. The second term is attention (scores and values, forward + backward, no
            causal halving; PaLM, appendix B). Padding is waste, never useful work. With LoRA the frozen weights
            get no weight gradients: 4 N T (forward 2, gradient of the activations 2) + 6 N_adapters T + attention;
            recomputation (gradient checkpointing) is not useful work either. Never above 1 (checked).
  peak      GPU: the bf16 dense datasheet peak of the device (PEAK_BF16), else a measured bf16 matmul; CPU: a measured
            fp32 matmul (2048^3, best of 10) on this machine, so CPU MFU is relative to what its BLAS reaches.
  memory    GPU: torch.cuda.max_memory_allocated during the timed part; CPU: the process's peak RSS (VmHWM of
            /proc/self/status, reset before the timed part; it includes the Python process's baseline).
  roofline  generation: the least time the workload can take on this device is the slower of compute and memory,
            limit = max(F / peak, B / bandwidth); `roofline_share` = limit / seconds, never above 1 (checked: a share
            above 1 means the model of the limit or a measured peak is wrong, and the run stops saying so).
            F = useful FLOPs = the least work: 2 N_body + 4 n_layers d k for every distinct prompt prefix (a trie
            node at depth k; a prefix several prompts share, the template's opening, once: vLLM caches prefixes),
            then per row 2 N_body + 4 n_layers d (context) for each generated token fed back (G - 1: the last is
            never fed) and 2 N_head per generated token; no padding, no finished rows. B = the bytes that must move:
            the weights (N x dtype bytes) once per forward pass of the shortest schedule, max_i G_i passes (every row
            in every pass: a row's next token needs its last), plus the KV cache, written once per distinct prefix
            and fed token and read once per decode step for the row's context (kv bytes a token = 2 n_layers
            kv_heads head_dim x dtype bytes). peak = a measured matmul (CPU; GPU: the datasheet's bf16 dense peak),
            bandwidth = a streaming read (torch.sum) of a buffer the size of the weights, best of 10, both measured
            in the same run (peak: the better of the run's start and right after the generation part). `compute_share` = F / peak / seconds and
            `memory_share` = B / bandwidth / seconds say which limit binds (`bound`); `roofline_tokens_per_s` =
            G / limit, the generated tokens/s the workload would reach at its limit.
"""
from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import os
import platform
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from qalign_lib.core import config, files, hardware, layout, log, versions
from qalign_lib.core.errors import ConfigError
from qalign_lib.core.files import atomic_write
from qalign_lib.data import corpora, prompts, training_data
from qalign_lib.models import generation, modeling
from qalign_lib.train import training

logger = log.get(__name__)

PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12)]  # dense, no sparsity
LLAMA2_7B = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008, vocab_size=32000)
RECIPES = ("reference", "ours")
TRAIN_METRICS = {"tokens_per_s": "train tokens/s", "mfu": "train MFU", "peak_mem_gib": "train peak memory (GiB)"}
GEN_METRICS = {"questions_per_s": "questions/s", "new_tokens_per_s": "generated tokens/s",
               "roofline_share": "generation share of roofline"}
TOLERANCE = 1e-9  # a share of its limit may exceed 1 by rounding only
ENGINES = ("hf", "vllm")  # generation: ours, each against the reference


def settings(device: str = "auto", **overrides) -> dict:
    """The device section (cpu or cuda) of params/bench.yaml with the recipes; None overrides are ignored."""
    raw = config.read_yaml(config.params_dir() / "bench.yaml")
    kind = ("cuda" if hardware.cuda() else "cpu") if device == "auto" else device
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not hardware.cuda()):
        raise ConfigError(f"device {device!r}: choose auto, cpu or cuda (cuda needs a visible GPU)")
    s = {**raw[kind], **{k: raw[k] for k in ("reference", "ours", "recipe")}, "device": kind}
    s.setdefault("train_sizes", [])
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        if key not in s:
            raise ConfigError(f"unknown benchmark parameter {key!r}; known: {', '.join(sorted(s))}")
        s[key] = [v.strip() for v in value.split(",")] if isinstance(value, str) and isinstance(s[key], list) else value
    s["given"] = sorted(given)
    return s


def for_model(s: dict, name: str) -> dict:
    """Settings for one model: the device's, then its per_model entry, then what the caller gave explicitly."""
    return {**s, **s["per_model"].get(name, {}), **{k: s[k] for k in s["given"]}}


# ----------------------------------------------------------------------------------------------------------------
# Data, models, measurements


def gen_prompts(langs, per_lang: int, benchmarks_=("mgsm",)) -> list[list[str]]:
    """Alpaca prompts of the first ``per_lang`` questions of each benchmark and language, in dataset order: one list
    per (benchmark, language), as the reference evaluates them one language at a time."""
    from qalign_lib.core import benchmarks as registry

    return [[prompts.alpaca(r["question"]) for r in corpora.read_rows(b, lang)[:per_lang]]
            for b in benchmarks_ for lang in langs if lang in registry.get(b).langs]


def corpus() -> list[str]:
    """Texts the random models' BPE tokenizers are trained on: GSM8K train and mGSM, so lengths are realistic."""
    texts = [e["prompt"] + e["completion"] for e in training_data.build("gsm8k", limit=2000)]
    return texts + [r["question"] for lang in corpora.DATASETS["mgsm"].langs for r in corpora.read_rows("mgsm", lang)]


def _random_llama(work: Path, name: str, vocab: int) -> Path:
    """A tiny random LLaMA with a BPE tokenizer of ``vocab`` entries trained on corpus(), built once per run."""
    path = work / name
    if not (path / "config.json").is_file():
        modeling.tiny_random_llama(path, corpus(), vocab_size=vocab, hidden=64, layers=2, heads=4)
    return path


def fit_layers(batch_tokens: int, h: int = 4096, inter: int = 11008, vocab: int = 32000, max_layers: int = 32) -> int:
    """Layers of the 7B-shaped model that fit in free GPU memory for training, estimated: 18 bytes a parameter
    (fp32 weights, gradients and two Adam moments, a bf16 autocast copy), activations of 34 h bytes a token and
    layer (Korthikanti et al. 2022, bf16, no recomputation, fused attention: no seq^2 term), logits of 6 x 4 bytes a
    token and vocabulary entry; 10% of free memory and 2 GiB kept back."""
    free, _ = torch.cuda.mem_get_info()
    per_layer = 18 * (4 * h * h + 3 * h * inter) + 34 * h * batch_tokens
    fixed = 18 * 2 * vocab * h + 24 * batch_tokens * vocab + 2 * 2**30
    return max(1, min(max_layers, int((0.9 * free - fixed) // per_layer)))


def load(name: str, s: dict, work: Path, dtype: str, attn: str = "sdpa"):
    """(model on the device, tokenizer with a pad token) for a benchmark model name or a model reference.
    llama2-7b-shape is randomly initialised with seed ``s["recipe"]["seed"]``; its tokenizer is a 32000-entry BPE
    trained on corpus() (LLaMA-2's own is not available offline)."""
    if name == "llama2-7b-shape":
        from transformers import AutoModelForCausalLM, LlamaConfig

        tok = modeling.load_tokenizer(str(_random_llama(work, "bpe-32000", 32000)))
        cfg = LlamaConfig(**LLAMA2_7B, num_hidden_layers=s["layers"], max_position_embeddings=4096, rms_norm_eps=1e-5,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        torch.manual_seed(s["recipe"]["seed"])
        with torch.device(hardware.device()):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=modeling.torch_dtype(dtype))
    else:
        ref = str(_random_llama(work, "tiny-random", 1000)) if name == "tiny-random" else name
        tok = modeling.load_tokenizer(ref)
        model = modeling.load_model(ref, dtype, for_training=True, attn_implementation=attn).to(hardware.device())
    modeling.ensure_pad_token(tok, model)
    return model, tok


def matmul_params(model) -> int:
    """Weights used in matmuls: every parameter but the input embedding table (a tied output head counts once)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return sum(p.numel() for p in model.parameters()) - (0 if tied else emb.numel())


def peak_flops(s: dict) -> tuple[float, str]:
    """The device's peak FLOP/s and where the number comes from."""
    if s.get("peak_flops"):
        return float(s["peak_flops"]), "given (peak_flops)"
    if hardware.cuda():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16:
            if key in name:
                return value, f"bf16 dense datasheet peak of the {key}"
    gpu = hardware.cuda()
    n, dtype = (8192, torch.bfloat16) if gpu else (2048, torch.float32)
    a, b = (torch.randn(n, n, dtype=dtype, device=hardware.device()) for _ in range(2))
    best = float("inf")
    for _ in range(4 if gpu else 11):  # the first is a warm-up; on a shared CPU the best of 10 comes nearer its peak
        _sync()
        t = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best, f"measured: {str(dtype).split('.')[-1]} matmul {n}x{n}x{n}, best of {3 if gpu else 10}"


def _sync():
    if hardware.cuda():
        torch.cuda.synchronize()


def memory_bandwidth(s: dict, nbytes: int, repeats: int = 10) -> tuple[float, str]:
    """The device's memory bandwidth (bytes/s) and where the number comes from: ``peak_bandwidth`` if given, else a
    streaming read of ``nbytes`` (the model's weights) -- torch.sum over a float32 buffer that size on the device,
    best of ``repeats`` after a warm-up (the sum's FLOPs, one per 4 bytes, are far below any matmul peak)."""
    if s.get("peak_bandwidth"):
        return float(s["peak_bandwidth"]), "given (peak_bandwidth)"
    n = max(1, nbytes // 4)
    buf = torch.ones(n, dtype=torch.float32, device=hardware.device())
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync()
        t = time.perf_counter()
        buf.sum()
        _sync()
        best = min(best, time.perf_counter() - t)
    del buf
    return 4 * n / best, f"measured: torch.sum over {4 * n / 2**20:,.0f} MiB (the weights' size), best of {repeats}"


def roofline(flops: float, nbytes: float, peak: float, bandwidth: float) -> dict:
    """The least time a workload of ``flops`` FLOPs that must move ``nbytes`` bytes can take: the slower of compute
    (flops / peak) and memory (nbytes / bandwidth), and which one binds."""
    compute, memory = flops / peak, nbytes / bandwidth
    return {"compute_s": compute, "memory_s": memory, "limit_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "memory"}


def share_of_limit(limit_s: float, seconds: float, what: str) -> float:
    """limit / seconds: the share of the roofline reached. A share above 1 is impossible; it means the limit is
    modelled wrong (work or bytes overcounted) or a peak was measured low (another job held the device), and stops
    the benchmark rather than report it."""
    share = limit_s / seconds
    if share > 1 + TOLERANCE:
        raise AssertionError(f"{what}: {100 * share:.1f}% of its roofline, above 100%: the useful work or the bytes "
                             "are overcounted, or the peak / bandwidth measured low (another job on the device); rerun "
                             "on a quiet machine, or give peak_flops / peak_bandwidth")
    return share


def _reset_peak():
    gc.collect()
    if hardware.cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back, so RSS is this recipe's
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_gib() -> float:
    if hardware.cuda():
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status")
    m = re.search(r"VmHWM:\s+(\d+) kB", status.read_text()) if status.exists() else None
    if m:
        return int(m.group(1)) / 2**20
    import resource  # not resettable: the peak of the whole process so far

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------------------------------------------
# One recipe


def train_once(name: str, recipe: str, s: dict, work: Path, examples: list[dict]) -> dict:
    """Warm up, then time one train() call of ``recipe`` on a fresh copy of the model, with the stages' trainer
    (training.build_trainer) on the benchmark's model and examples, saving no checkpoint."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            _sync()
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            _sync()
            self.seconds = time.perf_counter() - self.start

    rc = {**s["recipe"], **recipe_settings(s, recipe)}
    if rc["attn_implementation"] == "auto":
        flash = hardware.cuda() and importlib.util.find_spec("flash_attn")
        rc["attn_implementation"] = "flash_attention_2" if flash else "sdpa"
    model, tok = load(name, s, work, "float32", rc["attn_implementation"])  # fp32 master weights, as make_trainer
    bs = s["train_batch_size"]
    n_warm, n = s["warmup_steps"] * bs, (s["warmup_steps"] + s["train_steps"]) * bs
    rows = training.tokenize(examples, tok, s["max_length"])[0][:n]
    if len(rows) < n:
        raise corpora.DataError(f"benchmark: {len(rows)} training examples left after tokenization, {n} needed")
    cfg = config.build({**rc, "model": name, "dtype": s["dtype"], "batch_size": bs, "per_device_batch_size": bs,
                        "epochs": 1, "max_length": s["max_length"], "save_steps": 10**9, "report_to": ["none"]},
                       source="params/bench.yaml")
    clock = Clock()
    trainer = training.build_trainer(cfg, work / recipe.replace(" ", "-"), lambda: (tok, model, rows), [clock],
                                     checkpoints=False)  # the Trainer would save one at the end of each train() call
    args = trainer.args
    slots = []  # positions per batch (real + pad), counted as the collator builds it
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        slots.append(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    prepared = trainer.train_dataset
    if n_warm:
        trainer.train_dataset = prepared.select(range(n_warm))
        trainer.train()
    trainer.train_dataset, slots[:] = prepared.select(range(n_warm, n)), []
    _reset_peak()
    trainer.train()
    lengths = [len(r["input_ids"]) for r in rows[n_warm:]]
    c = model.config
    adapters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) if cfg.lora_r else 0
    per_token = 4 * matmul_params(model) + 6 * adapters if cfg.lora_r else 6 * matmul_params(model)  # LoRA: no weight grads
    flops = per_token * sum(lengths) + 12 * c.num_hidden_layers * c.hidden_size * sum(x * x for x in lengths)
    result = {"seconds": clock.seconds, "tokens": sum(lengths), "slots": sum(slots), "flops": flops,
              "peak_mem_gib": _peak_gib(),
              "recipe": {"padding_free": args.padding_free, "sampling": str(args.train_sampling_strategy),
                         "liger": args.use_liger_kernel, "bf16": args.bf16, "attn": rc["attn_implementation"],
                         "completion_only_logits": cfg.completion_only_logits, "lora_r": cfg.lora_r}}
    del trainer, model, prepared
    _reset_peak()
    return result


def generate_once(engine, groups: list[list[str]], recipe: str, s: dict, flops_of, bytes_of) -> tuple[dict, list]:
    """Time greedy generation of every prompt with ``recipe`` (reference, hf, vllm) on ``engine`` (an engines.HF
    for reference and hf); returns metrics and the (text, new tokens) outputs in prompt order."""
    flat = [p for g in groups for p in g]
    outputs = [None] * len(flat)
    _reset_peak()
    _sync()
    start = time.perf_counter()
    if recipe == "reference":  # one language at a time, dataset order, fixed batches
        offset = 0
        for group in groups:
            for batch in generation.generate(engine.model, engine.tokenizer, group, s["max_new_tokens"],
                                             s["gen_batch_size"], None, sort=False, desc=recipe, loop="transformers"):
                for i, text, n in batch:
                    outputs[offset + i] = (text, n)
            offset += len(group)
    else:
        for batch in engine.generate(flat, s["max_new_tokens"], s["gen_batch_size"], s["token_budget"], desc=recipe):
            for i, text, n in batch:
                outputs[i] = (text, n)
    _sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "questions": len(flat), "new_tokens": sum(n for _, n in outputs),
            "flops": flops_of([n for _, n in outputs]), "bytes": bytes_of([n for _, n in outputs]),
            "peak_mem_gib": _peak_gib()}, outputs


def prefix_nodes(prompt_ids: list[list[int]]) -> list[int]:
    """The positions (1-based depth) of the distinct prefixes of the prompts: a prefix several prompts share (the
    Alpaca template's opening) is one node, computed once by an engine that caches prefixes (vLLM), so the least
    work counts it once."""
    root: dict = {}
    depths = []
    for ids in prompt_ids:
        node = root
        for depth, t in enumerate(ids, 1):
            if t not in node:
                node[t] = {}
                depths.append(depth)
            node = node[t]
    return depths


def useful_flops(n_body: int, n_head: int, layers: int, hidden: int, prompt_ids: list[list[int]]):
    """Useful FLOPs of generating ``new[i]`` tokens after prompt i (see the module's docstring: roofline): every
    distinct prompt prefix once (a forward pass of the body and attention over its depth), then per row the g - 1
    generated tokens fed back (the last is never fed) with attention over their context, and the output head once per
    generated token."""
    per_ctx = 4 * layers * hidden
    nodes = prefix_nodes(prompt_ids)
    prefill = 2 * n_body * len(nodes) + per_ctx * sum(nodes)
    lengths = [len(ids) for ids in prompt_ids]

    def flops(new: list[int]) -> float:
        total = prefill
        for p, g in zip(lengths, new):
            fed = max(g - 1, 0)
            total += 2 * n_body * fed + per_ctx * (fed * p + fed * (fed + 1) / 2) + 2 * n_head * g
        return total

    return flops


def gen_flops(model, prompt_ids: list[list[int]]):
    """useful_flops for a Transformers model (N_head: the output head's weights; N_body: the other matmul weights)."""
    c, head = model.config, model.get_output_embeddings()
    n_head = head.weight.numel() if head is not None else 0
    return useful_flops(matmul_params(model) - n_head, n_head, c.num_hidden_layers, c.hidden_size, prompt_ids)


def kv_bytes_per_token(config, element_size: int) -> int:
    """Bytes of keys and values one token leaves in the cache: 2 x layers x kv_heads x head_dim x element size."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * element_size


def gen_bytes(weight_bytes: int, kv_per_token: int, prompt_ids: list[list[int]]):
    """Bytes that generating ``new[i]`` tokens after prompt i must move at least (see the module's docstring:
    roofline): the weights once per pass of the shortest schedule (max new passes, every row in every pass) and the
    KV cache: each distinct prompt prefix's written once (prefix_nodes), each generated token's but the last (never
    fed back) once, and the row's context read by every decode step (the step that produces token k >= 2 reads
    p + k - 2 cached tokens)."""
    written = len(prefix_nodes(prompt_ids))
    lengths = [len(ids) for ids in prompt_ids]

    def nbytes(new: list[int]) -> float:
        kv_tokens = float(written)
        for p, g in zip(lengths, new):
            fed = max(g - 1, 0)
            kv_tokens += fed + fed * p + fed * (fed - 1) / 2
        return weight_bytes * max(new, default=0) + kv_per_token * kv_tokens

    return nbytes


def rebase_peak(results: dict) -> dict:
    """One peak for the whole run: the best of its measurements (at the start, and after each model's generation
    part; on a shared device a measurement can only come out low), with training MFU rescaled to it and generation
    shares recomputed from their FLOPs and bytes. Returns ``results``, changed in place."""
    gens = [m["generate"] for m in results["models"].values() if "generate" in m]
    best = max([results["peak_flops"], *(g["peak_flops"] for g in gens)])
    if best <= results["peak_flops"] and all(g["peak_flops"] == best for g in gens):
        return results
    for m in results["models"].values():
        t = m.get("train", {})
        for x in [t.get("reference"), t.get("ours"), *t.get("extra", {}).values()]:
            if x and "mfu" in x:
                x["mfu"] = x["flops"] / x["seconds"] / best
        if "generate" in m:
            g = m["generate"]
            for x in [g["reference"], g["ours"], *g["engines"].values()]:
                limit = roofline(x["flops"], x["bytes"], best, g["bandwidth"])
                x.update(limit, roofline_share=limit["limit_s"] / x["seconds"], compute_share=limit["compute_s"] / x["seconds"],
                         memory_share=limit["memory_s"] / x["seconds"], roofline_tokens_per_s=x["new_tokens"] / limit["limit_s"])
            g["peak_flops"] = best
            g["ratio"] = {k: g["ours"][k] / g["reference"][k] for k in g["ratio"]}
            g["ratios"] = {e: {k: g["engines"][e][k] / g["reference"][k] for k in v} for e, v in g["ratios"].items()}
    results["peak_source"] += f"; the run's best measurement: {best / 1e9:.1f} GFLOP/s, used for every share"
    results["peak_flops"] = best
    return results


def check_limits(results: dict) -> None:
    """Every generation share of roofline and every training MFU of ``results`` at most 1 (share_of_limit);
    called after the results are written, so that the numbers of a failing run can be read."""
    for name, m in results["models"].items():
        t, g = m.get("train", {}), m.get("generate", {})
        for recipe, x in [*((r, t.get(r)) for r in RECIPES), *t.get("extra", {}).items()]:
            if x and "mfu" in x:
                share_of_limit(x["mfu"], 1.0, f"{name}: training MFU ({recipe})")
        for recipe, x in [("reference", g.get("reference")), *g.get("engines", {}).items()]:
            if x and "roofline_share" in x:
                share_of_limit(x["roofline_share"], 1.0, f"{name}: generation ({recipe}, {x['bound']}-bound)")


def alternate(fn, repeats: int, recipes=RECIPES) -> dict[str, list]:
    """fn(recipe) for every recipe ``repeats`` times, reversing the order every other round (ref, ours, ours, ref, ...)."""
    runs = {r: [] for r in recipes}
    for k in range(repeats):
        for recipe in recipes if k % 2 == 0 else recipes[::-1]:
            logger.info("  %s (round %d/%d)", recipe, k + 1, repeats)
            runs[recipe].append(fn(recipe))
    return runs


def summarize(runs: list[dict], peak: float, bandwidth: float | None = None) -> dict:
    """Sum the runs of one recipe (times and counts), keep the largest memory peak, and derive the rates: training
    MFU, or generation's share of its roofline (``bandwidth`` given); check_limits checks both."""
    total = {k: sum(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, (int, float)) and k != "peak_mem_gib"}
    out = {**total, "peak_mem_gib": max(r["peak_mem_gib"] for r in runs), "seconds_per_round": [r["seconds"] for r in runs]}
    for k in ("tokens", "questions", "new_tokens"):
        if k in total:
            out[f"{k}_per_s"] = total[k] / total["seconds"]
    if "flops" in total and "slots" in total:
        out["mfu"] = total["flops"] / total["seconds"] / peak
        out["pad_share"] = 1 - total["tokens"] / total["slots"]
    elif "flops" in total and bandwidth:
        limit = roofline(total["flops"], total["bytes"], peak, bandwidth)
        out.update(limit, roofline_share=limit["limit_s"] / total["seconds"],
                   compute_share=limit["compute_s"] / total["seconds"], memory_share=limit["memory_s"] / total["seconds"],
                   roofline_tokens_per_s=total["new_tokens"] / limit["limit_s"])
    if "recipe" in runs[0]:
        out["recipe"] = runs[0]["recipe"]
    return out


TRAIN_KEYS = ("padding_free", "group_by_length", "liger", "attn_implementation", "completion_only_logits", "lora_r",
              "lora_alpha")


def recipe_settings(s: dict, recipe: str) -> dict:
    """The training keys of a recipe: ``reference``/``ours`` from params/bench.yaml, ``size <name>`` as that size
    declares them (params/sizes/<name>.yaml over the defaults)."""
    if recipe.startswith("size "):
        cfg = config.resolve(recipe.split(" ", 1)[1])
        return {k: getattr(cfg, k) for k in TRAIN_KEYS}
    return s[recipe]


def compare(runs: dict[str, list], peak: float, metrics) -> dict:
    ref, ours = (summarize(runs[r], peak) for r in RECIPES)
    return {"reference": ref, "ours": ours, "ratio": {m: ours[m] / ref[m] for m in metrics if ref.get(m)}}


def bench_model(name: str, s: dict, work: Path, peak: float) -> dict:
    """Training and generation, reference against ours, for one model."""
    if name == "llama2-7b-shape" and s["layers"] in (None, "auto"):
        s = {**s, "layers": fit_layers(s["train_batch_size"] * s["max_length"]) if hardware.cuda() else 2}
    out = {}
    if "train" in s["parts"]:
        need = 2 * (s["warmup_steps"] + s["train_steps"]) * s["train_batch_size"]
        task = s.get("train_data") or "gsm8k"
        if task in training_data.STAGE1_TASKS:  # the tiny study's stage-1 examples: its languages, shuffled together
            langs = config.resolve("tiny").stage1_langs
            examples = training_data.build_mixture([task], langs, -(-need // len(langs)), s["recipe"]["seed"])
        else:
            examples = training_data.build(task, limit=need)
        extra = [f"size {x}" for x in s.get("train_sizes") or []]
        logger.info("%s: training on %s, %s timed steps of %s examples: reference, ours%s", name, task,
                    s["train_steps"], s["train_batch_size"], "".join(f", {x}" for x in extra))
        runs = alternate(lambda r: train_once(name, r, s, work, examples), s["repeats"], (*RECIPES, *extra))
        out["train"] = compare(runs, peak, TRAIN_METRICS)
        out["train"]["data"] = task
        out["train"]["extra"] = {x: summarize(runs[x], peak) for x in extra}
        out["train"]["ratios"] = {x: {m: out["train"]["extra"][x][m] / out["train"]["reference"][m] for m in TRAIN_METRICS
                                      if out["train"]["reference"].get(m)} for x in extra}
    model, tok = load(name, s, work, s["dtype"])
    model.eval()
    if "generate" in s["parts"]:
        out["generate"] = bench_generation(name, s, model, tok, peak, work)
    info = {"params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul_params(model),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size, "vocab": len(tok),
            "settings": {k: s[k] for k in ("parts", "train_steps", "warmup_steps", "train_batch_size", "max_length",
                                           "repeats", "gen_benchmarks", "gen_langs", "gen_per_lang", "max_new_tokens",
                                           "gen_batch_size", "token_budget", "gen_engines")}}
    del model
    _reset_peak()
    return {**info, **out}


def bench_generation(name: str, s: dict, model, tok, peak: float, work: Path) -> dict:
    """The reference recipe against every engine of ``gen_engines`` on the same prompts (one model object for
    reference and hf; vLLM loads the same weights)."""
    from qalign_lib.models import engines

    groups = gen_prompts(s["gen_langs"], s["gen_per_lang"], s["gen_benchmarks"])
    flat = [p for g in groups for p in g]
    wanted = [e for e in s["gen_engines"] if e in ENGINES]
    if "vllm" in wanted and (not engines.vllm_installed() or name == "llama2-7b-shape"):
        logger.warning("vLLM is not installed here or %s has no files: the benchmark runs without it (`make "
                       "venv` installs vLLM's CPU build)", name)
        wanted.remove("vllm")
    logger.info("%s: generating for %d questions (%s; %s), %s new tokens: reference, %s", name, len(flat),
                ",".join(s["gen_benchmarks"]), ",".join(s["gen_langs"]), s["max_new_tokens"], ", ".join(wanted))
    hf = engines.HF(model, tok)
    runners = {"reference": hf, "hf": hf}
    if "vllm" in wanted:
        if s.get("threads") and not hardware.cuda():  # the same cores as the others: vLLM binds its threads itself
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if s["threads"] == 1 else f"0-{s['threads'] - 1}")
        ref = str(_random_llama(work, "tiny-random", 1000)) if name == "tiny-random" else name
        runners["vllm"] = engines.VLLM(ref, s["dtype"], 1, chunk=len(flat), eager=s.get("vllm_eager"))
    ids = [tok(p, add_special_tokens=True)["input_ids"] for p in flat]
    lengths = [len(x) for x in ids]
    flops_of = gen_flops(model, ids)
    element = next(model.parameters()).element_size()
    weight_bytes, kv_token = matmul_params(model) * element, kv_bytes_per_token(model.config, element)
    bytes_of = gen_bytes(weight_bytes, kv_token, ids)
    for recipe in runners:  # warm-up: first calls allocate and pick kernels
        list(runners[recipe].generate(flat[:2], 4, 2, desc="warm-up"))
    outputs = {r: [] for r in runners}

    def gen(recipe):
        metrics, result = generate_once(runners[recipe], groups, recipe, s, flops_of, bytes_of)
        outputs[recipe].append(result)
        return metrics

    recipes = ("reference", *wanted)
    runs = alternate(gen, s["repeats"], recipes)
    # the limits, measured in this run right after the part they bound; on a shared device the best of the run's
    # measurements (at its start and here) comes nearest the real peak
    peak = max(peak, peak_flops(s)[0])
    bandwidth, bw_source = memory_bandwidth(s, weight_bytes)
    logger.info("%s: roofline of generation: peak %.3g FLOP/s, bandwidth %.3g GB/s (%s)", name, peak, bandwidth / 1e9,
                bw_source)
    summary = {r: summarize(runs[r], peak, bandwidth) for r in recipes}
    first = outputs["reference"][0]
    result = {"reference": summary["reference"], "ours": summary["hf"], "engines": {e: summary[e] for e in wanted},
              "ratio": {m: summary["hf"][m] / summary["reference"][m] for m in GEN_METRICS},
              "ratios": {e: {m: summary[e][m] / summary["reference"][m] for m in GEN_METRICS} for e in wanted},
              "peak_flops": peak, "bandwidth": bandwidth, "bandwidth_source": bw_source, "weight_bytes": weight_bytes,
              "kv_bytes_per_token": kv_token, "n": len(flat), "prompt_tokens": sum(lengths)}
    result["identical"], result["mismatch_ids"] = {}, {}
    for e in ("reference", *wanted):
        differ = [i for i in range(len(flat)) if any(run[i] != first[i] for run in outputs[e])]
        result["identical"][e] = 1 - len(differ) / len(flat)
        result["mismatch_ids"][e] = differ[:10]
    hf_differ = [i for i in range(len(flat)) if any(run[i] != first[i] for r in ("reference", "hf") for run in outputs[r])]
    result.update(mismatches=len(hf_differ))
    return result


# ----------------------------------------------------------------------------------------------------------------
# The whole benchmark and its outputs


def device_name() -> str:
    if hardware.cuda():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    m = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else None
    n = torch.get_num_threads()
    return f"{m.group(1).strip() if m else platform.processor() or 'CPU'} ({n} thread{'s' * (n > 1)})"


def run(s: dict, out_dir: str | Path | None = None) -> dict:
    """Benchmark every model of ``s["models"]``; writes results.json, results.md and ratios.png to ``out_dir``
    (default: <figures>/bench) and returns the results."""
    out = Path(out_dir) if out_dir else layout.figures_dir() / "bench"
    start, threads = time.perf_counter(), torch.get_num_threads()
    if s.get("threads"):
        torch.set_num_threads(s["threads"])
    try:
        peak, source = peak_flops(s)
        results = {"device": device_name(), "device_type": s["device"],
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions.stack(),
                   "peak_flops": peak, "peak_source": source, "settings": s, "models": {}}
        with tempfile.TemporaryDirectory(prefix="qalign-bench-") as work:
            for name in s["models"]:
                results["models"][name] = bench_model(name, for_model(s, name), Path(work), peak)
    finally:
        torch.set_num_threads(threads)
    results["seconds"] = time.perf_counter() - start
    rebase_peak(results)
    write(results, out)
    check_limits(results)
    return results


def rows(results: dict) -> list[tuple]:
    """(model, metric label, reference, ours, ratio) for every metric with a ratio."""
    out = []
    for name, m in results["models"].items():
        if "train" in m:
            r = m["train"]
            out += [(name, label, r["reference"][key], r["ours"][key], r["ratio"].get(key))
                    for key, label in TRAIN_METRICS.items()]
            out += [(name, f"{label} ({x})", r["reference"][key], r["extra"][x][key], r["ratios"][x].get(key))
                    for x in r.get("extra", {}) for key, label in TRAIN_METRICS.items()]
        if "generate" in m:
            r = m["generate"]
            out += [(name, f"{label} ({e})", r["reference"][key], r["engines"][e][key], r["ratios"][e].get(key))
                    for e in r["engines"] for key, label in GEN_METRICS.items()]
    return out


def _fmt(key_label: str, x) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if "MFU" in key_label or "roofline" in key_label else f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def table(results: dict) -> str:
    """The Markdown report: the table of metrics and ratios, then how they were measured."""
    lines = ["# Speed benchmark: ours / reference\n",
             f"{results['device']}, {results['date']}; "
             + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v is not None),
             f"\nPeak {results['peak_flops'] / 1e12:.3g} TFLOP/s ({results['peak_source']}). "
             f"Total {results['seconds']:.0f} s.\n",
             "| model | metric | reference | ours | ours / reference |", "|---|---|---:|---:|---:|"]
    for name, label, ref, ours, ratio in rows(results):
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"| {name} | {label} | {_fmt(label, ref)} | {_fmt(label, ours)} | {shown} |")
    lines.append("")
    mem = "torch.cuda.max_memory_allocated" if results["device_type"] == "cuda" else "peak RSS of the process (VmHWM)"
    for name, m in results["models"].items():
        parts = []
        if "train" in m:
            t = m["train"]
            parts.append(f"training on {t.get('data', 'gsm8k')}: pad share {100 * t['reference']['pad_share']:.0f}% "
                         f"(reference) vs {100 * t['ours']['pad_share']:.0f}% (ours)"
                         + "".join(f", {100 * v['pad_share']:.0f}% ({x})" for x, v in t.get("extra", {}).items())
                         + f"; recipes {t['reference']['recipe']} vs {t['ours']['recipe']}"
                         + "".join(f" and {v['recipe']} ({x})" for x, v in t.get("extra", {}).items()))
        if "generate" in m:
            g = m["generate"]
            parts.append(f"generation of {g['n']} prompts ({g['prompt_tokens']} prompt tokens): greedy outputs "
                         "identical to the reference's " + ", ".join(f"{e} {100 * g['identical'][e]:.0f}%" for e in g["engines"])
                         + f" (the reference against its own repeats: {100 * g['identical']['reference']:.0f}%); "
                         f"roofline: peak {g['peak_flops'] / 1e9:,.1f} GFLOP/s, bandwidth {g['bandwidth'] / 1e9:,.1f} "
                         f"GB/s ({g['bandwidth_source']}); share of the limit (compute share, memory share, bound, "
                         "limit in generated tokens/s): "
                         + ", ".join(f"{r} {100 * x['roofline_share']:.1f}% ({100 * x['compute_share']:.1f}%, "
                                     f"{100 * x['memory_share']:.1f}%, {x['bound']}, {x['roofline_tokens_per_s']:,.0f})"
                                     for r, x in [("reference", g["reference"]), *g["engines"].items()]))
        lines.append(f"- **{name}** ({m['params'] / 1e6:.1f}M parameters, {m['layers']} layers, hidden {m['hidden']}): "
                     + "; ".join(parts) + f"; settings {m['settings']}.")
    lines.append(f"\nMemory: {mem}. Times of each round are in results.json (seconds_per_round); on a shared CPU a single "
                 "round can be off by tens of percent. MFU = (6 N T + 12 layers hidden sum L_i^2) / seconds / peak, "
                 "real tokens only (LoRA: 4 N T + 6 N_adapters T + attention; no weight gradients of frozen weights). "
                 "Generation share of roofline = limit / seconds, limit = max(useful FLOPs / peak, bytes / bandwidth): "
                 "useful FLOPs = the body over every distinct prompt prefix (shared prefixes once) and every "
                 "generated token fed back, attention over each one's context, the head over generated tokens "
                 "(padding excluded); bytes = the weights once per pass of the shortest schedule (max G passes) + the "
                 "KV cache written once and read by every decode step (qalign_lib/tools/speed.py). "
                 "Higher is better for every metric except memory.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    data_ = [(f"{name.split(':')[-1]}: {label}", ratio) for name, label, _, _, ratio in rows(results) if ratio is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(data_) + 1.2))
    y = range(len(data_))
    better = [(r <= 1) if "memory" in label else (r >= 1) for label, r in data_]
    ax.barh(list(y), [r for _, r in data_], color=["tab:green" if b else "tab:red" for b in better])
    ax.axvline(1, color="k", lw=0.8)
    ax.set_yticks(list(y), [label for label, _ in data_], fontsize=8)
    ax.invert_yaxis()
    for k, (_, r) in enumerate(data_):
        ax.text(r, k, f" {r:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("ours / reference (memory: lower is better)")
    ax.set_title(f"Speed benchmark on {results['device']}", fontsize=9)
    fig.tight_layout()
    return files.save_figure(fig, Path(path), dpi=120)


def write(results: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "md": out / "results.md", "png": out / "ratios.png"}
    with atomic_write(files["json"]) as f:
        f.write(json.dumps(results, indent=2, default=str) + "\n")
    with atomic_write(files["md"]) as f:
        f.write(table(results))
    plot(results, files["png"])
    results["files"] = {k: str(v) for k, v in files.items()}
    return files
