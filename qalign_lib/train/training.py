"""Supervised fine-tuning of one run: TRL's SFTTrainer on prompt-completion examples, loss on the completion only.

:func:`prepare` writes a run's inputs (``run.json``, ``train.jsonl``; where: :mod:`qalign_lib.core.layout`) and decides
whether it must train: a finished run with the same fingerprint is skipped, a finished or started run whose inputs
changed is moved aside. :func:`fit` trains a prepared run in this process, resuming from its last complete
checkpoint. ``python -m qalign_lib.train.training RUN_DIR`` is the worker entry point of ``accelerate launch``
(:mod:`qalign_lib.train.launch`); the stages themselves are in :mod:`qalign_lib.train.stages`. :func:`build_trainer` builds the
one trainer that every training path trains with: the stages' runs, the speed benchmark, the doctor's smoke.

The fingerprint is derived from the declaration in :mod:`qalign_lib.core.config`: every parameter declared as
``learned``, the tasks and languages, the examples themselves, and the fingerprint of the model the run starts from.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from qalign_lib.core import config, files, hardware, layout, log, versions
from qalign_lib.core.errors import ConfigError, DataError, RunError
from qalign_lib.core.files import read_jsonl, write_json, write_jsonl
from qalign_lib.data import training_data
from qalign_lib.models import modeling

logger = log.get(__name__)


def init_ref(cfg: config.Config, init: str) -> str:
    """The model a run starts from: ``base`` (the size's model) or a finished run of the same size."""
    if init == "base":
        return cfg.model
    return str(layout.run(cfg.size, init).require_done().path)


def fingerprint(cfg: config.Config, tasks, langs, init: str, examples: list[dict]) -> str:
    """Identity of what a run learns (see the module docstring)."""
    h = hashlib.sha256()
    h.update(config.fingerprint(cfg, "learned").encode())
    h.update(json.dumps([list(tasks), list(langs)]).encode())
    start = modeling.fingerprint(cfg.model) if init == "base" else (layout.run(cfg.size, init).fingerprint() or "")
    h.update(start.encode())
    for row in examples:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def data_langs(tasks, langs) -> list[str]:
    return sorted({lang for t in tasks for lang in training_data.task_langs(t, langs)})


def plan(cfg: config.Config, name: str, tasks: list[str], langs, init: str = "base", stage: int = 1) -> dict:
    """What a run would train on and its fingerprint, without writing anything."""
    layout.check_name(name)
    start = init_ref(cfg, init)
    limit = cfg.stage1_limit if stage == 1 else cfg.stage2_limit
    select = {}
    if stage == 1:  # which stage-1 examples (stage1_seed) and how many tokens (stage1_match_tokens)
        select = {"subset_seed": cfg.stage1_seed, "match": cfg.stage1_match_tokens}
        if cfg.stage1_match_tokens is not None:
            select["count_tokens"] = token_counter(cfg.model)
    examples = training_data.build_mixture(tasks, langs, limit, cfg.seed, **select)
    if not examples:
        raise DataError(f"run {name}: no training examples for {tasks} {langs}")
    return {"name": name, "stage": stage, "tasks": list(tasks), "langs": data_langs(tasks, langs), "init": init,
            "init_model": start, "fingerprint": fingerprint(cfg, tasks, data_langs(tasks, langs), init, examples),
            "n_examples": len(examples), "examples": examples}


@functools.lru_cache(maxsize=4)
def token_counter(model: str):
    """Tokens of a text with ``model``'s tokenizer, no special tokens (what stage1_match_tokens counts)."""
    tokenizer = modeling.load_tokenizer(model)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def status(cfg: config.Config, name: str, tasks: list[str], langs, init: str = "base", stage: int = 1) -> str:
    """``done`` (finished with the same inputs), ``changed`` (finished or started with other inputs) or ``todo``."""
    run = layout.run(cfg.size, name)
    fp = plan(cfg, name, tasks, langs, init, stage)["fingerprint"]
    old = run.fingerprint()
    if run.is_done():
        return "done" if old == fp else "changed"
    return "changed" if old is not None and old != fp and run.checkpoints.exists() else "todo"


def prepare(cfg: config.Config, name: str, tasks: list[str], langs, init: str = "base", stage: int = 1) -> Path | None:
    """Build the examples and write run.json + train.jsonl. Returns None when the run is already finished with the
    same inputs. A finished (or started) run whose inputs changed is moved aside, never overwritten."""
    batch = batch_plan(cfg, cfg.num_processes)
    p = plan(cfg, name, tasks, langs, init, stage)
    run = layout.run(cfg.size, name)
    if run.path.exists():
        old = run.fingerprint()
        if old == p["fingerprint"] and run.is_done():
            logger.info("run %s: finished with the same inputs (fingerprint %s); skipping", name, old)
            return None
        if old != p["fingerprint"] and (run.is_done() or run.checkpoints.exists()):
            files.move_aside(run.path, f"inputs changed ({old} -> {p['fingerprint']})")
    if last_checkpoint(run.path) and run.run_json.is_file():
        check_resume_batch(run.meta().get("batch"), batch, f"run {name}'s checkpoints ({run.checkpoints}) were trained")
    check_lora(cfg)
    return write_inputs(run.path, cfg, p, batch)


def write_inputs(out: Path, cfg: config.Config, p: dict, batch: dict | None = None) -> Path:
    """Write a run's inputs, as :func:`make_trainer` reads them: train.jsonl (``p``'s examples) and run.json (the rest
    of ``p``, the plan of :func:`plan`, with the split of the batch, the config and the software stack it trains
    with). ``batch``: :func:`batch_plan` over the config's processes, where the caller has it."""
    run = layout.RunDir(Path(out))
    run.path.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in p.items() if k != "examples"}
    write_jsonl(run.train_jsonl, p["examples"])
    write_json(run.run_json, {**meta, "batch": batch_plan(cfg, cfg.num_processes) if batch is None else batch,
                              "config": cfg.to_dict(), "versions": versions.stack()})
    return run.path


