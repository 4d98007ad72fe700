"""Supervised fine-tuning of one run: TRL's SFTTrainer on prompt-completion examples, loss on the completion only.

A run lives in ``runs/<size>/<name>/``:
  run.json          the resolved config, the data and init it was built from, and their fingerprint
  train.jsonl       exactly the examples it is trained on ({"prompt", "completion", "lang", "id"})
  checkpoints/      Trainer checkpoints every ``save_steps`` (removed once the run is finished)
  train_log.jsonl   loss and learning rate per optimizer step;  loss.png  the loss curve
  model/            the final model (safetensors) and tokenizer
  DONE              written last: a finished run is skipped when its fingerprint has not changed

``python -m qalign_lib.training RUN_DIR`` trains a prepared run; that is what ``accelerate launch`` runs for
multi-process training.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import config, data, modeling
from .io import read_jsonl, write_json, write_jsonl

TRAIN_KEYS = ("model", "dtype", "lr", "epochs", "batch_size", "per_device_batch_size", "scheduler", "warmup_ratio",
              "weight_decay", "max_length", "seed", "stage1_limit", "stage2_limit")  # what changes the result


def run_dir(size: str, name: str) -> Path:
    return config.runs_dir() / size / name


def is_done(path: Path) -> bool:
    return (path / "DONE").is_file() and (path / "model" / "config.json").is_file()


def init_ref(cfg: dict, init: str) -> str:
    """The model a run starts from: ``base`` (the size's model) or a finished run of the same size."""
    if init == "base":
        return cfg["model"]
    path = run_dir(cfg["size"], init)
    if not is_done(path):
        raise modeling.ModelError(f"run {init!r} ({path}) is not finished; train it first (its notebook or `qalign study`)")
    return str(path)


def _fingerprint(cfg: dict, tasks, langs, init: str, examples: list[dict]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: cfg.get(k) for k in TRAIN_KEYS if k != "model"}, sort_keys=True).encode())
    h.update(json.dumps([tasks, langs]).encode())
    init_path = run_dir(cfg["size"], init) / "run.json" if init != "base" else None
    h.update((json.loads(init_path.read_text())["fingerprint"] if init_path else modeling.fingerprint(cfg["model"])).encode())
    for row in examples:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def prepare(cfg: dict, name: str, tasks: list[str], langs, init: str = "base", stage: int = 1) -> Path | None:
    """Build the examples and write run.json + train.jsonl. Returns None when the run is already finished with the
    same inputs. A finished run whose inputs changed is moved aside (``<name>.replaced-<time>``), never overwritten."""
    out = run_dir(cfg["size"], name)
    start = init_ref(cfg, init)
    examples = data.build_mixture(tasks, langs, cfg.get(f"stage{stage}_limit"), cfg["seed"])
    if not examples:
        raise data.DataError(f"run {name}: no training examples for {tasks} {langs}")
    fp = _fingerprint(cfg, tasks, langs, init, examples)
    if out.exists():
        old = json.loads((out / "run.json").read_text()).get("fingerprint") if (out / "run.json").is_file() else None
        if old == fp and is_done(out):
            print(f"run {name}: finished with the same inputs (fingerprint {fp}); skipping")
            return None
        if old != fp and (is_done(out) or (out / "checkpoints").exists()):
            aside = out.with_name(f"{name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            print(f"run {name}: inputs changed ({old} -> {fp}); moving the old run to {aside}")
            os.replace(out, aside)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", examples)
    write_json(out / "run.json", {"name": name, "stage": stage, "tasks": tasks, "langs": data_langs(tasks, langs),
                                  "init": init, "init_model": start, "fingerprint": fp, "n_examples": len(examples),
                                  "config": cfg})
    return out


def data_langs(tasks, langs) -> list[str]:
    return sorted({lang for t in tasks for lang in data.task_langs(t, langs)})


def _liger_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def training_args(cfg: dict, out: Path, world_size: int = 1):
    """SFTConfig for the paper recipe: effective batch = per-device batch x accumulation x processes."""
    import torch
    from trl import SFTConfig

    per_device = min(cfg["per_device_batch_size"], cfg["batch_size"])
    accumulation = max(1, cfg["batch_size"] // (per_device * world_size))
    if per_device * accumulation * world_size != cfg["batch_size"]:
        print(f"note: batch_size {cfg['batch_size']} is not a multiple of {per_device}x{world_size}; "
              f"using {per_device * accumulation * world_size}")
    bf16 = cfg["dtype"] == "bfloat16" and torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(out / "checkpoints"),
        learning_rate=cfg["lr"],
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=cfg["scheduler"],
        warmup_steps=cfg["warmup_ratio"],  # a float below 1 is a ratio of the total steps
        weight_decay=cfg["weight_decay"],
        max_length=None if cfg.get("padding_free") else cfg["max_length"],  # inputs are already cut (tokenize)
        padding_free=bool(cfg.get("padding_free")),  # examples concatenated, position ids reset per example
        train_sampling_strategy="group_by_length" if cfg.get("group_by_length") else "random",
        use_liger_kernel=bool(cfg.get("liger")) and _liger_available(),
        completion_only_loss=True,
        bf16=bf16,
        tf32=True if bf16 else None,
        activation_checkpointing=cfg["gradient_checkpointing"],
        gradient_checkpointing=False,  # deprecated alias (TRL's default is True): the line above decides
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        report_to="none",
        dataset_num_proc=None,
        # under `accelerate launch` with DeepSpeed, DeepSpeed picks the device itself (DS_ACCELERATOR=cpu on a CPU)
        use_cpu=not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        disable_tqdm=False,
    )


def tokenize(examples: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Token ids and completion masks of prompt-completion examples, EOS appended, cut at ``max_length``.

    The completion starts where the tokenized prompt and prompt+completion diverge (tokens can merge across the
    boundary, as in TRL). Examples with no completion token left within ``max_length`` are dropped; returns
    (rows, number dropped)."""
    rows, dropped = [], 0
    for ex in examples:
        prompt = tokenizer(ex["prompt"])["input_ids"]
        full = tokenizer(ex["prompt"] + ex["completion"])["input_ids"] + [tokenizer.eos_token_id]
        start = next((k for k, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        ids = full[:max_length]
        if len(ids) <= start:
            dropped += 1
            continue
        rows.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return rows, dropped


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


def make_trainer(out: Path, callbacks=()):
    """The SFTTrainer of a prepared run (model, tokenizer with a pad token, tokenized prompt-completion data)."""
    from datasets import Dataset
    from trl import SFTTrainer

    meta = json.loads((Path(out) / "run.json").read_text())
    examples = read_jsonl(Path(out) / "train.jsonl", ("prompt", "completion"))
    tokenizer = modeling.load_tokenizer(meta["init_model"])
    model = modeling.load_model(meta["init_model"], "float32", for_training=True,  # fp32 master weights, bf16 autocast
                                attn_implementation=meta["config"].get("attn_implementation"))
    if modeling.ensure_pad_token(tokenizer, model):
        print(f"the tokenizer had no pad token: added {modeling.PAD_TOKEN} (vocabulary {len(tokenizer)}, new rows = mean)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = meta["config"]
    rows, dropped = tokenize(examples, tokenizer, cfg["max_length"])
    if not rows:
        raise data.DataError(f"run {meta['name']}: every example's prompt is longer than max_length={cfg['max_length']} tokens, "
                             "so no completion token is left to train on; raise max_length")
    if dropped:
        print(f"warning: {dropped} of {len(examples)} examples dropped: their prompt fills max_length={cfg['max_length']}")
    trainer = SFTTrainer(model=model, args=training_args(cfg, Path(out), world), train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[_loss_logger(Path(out) / "train_log.jsonl"), *callbacks])
    return trainer


def fit(out: Path, callbacks=()) -> Path:
    """Train a prepared run (resuming from its last checkpoint) and save model/, the log and the loss curve."""
    out = Path(out)
    trainer = make_trainer(out, callbacks)

    def complete(checkpoint: Path) -> bool:  # trainer_state.json is written last: a checkpoint cut short has none
        try:
            return bool(json.loads((checkpoint / "trainer_state.json").read_text()))
        except (OSError, ValueError):
            return False

    done = [c for c in (out / "checkpoints").glob("checkpoint-*") if complete(c)]
    last = str(max(done, key=lambda c: int(c.name.split("-")[-1]))) if done else None
    if last:
        print(f"resuming {out.name} from {last}")
    trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        shutil.rmtree(out / ".model-tmp", ignore_errors=True)
    trainer.save_model(str(out / ".model-tmp"))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(out / ".model-tmp")
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(out / ".model-tmp", out / "model")
        finish(out)
    return out


def finish(out: Path) -> None:
    from .reporting import plot_loss

    plot_loss(read_log(out), out / "loss.png", title=out.name)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "DONE").write_text(json.loads((out / "run.json").read_text())["fingerprint"] + "\n")


def read_log(out: Path) -> list[dict]:
    """Loss per step; after a resume the last value logged for a step wins."""
    path = Path(out) / "train_log.jsonl"
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def train(cfg: dict, name: str, tasks: list[str], langs=None, init: str = "base", stage: int = 1) -> Path:
    """Prepare and train one run unless it is already finished; returns its directory."""
    modeling.preflight(cfg)
    out = prepare(cfg, name, tasks, langs, init, stage)
    if out is None:
        return run_dir(cfg["size"], name)
    from .launch import launch

    launch(cfg, out)
    return out


def stage1(cfg: dict, task: str = "x2en_question", langs=None, name: str | None = None) -> Path:
    """Question alignment (or one of its ablations) from the base model."""
    if task not in data.STAGE1_TASKS:
        raise data.DataError(f"stage 1 task {task!r}: choose one of {', '.join(data.STAGE1_TASKS)}")
    langs = cfg["stage1_langs"] if langs is None else langs
    return train(cfg, name or f"stage1-{task}", [task], langs, "base", 1)


def stage2(cfg: dict, init: str = "base", data_seq=None, langs="all", name: str | None = None) -> Path:
    """Response alignment from ``init``; a sequence of datasets is trained one after another (mixed setting:
    gsm8kinstruct then metamathqa), each phase a run of its own so later experiments can share it."""
    seq = cfg["stage2_data"] if data_seq is None else data_seq
    seq = [seq] if isinstance(seq, str) else list(seq)
    name = name or f"{init}__{'+'.join(seq)}"
    current = init
    for i, dataset in enumerate(seq):
        phase = name if i == len(seq) - 1 else f"{name}.phase{i + 1}-{dataset}"
        train(cfg, phase, [dataset], langs if dataset == "gsm8kinstruct" else None, current, 2)
        current = phase
    return run_dir(cfg["size"], name)


if __name__ == "__main__":
    fit(Path(sys.argv[1]))