def batch_split(cfg: config.Config, processes: int) -> dict:
    """How ``processes`` split the effective batch: per-device batch x accumulation steps x processes, and whether
    that makes ``batch_size`` exactly (``exact``); when not, the split below it (at least one step), which training
    refuses (:func:`batch_plan`) but a prediction may still describe."""
    b, n = cfg.batch_size, processes
    p = min(cfg.per_device_batch_size, b)
    accumulation, rest = divmod(b, p * n)
    steps = max(1, accumulation)
    return {"per_device_batch_size": p, "gradient_accumulation_steps": steps, "num_processes": n,
            "effective_batch_size": p * steps * n, "exact": rest == 0 and accumulation >= 1}


def batch_plan(cfg: config.Config, processes: int) -> dict:
    """per-device batch x accumulation x processes (:func:`batch_split`), which must make ``batch_size`` exactly (a
    ConfigError naming the values that would, else): the effective batch is a learned parameter, in the fingerprint
    and run.json."""
    split = batch_split(cfg, processes)
    if split.pop("exact"):
        return split
    b, n, p = cfg.batch_size, processes, split["per_device_batch_size"]
    ways = []
    if b % p == 0:
        ways.append(f"-p num_processes one of {_divisors(b // p)}")
    if b % n == 0:
        ways.append(f"-p per_device_batch_size one of {_divisors(b // n)} with num_processes {n}")
    below = b // (p * n) * p * n
    ways.append(f"-p batch_size a multiple of {p * n} (per_device_batch_size x num_processes), e.g. "
                f"{' or '.join(str(v) for v in (below, below + p * n) if v)}")
    raise ConfigError(f"batch_size {b} is not per_device_batch_size {p} x num_processes {n} x a whole number of "
                      f"accumulation steps (it would train with {split['effective_batch_size']}): use "
                      f"{'; or '.join(ways)}")


def _divisors(m: int) -> str:
    return ", ".join(str(k) for k in range(1, m + 1) if m % k == 0)


def check_resume_batch(trained: dict | None, now: dict, what: str) -> None:
    """A resume must keep the checkpoint's split of the batch (processes, per-device batch, accumulation): another
    split changes the steps per epoch and which examples share an update mid-run."""
    if trained is None or trained == now:  # None: a run prepared before the split was recorded
        return

    def split(b: dict) -> str:
        return ", ".join(f"{k} {b.get(k)}" for k in ("num_processes", "per_device_batch_size", "gradient_accumulation_steps"))

    raise ConfigError(f"{what} with {split(trained)}; this launch has {split(now)}: set -p num_processes "
                      f"{trained.get('num_processes')} -p per_device_batch_size {trained.get('per_device_batch_size')} "
                      "to resume, or move the run's checkpoints aside to start over")


def _liger_available() -> bool:
    return hardware.cuda() and importlib.util.find_spec("liger_kernel") is not None


def bf16(cfg: config.Config, gpu: bool | None = None) -> bool:
    """Whether training computes in bf16 autocast (over fp32 master weights): a bfloat16 size on GPUs, fp32 on CPUs.
    ``gpu``: whether it trains on GPUs (default: whether this process sees one). The one rule of the Trainer's
    ``bf16`` (:func:`training_args`), accelerate's ``--mixed_precision`` (:mod:`qalign_lib.train.launch`) and the
    doctor's memory model."""
    return cfg.dtype == "bfloat16" and (hardware.cuda() if gpu is None else gpu)


def report_to(cfg: config.Config) -> list[str]:
    """The trackers of ``report_to``, checked to be installed (tensorboard logs under the run directory)."""
    wanted = [t for t in cfg.report_to if t != "none"]
    modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
    for tracker in wanted:
        if not any(importlib.util.find_spec(m) for m in modules[tracker]):
            raise ConfigError(f"report_to includes {tracker!r} but it is not installed: pip install {modules[tracker][0]}, "
                              "or set -p report_to none")
    return wanted or ["none"]


def training_args(cfg: config.Config, out: Path, world_size: int = 1, batch: dict | None = None):
    """SFTConfig for the paper recipe: effective batch = per-device batch x accumulation x processes, exactly
    (:func:`batch_plan`; ``batch``: its plan for ``world_size`` where the caller has it); one GPU per process."""
    from trl import SFTConfig

    run = layout.RunDir(Path(out))
    batch = batch_plan(cfg, world_size) if batch is None else batch
    mixed = bf16(cfg)
    args = SFTConfig(
        output_dir=str(run.checkpoints),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=batch["per_device_batch_size"],
        gradient_accumulation_steps=batch["gradient_accumulation_steps"],
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_length=None if cfg.padding_free else cfg.max_length,  # inputs are already cut (tokenize)
        padding_free=cfg.padding_free,  # examples concatenated, position ids reset per example
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        use_liger_kernel=cfg.liger and _liger_available(),
        completion_only_loss=True,
        bf16=mixed,
        tf32=True if mixed else None,
        gradient_checkpointing=cfg.gradient_checkpointing,  # TRL's default is True: the size decides
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=report_to(cfg),  # TensorBoard writes to the run directory: see make_trainer
        dataset_num_proc=None,
        # under `accelerate launch` with DeepSpeed, DeepSpeed picks the device itself (DS_ACCELERATOR=cpu on a CPU)
        use_cpu=not hardware.cuda() and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        disable_tqdm=False,
    )
    if args.n_gpu > 1:
        # one process that sees several GPUs (no launcher): transformers would wrap the model in nn.DataParallel,
        # which TRL refuses (and which would change the batch). Train on the first GPU only, as the Trainer itself
        # does for a model-parallel model (trainer.py: `self.args._n_gpu = 1`)
        logger.info("%d GPUs visible to one training process: training on %s only", args.n_gpu, args.device)
        args._n_gpu = 1
    return args


def tokenize(examples: list[dict], tokenizer, max_length: int, lengths: dict | None = None) -> tuple[list[dict], int]:
    """Token ids and completion masks of prompt-completion examples, EOS appended, cut at ``max_length``.

    The completion starts where the tokenized prompt and prompt+completion diverge (tokens can merge across the
    boundary, as in TRL). Examples with no completion token left within ``max_length`` are dropped; returns
    (rows, number dropped). ``lengths``, when given, is filled per language (an example's ``lang``) with the
    examples, how many are kept whole, cut (a completion without its end or EOS) and dropped, and the longest."""
    rows, dropped = [], 0
    for ex in examples:
        prompt = tokenizer(ex["prompt"])["input_ids"]
        full = tokenizer(ex["prompt"] + ex["completion"])["input_ids"] + [tokenizer.eos_token_id]
        start = next((k for k, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        ids = full[:max_length]
        if lengths is not None:
            n = lengths.setdefault(ex.get("lang", "?"), {"examples": 0, "whole": 0, "truncated": 0, "dropped": 0, "longest": 0})
            n["examples"] += 1
            n["longest"] = max(n["longest"], len(full))
            n["whole" if len(full) <= max_length else "dropped" if len(ids) <= start else "truncated"] += 1
        if len(ids) <= start:
            dropped += 1
            continue
        rows.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return rows, dropped


def length_summary(lengths: dict, max_length: int) -> str:
    """One line per language of :func:`tokenize`'s ``lengths``."""
    return "; ".join(f"{lang} {n['examples']} ({n['truncated']} cut, {n['dropped']} dropped, longest {n['longest']})"
                     for lang, n in sorted(lengths.items())) + f" [max_length {max_length}]"


def _loss_logger(path: Path):
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                row = {"step": state.global_step, "epoch": logs.get("epoch"), "loss": logs["loss"],
                       "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"), "time": time.time()}
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

    return LossLogger()


def load_for_training(out: Path):
    """(meta, config, tokenizer with a pad token, model, tokenized rows) of a prepared run."""
    run = layout.RunDir(Path(out))
    meta = run.meta()
    cfg = config.build(meta["config"], source=str(run.run_json))
    examples = read_jsonl(run.train_jsonl, ("prompt", "completion"))
    tokenizer = modeling.load_tokenizer(meta["init_model"])
    model = modeling.load_model(meta["init_model"], "float32", for_training=True,  # fp32 master weights, bf16 autocast
                                attn_implementation=cfg.attn_implementation)
    if modeling.ensure_pad_token(tokenizer, model):
        logger.info("the tokenizer had no pad token: added %s (vocabulary %d, new rows = mean)", modeling.PAD_TOKEN, len(tokenizer))
    lengths: dict = {}
    rows, dropped = tokenize(examples, tokenizer, cfg.max_length, lengths)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(run.lengths, {"max_length": cfg.max_length, "per_lang": lengths})
    logger.info("examples per language: %s", length_summary(lengths, cfg.max_length))
    cut = sum(n["truncated"] + n["dropped"] for n in lengths.values())
    if cut > 0.01 * len(examples):
        logger.warning("%d of %d examples do not fit max_length=%d (cut or dropped): the model learns completions "
                       "that stop without their end; raise max_length", cut, len(examples), cfg.max_length)
    if not rows:
        raise DataError(f"run {meta['name']}: every example's prompt is longer than max_length={cfg.max_length} tokens, "
                        "so no completion token is left to train on; raise max_length")
    if dropped:
        logger.warning("%d of %d examples dropped: their prompt fills max_length=%d", dropped, len(examples), cfg.max_length)
    return meta, cfg, tokenizer, model, rows


def completion_only_logits(enabled: bool) -> None:
    """Make TRL's fused LM head project only the positions whose next token is trained on (``enabled``), or restore
    its own choice. TRL (trl.trainer.utils: add_fused_lm_head) scores only those positions where Triton runs
    (CUDA, XPU) and every position elsewhere, prompt and padding included, because on XLA-like devices a shape
    that changes every batch recompiles. On a CPU that is 3-5 times the LM-head work of stage 1 (a completion is
    21-32% of a stage-1 example's tokens) for the same loss. The decision is a module-level lookup, so this swaps
    it; it is a no-op (with a warning) on a TRL without it."""
    import trl.trainer.utils as tu

    original = getattr(tu, "_qalign_use_triton", None) or getattr(tu, "_use_triton", None)
    if original is None:
        logger.warning("completion_only_logits: this TRL has no trl.trainer.utils._use_triton; left as TRL does it")
        return
    tu._qalign_use_triton = original
    tu._use_triton = (lambda device: original(device) or device.type in ("cpu", "cuda", "xpu", "mps")) if enabled else original


def lora_config(cfg: config.Config):
    """peft's LoraConfig of ``lora_r`` (None: full fine-tuning): adapters on every linear layer but the LM head."""
    if not cfg.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def check_lora(cfg: config.Config) -> None:
    if cfg.lora_r and cfg.launch in ("fsdp", "zero3", "zero3_offload"):
        raise ConfigError(f"lora_r={cfg.lora_r} with launch={cfg.launch}: the adapters are merged on one process at "
                          "the end; use launch single or ddp (or lora_r null for full fine-tuning)")


def build_trainer(cfg: config.Config, out: Path, load, callbacks=(), world_size: int = 1, batch: dict | None = None,
                  checkpoints: bool = True):
    """The SFTTrainer of ``cfg``, the one every training path trains with: a stage's run (:func:`make_trainer`, and
    through :func:`fit` the doctor's smoke) and the speed benchmark (qalign_lib.tools.speed), so that the benchmark
    measures what trains.

    ``out``: the run directory (checkpoints, the loss log and TensorBoard's under it). ``load()``: (tokenizer with a
    pad token, model, tokenized rows of :func:`tokenize`), called once the trainer's config exists: under
    ``accelerate launch`` the config sets up the process group and DeepSpeed's config, so that from_pretrained builds
    a ZeRO-3 model already partitioned and FSDP's cpu_ram_efficient_loading reads the weights on rank 0 only
    (transformers' is_deepspeed_zero3_enabled / is_fsdp_enabled). ``callbacks``: the caller's, after the loss log.
    ``world_size``: the training processes (``batch``: their :func:`batch_plan`, where the caller has it).
    ``checkpoints=False``: none saved (the benchmark, whose every train() call would end with one)."""
    from datasets import Dataset
    from trl import SFTTrainer

    run = layout.RunDir(Path(out))
    check_lora(cfg)
    args = training_args(cfg, run.path, world_size, batch)
    if not checkpoints:
        from transformers.trainer_utils import SaveStrategy

        args.save_strategy = SaveStrategy.NO
    tokenizer, model, rows = load()
    completion_only_logits(cfg.completion_only_logits)
    run.path.mkdir(parents=True, exist_ok=True)  # the loss log's folder (a prepared run's exists)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[_loss_logger(run.train_log), *callbacks],
                         peft_config=lora_config(cfg))
    if cfg.loss_reduction == "reference":
        # no num_items_in_batch: the model averages each micro-batch over its own tokens and the Trainer divides by
        # the accumulation steps (DDP averages over devices), as the reference's transformers 4.29 Trainer did
        trainer.model_accepts_loss_kwargs = False
    for callback in trainer.callback_handler.callbacks:  # transformers 5 logs under output_dir (checkpoints/, removed
        if type(callback).__name__ == "TensorBoardCallback":  # at the end) unless told: keep it in the run directory
            callback.logging_dir = str(run.tensorboard)
    return trainer


def make_trainer(out: Path, callbacks=()):
    """The SFTTrainer (:func:`build_trainer`) of a prepared run: its config, model, tokenizer with a pad token and
    tokenized examples; a split of the batch other than the one it was prepared with is refused before loading."""
    run = layout.RunDir(Path(out))
    meta = run.meta()
    cfg = config.build(meta["config"], source=str(run.run_json))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = batch_plan(cfg, world)
    check_resume_batch(meta.get("batch"), batch, f"run {run.name} was prepared (run.json)")
    return build_trainer(cfg, run.path, lambda: load_for_training(run.path)[2:], callbacks, world, batch)


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint of a run (trainer_state.json is written last: a cut-short one has none)."""
    def complete(checkpoint: Path) -> bool:
        try:
            return bool(json.loads((checkpoint / "trainer_state.json").read_text()))
        except (OSError, ValueError):
            return False

    done = [c for c in layout.RunDir(Path(out)).checkpoints.glob("checkpoint-*") if complete(c)]
    return str(max(done, key=lambda c: int(c.name.split("-")[-1]))) if done else None


def fit(out: Path, callbacks=()) -> Path:
    """Train a prepared run (resuming from its last checkpoint) and save model/, the log and the loss curve."""
    run = layout.RunDir(Path(out))
    trainer = make_trainer(run.path, callbacks)
    last = last_checkpoint(run.path)
    if last:
        logger.info("resuming %s from %s", run.name, last)
    with _disk_full_is_clear(run):
        trainer.train(resume_from_checkpoint=last)
    with _disk_full_is_clear(run, saving=run.model_tmp):
        if trainer.is_world_process_zero():
            shutil.rmtree(run.model_tmp, ignore_errors=True)
        if run.meta()["config"].get("lora_r"):  # the adapters merged into the weights: a plain model, like full FT
            if trainer.is_world_process_zero():
                trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(run.model_tmp)
        else:
            full_state_dict(trainer)
            trainer.save_model(str(run.model_tmp))
        # every process leaves together: a rank that exits while rank 0 still merges and saves tears down gloo/NCCL
        # under it (seen: SIGABRT "terminate called without an active exception" on machine 1 of two, with LoRA)
        trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        with _disk_full_is_clear(run, saving=run.model_tmp):
            publish_model(run, trainer.processing_class)
        finish(run.path)
    return run.path


def publish_model(run: layout.RunDir, tokenizer) -> None:
    """The saved model (``.model-tmp/``) becomes ``model/``: the tokenizer beside the weights, every file with the
    mode the umask gives (safetensors writes model.safetensors 0600: colleagues could not load it from a shared
    runs folder), then renamed into place."""
    tokenizer.save_pretrained(run.model_tmp)
    files.follow_umask(run.model_tmp)
    shutil.rmtree(run.model, ignore_errors=True)
    os.replace(run.model_tmp, run.model)


def full_state_dict(trainer) -> None:
    """FSDP checkpoints are sharded (each rank writes its shard; params/launch/fsdp.yaml); the final model is one
    full state dict that from_pretrained reads: switch the plugin before save_model (a no-op without FSDP)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        return
    plugin.state_dict_config = plugin.optim_state_dict_config = None  # else set_state_dict_type keeps the sharded ones
    plugin.set_state_dict_type("FULL_STATE_DICT")


@contextlib.contextmanager
def _disk_full_is_clear(run: layout.RunDir, saving: Path | None = None):
    """A full disk while saving a checkpoint or the model shows up as OSError(ENOSPC), from torch's zip writer as
    RuntimeError("... unexpected pos ..."), or from safetensors (the model's weights) as SafetensorError("... No
    space left on device (os error 28)"): say what it is and that a rerun resumes. ``saving``: the folder of the
    final model being written (``.model-tmp/``); a half-written one is removed (it is never the run's model:
    :func:`publish_model` renames it into place only whole) so that the space it took is free again."""
    try:
        yield
    except Exception as e:
        if not _is_disk_full(e):
            raise
        if saving is None:
            raise RunError(f"no space left on the device of {run.path} while saving (a checkpoint or the model): free "
                           "space (`df -h`), then rerun: the run resumes from its last complete checkpoint") from e
        shutil.rmtree(saving, ignore_errors=True)
        raise RunError(f"run {run.name}: no space left on device while saving its model to {saving}; free space "
                       "(`df -h`) and rerun: training resumes from the last checkpoint") from e


def _is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed for want of space, whichever library raised it."""
    from safetensors import SafetensorError

    if isinstance(e, OSError):
        return files.is_disk_full(e)
    if isinstance(e, (RuntimeError, SafetensorError)):
        text = str(e)
        return "unexpected pos" in text or "No space left" in text or "os error 28" in text
    return False


def finish(out: Path) -> None:
    run = layout.RunDir(Path(out))
    files.save_figure(loss_curve(read_log(run.path), title=run.name), run.loss_png, dpi=120)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.mark_done()


def read_log(out: Path) -> list[dict]:
    """Loss per step; after a resume the last value logged for a step wins; a line torn by a kill is skipped."""
    path = layout.RunDir(Path(out)).train_log
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def loss_curve(log: list[dict], title: str = ""):
    """Training loss per optimizer step (the rows of a run's train_log.jsonl)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if log:
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    log.setup(os.environ.get("QALIGN_LOG_LEVEL", "INFO"))
    fit(Path(sys.argv[1]))
