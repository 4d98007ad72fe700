"""Training on a randomly initialised tiny LLaMA with synthetic data (qalign_lib.train.training): masking, EOS,
loss, save/reload, skip, resume (after a crash, a kill -9 and a full disk), pinned losses, the files a run writes."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from qalign_lib.core import config, files, layout
from qalign_lib.core.errors import ConfigError, DataError, RunError
from qalign_lib.models import modeling
from qalign_lib.train import stages, training
from tests.helpers import launch_cfg, mode, train_cfg


def test_prompt_tokens_masked_and_eos_trained(synthetic_data, tiny_model):
    cfg = train_cfg(tiny_model, padding_free=False)  # one padded row per example; padding-free: see the equality test
    out = training.prepare(cfg, "mask", ["x2en_question"], "de", "base", 1)
    trainer = training.make_trainer(out)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = labels[labels != -100]
    assert trained[-1].item() == tok.eos_token_id              # EOS appended to the completion and trained on
    run = layout.RunDir(out)
    examples = {e["completion"].strip(): e for e in map(json.loads, run.train_jsonl.read_text().splitlines())}
    example = examples[tok.decode(trained[:-1]).strip()]      # exactly one example's completion, nothing else
    n_prompt = len(tok(example["prompt"])["input_ids"])
    assert (labels[:n_prompt - 1] == -100).all()              # the prompt (up to the token boundary) is not trained on
    assert tok.decode(ids[:n_prompt - 1]) in example["prompt"]
    assert (ids[: len(labels)][labels != -100] == labels[labels != -100]).all()


@pytest.mark.train
def test_loss_falls_save_reload_generate_and_skip(synthetic_data, tiny_model, monkeypatch):
    cfg = train_cfg(tiny_model, epochs=8, lr=5e-3)
    out = stages.stage1(cfg, "x2en_question", ["de"], name="s1")
    run = layout.run("tiny", "s1")
    assert out == run.path
    log = training.read_log(run.path)
    assert len(log) == 8 and log[-1]["loss"] < log[0]["loss"] * 0.85
    for f in (run.model / "config.json", run.model / "model.safetensors", run.model / "tokenizer.json", run.run_json,
              run.train_jsonl, run.loss_png, run.done_marker):
        assert f.is_file(), f
    assert not run.checkpoints.exists() and run.is_done()
    meta = run.meta()
    assert meta["config"]["lr"] == 5e-3 and meta["tasks"] == ["x2en_question"] and meta["langs"] == ["de"]
    assert run.done_marker.read_text().strip() == meta["fingerprint"] == run.fingerprint()
    tok, model = modeling.load_tokenizer(str(run.path), "left"), modeling.load_model(str(run.path))
    assert tok.pad_token == modeling.PAD_TOKEN == "<pad>"
    inputs = tok(["### Instruction:\nHallo"], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5  # new tokens, not just the prompt back
    # the same inputs again: finished, skipped without training (launch is never reached)
    with monkeypatch.context() as m:
        m.setattr(stages, "launch", lambda *a, **k: pytest.fail("a finished run was trained again"))
        assert training.status(cfg, "s1", ["x2en_question"], ["de"]) == "done"
        assert stages.stage1(cfg, "x2en_question", ["de"], name="s1") == run.path
        assert len(training.read_log(run.path)) == 8
    # changed inputs: the old run is moved aside, not overwritten
    changed = train_cfg(tiny_model, epochs=1, lr=5e-3)
    assert training.status(changed, "s1", ["x2en_question"], ["de"]) == "changed"
    stages.stage1(changed, "x2en_question", ["de"], name="s1")
    aside = list(run.path.parent.glob("s1.replaced-*"))
    assert len(aside) == 1 and len(training.read_log(aside[0])) == 8 and len(training.read_log(run.path)) == 1


# ----------------------------------------------------------------------------------------------------------------
# Pinned losses (torchtune style)

# Produced by running test_pinned_losses once (torch 2.13.0+cpu, transformers 5.23.0, trl 1.16.0, 2 CPU threads) and
# copying training.read_log's losses here. The recipe is fixed: the tiny random LLaMA of tests/helpers.py (seed 0),
# synthetic stage-1 x2en_question data (de, fr; 4 examples each), batch 4, 2 epochs = 4 optimizer steps, lr 1e-3,
# cosine, 3% warm-up (the first step at lr 0), seed 1234. Any change to the recipe (masking, EOS, padding, the
# optimizer, the schedule, the data order, the loss normalisation) changes them: update them deliberately, after
# checking that the change was intended, never to make the test pass.
PINNED_LOSSES = [6.008785724639893, 6.004573345184326, 5.775764465332031, 5.651217937469482]


@pytest.mark.train
def test_pinned_losses(synthetic_data, tiny_model):
    torch.manual_seed(0)
    cfg = train_cfg(tiny_model, epochs=2)
    out = training.prepare(cfg, "pinned", ["x2en_question"], ["de", "fr"], "base", 1)
    training.fit(out)
    log = training.read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["loss"] for r in log] == pytest.approx(PINNED_LOSSES, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Resume


class SimulatedCrash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise SimulatedCrash(f"simulated crash at step {self.step}")


def final_weights(run_path) -> dict:
    return {k: v.detach().clone() for k, v in modeling.load_model(str(layout.RunDir(run_path).model)).state_dict().items()}


@pytest.mark.train
def test_resume_after_interruption_equals_uninterrupted_training(synthetic_data, tiny_model):
    cfg = train_cfg(tiny_model, epochs=2)  # de+fr: 8 examples, batch 4 -> 2 steps per epoch, 4 in all; checkpoint every 2
    whole = training.prepare(cfg, "whole", ["x2en_question"], "de,fr", "base", 1)
    training.fit(whole)

    out = training.prepare(cfg, "resume", ["x2en_question"], "de,fr", "base", 1)
    run = layout.RunDir(out)
    with pytest.raises(SimulatedCrash):
        training.fit(out, callbacks=[CrashAtStep(3)])
    assert (run.checkpoints / "checkpoint-2").is_dir() and not run.done_marker.exists()
    assert training.last_checkpoint(out) == str(run.checkpoints / "checkpoint-2")
    steps_before = [json.loads(line)["step"] for line in run.train_log.read_text().splitlines()]
    assert steps_before == [1, 2]  # step 3 ran but crashed before it was logged or checkpointed
    assert training.status(cfg, "resume", ["x2en_question"], "de,fr") == "todo"
    # rerunning the same run continues from checkpoint-2 instead of restarting (not moved aside: same inputs)
    assert training.prepare(cfg, "resume", ["x2en_question"], "de,fr", "base", 1) == out
    assert (run.checkpoints / "checkpoint-2").is_dir()
    training.fit(out)
    steps_after = [json.loads(line)["step"] for line in run.train_log.read_text().splitlines()]
    assert steps_after[len(steps_before):] == [3, 4]  # resumed at step 3, total 4 steps, not 1..4 again
    assert run.is_done() and [r["step"] for r in training.read_log(out)] == [1, 2, 3, 4]

    # the interrupted-and-resumed run ends exactly where the uninterrupted one does
    assert [r["loss"] for r in training.read_log(out)] == pytest.approx([r["loss"] for r in training.read_log(whole)], rel=1e-5)
    a, b = final_weights(whole), final_weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


@pytest.mark.train
def test_a_changed_run_with_checkpoints_is_moved_aside(synthetic_data, tiny_model):
    cfg = train_cfg(tiny_model, epochs=2)
    out = training.prepare(cfg, "changed", ["x2en_question"], "de,fr", "base", 1)
    with pytest.raises(SimulatedCrash):
        training.fit(out, callbacks=[CrashAtStep(3)])
    other = train_cfg(tiny_model, epochs=2, lr=2e-3)
    assert training.status(other, "changed", ["x2en_question"], "de,fr") == "changed"
    assert training.prepare(other, "changed", ["x2en_question"], "de,fr", "base", 1) == out
    aside = list(out.parent.glob("changed.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "checkpoint-2").is_dir()  # the old checkpoints are kept
    assert training.last_checkpoint(out) is None  # ... but not resumed from with other inputs


# ----------------------------------------------------------------------------------------------------------------
# Errors and the pieces of the recipe


def test_examples_longer_than_max_length_are_an_error(synthetic_data, tiny_model):
    out = training.prepare(train_cfg(tiny_model, max_length=16), "short", ["x2en_question"], "de", "base", 1)
    with pytest.raises(DataError, match="longer than max_length=16"):
        training.make_trainer(out)


def test_tokenize_appends_eos_masks_prompt_and_drops_overflow(tiny_model):
    tok = modeling.load_tokenizer(tiny_model)
    examples = [{"prompt": "### Instruction:\nHallo\n\n### Response:", "completion": " Hello"},
                {"prompt": "x " * 300, "completion": "y"}]
    rows, dropped = training.tokenize(examples, tok, max_length=64)
    assert dropped == 1 and len(rows) == 1
    ids, mask = rows[0]["input_ids"], rows[0]["completion_mask"]
    assert ids[-1] == tok.eos_token_id and len(ids) == len(mask)
    assert tok.decode([t for t, m in zip(ids, mask) if m][:-1]) == " Hello"
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == examples[0]["prompt"]


def test_training_args_follow_the_config(tmp_path):
    cfg = config.resolve("7b")
    args = training.training_args(cfg, tmp_path / "run", world_size=8)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == cfg.batch_size == 128
    assert args.learning_rate == cfg.lr and args.num_train_epochs == cfg.epochs and args.seed == cfg.seed
    assert args.lr_scheduler_type.value == cfg.scheduler and args.save_steps == cfg.save_steps
    assert args.output_dir == str(layout.RunDir(tmp_path / "run").checkpoints)
    assert args.completion_only_loss and args.logging_steps == 1
    single = training.training_args(cfg, tmp_path / "run", world_size=1)
    assert single.gradient_accumulation_steps == 64 and args.gradient_accumulation_steps == 8  # 128 = 2 x 8 x 8 (the reference)
    grouped = training.training_args(cfg.replace(group_by_length=True, report_to="none"), tmp_path / "run")
    assert grouped.train_sampling_strategy == "group_by_length" and args.train_sampling_strategy == "random"
    assert training.report_to(cfg.replace(report_to="none")) == ["none"] and not grouped.report_to


def test_missing_tracker_is_a_config_error(tmp_path):
    missing = next((t for t in ("wandb", "mlflow") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("wandb and mlflow are both installed")
    with pytest.raises(ConfigError, match=rf"report_to includes '{missing}' but it is not installed"):
        training.report_to(config.resolve("tiny", report_to=missing))


def test_padding_free_loss_equals_padded_loss(synthetic_data, tiny_model):
    """The same batch, padded (reference) and padding-free (examples concatenated, position ids reset), gives the
    same loss: no attention across examples, no pad token counted."""
    losses = {}
    for padding_free in (False, True):
        cfg = train_cfg(tiny_model, padding_free=padding_free)
        out = training.prepare(cfg, f"pf-{padding_free}", ["x2en_question"], "de,fr", "base", 1)
        trainer = training.make_trainer(out)
        features = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer.data_collator(features)
        assert ("attention_mask" in batch) != padding_free
        if padding_free:
            assert batch["input_ids"].shape[0] == 1 and (batch["input_ids"] != trainer.processing_class.pad_token_id).all()
        model = trainer.model.eval()
        with torch.no_grad():
            losses[padding_free] = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}).loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.train
@pytest.mark.parametrize("mode", ["reference", "token"])
def test_loss_reduction_modes_match_the_hand_computed_loss(synthetic_data, tiny_model, mode):
    """One optimizer step of 2 micro-batches of 2 sequences of very unequal completion lengths: `reference` logs the
    mean of the micro-batches' own token means (transformers 4.29, the reference), `token` one mean over all tokens."""
    import copy

    import torch.nn.functional as F

    cfg = train_cfg(tiny_model, batch_size=4, per_device_batch_size=2, loss_reduction=mode, epochs=1, lr=1e-3)
    out = training.prepare(cfg, f"reduction-{mode}", ["x2en_question"], "de", "base", 1)
    prompt = "### Instruction:\nTranslate the following sentences from German to English. Hallo\n\n### Response:"
    completions = [" yes", " Tom has 3 apples and buys 2 more. " * 6, " no 1", " How many apples does he have now? " * 3]
    layout.RunDir(out).train_jsonl.write_text("".join(json.dumps({"prompt": prompt, "completion": c, "lang": "de", "id": i})
                                                      + "\n" for i, c in enumerate(completions)))
    trainer = training.make_trainer(out)
    frozen = copy.deepcopy(trainer.model).eval()  # the weights every micro-batch of step 1 is computed with
    seen, compute = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
        return compute(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    by_hand = []
    for inputs in seen:
        kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        with torch.no_grad():
            logits = frozen(**kwargs).logits[:, :-1].float()
        labels = inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none")
        mask = labels.reshape(-1) != -100
        by_hand.append((losses[mask].sum().item(), int(mask.sum())))
    assert len(by_hand) == 2 and by_hand[0][1] != by_hand[1][1], by_hand  # two micro-batches of unequal token counts
    reference = sum(s / n for s, n in by_hand) / 2
    token = sum(s for s, _ in by_hand) / sum(n for _, n in by_hand)
    assert abs(reference - token) > 1e-3  # the batch tells the two modes apart
    logged = training.read_log(out)[0]["loss"]
    assert logged == pytest.approx(reference if mode == "reference" else token, rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Speed options of the tiny size: completion-only logits, LoRA, lengths per language


def test_completion_only_logits_give_the_same_loss_and_gradients(synthetic_data, tiny_model):
    """TRL's fused LM head over the completion positions only (completion_only_logits) and over every position
    (TRL's own choice on a CPU) give the same loss and the same gradients."""
    results = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        cfg = train_cfg(tiny_model, completion_only_logits=enabled)
        out = training.prepare(cfg, f"col-{enabled}", ["x2en_question"], "de,fr", "base", 1)
        trainer = training.make_trainer(out)
        import trl.trainer.utils as tu
        assert tu._use_triton(torch.device("cpu")) is enabled
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        model = trainer.model
        loss = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")},
                     fused_lm_head=True).loss
        loss.backward()
        results[enabled] = (loss.item(), model.get_input_embeddings().weight.grad.clone())
        model.zero_grad()
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert torch.allclose(results[True][1], results[False][1], atol=1e-6)
    training.completion_only_logits(True)


@pytest.mark.train
def test_lora_run_saves_a_merged_plain_model_and_lengths(synthetic_data, tiny_model):
    cfg = train_cfg(tiny_model, lora_r=4, lora_alpha=8.0, epochs=2)
    out = training.prepare(cfg, "lora", ["x2en_question"], "de,fr", "base", 1)
    training.fit(out)
    run = layout.RunDir(out)
    files = {p.name for p in run.model.iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files  # merged, loadable as any model
    trained, base = modeling.load_model(str(run.model)), modeling.load_model(tiny_model)
    before = base.state_dict()
    resized = {"model.embed_tokens.weight", "lm_head.weight"}  # the new pad token's row (the tiny LLaMA has none)
    changed = [k for k, v in trained.state_dict().items() if k not in resized and not torch.equal(v, before[k])]
    assert changed and all(k.endswith("_proj.weight") for k in changed)  # only the adapted linear layers moved
    emb = trained.get_input_embeddings().weight
    assert torch.equal(emb[:before["model.embed_tokens.weight"].shape[0]], before["model.embed_tokens.weight"])
    assert not any("lora" in k for k in trained.state_dict())
    lengths = json.loads(run.lengths.read_text())
    assert lengths["max_length"] == 512 and set(lengths["per_lang"]) == {"de", "fr"}
    assert lengths["per_lang"]["de"]["examples"] == 4 and lengths["per_lang"]["de"]["whole"] == 4
    with pytest.raises(ConfigError, match="lora_r=4 with launch=zero3"):
        training.prepare(cfg.replace(launch="zero3"), "lora-z3", ["x2en_question"], "de", "base", 1)


def test_tokenize_counts_whole_cut_and_dropped_examples_per_language(tiny_model):
    tok = modeling.load_tokenizer(tiny_model)
    examples = [{"prompt": "Translate: Hallo", "completion": " Hello there my friend, how are you doing today in this "
                 "fine weather? 48 + 24 = 72", "lang": "de"},
                {"prompt": "Translate: Bonjour", "completion": " Hello", "lang": "fr"},
                {"prompt": "Translate: " + "x " * 60, "completion": " y", "lang": "fr"}]
    full = [len(tok(e["prompt"] + e["completion"])["input_ids"]) + 1 for e in examples]
    cut = full[1]  # keeps the second whole, part of the first's completion, nothing of the third's
    assert len(tok(examples[0]["prompt"])["input_ids"]) < cut < full[0] <= len(tok(examples[2]["prompt"])["input_ids"])
    lengths = {}
    rows, dropped = training.tokenize(examples, tok, cut, lengths)
    assert dropped == 1 and len(rows) == 2
    assert lengths["de"] == {"examples": 1, "whole": 0, "truncated": 1, "dropped": 0, "longest": full[0]}
    assert lengths["fr"] == {"examples": 2, "whole": 1, "truncated": 0, "dropped": 1, "longest": max(full[1:])}


# ----------------------------------------------------------------------------------------------------------------
# Faults: a kill -9 and a full disk resume; the run's files follow the umask


def complete_checkpoints(run: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json (written last) is there and whole."""
    steps = []
    for state in run.glob("checkpoints/checkpoint-*/trainer_state.json"):
        try:
            steps.append(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError):
            pass
    return sorted(steps)


@pytest.mark.slow
def test_kill_9_mid_run_resumes_from_the_last_checkpoint(synthetic_data, tiny_model, workers_env):
    # 8 examples, batch 1: 8 steps an epoch, 40 in all; a checkpoint every 5 steps
    cfg = launch_cfg(tiny_model, epochs=5, batch_size=1, per_device_batch_size=1, save_steps=5)
    run = training.prepare(cfg, "killed", ["x2en_question"], "de,fr", "base", 1)
    cmd = [sys.executable, "-m", "qalign_lib.train.training", str(run)]
    with open(run / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not complete_checkpoints(run) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    steps_before = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    complete = complete_checkpoints(run)
    assert not layout.RunDir(run).is_done() and complete and steps_before[-1] < 40
    # a checkpoint being written when the kill came has no trainer_state.json yet: the resume must skip it
    partial = run / "checkpoints" / "checkpoint-39"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    last = complete[-1]
    assert f"resuming killed from {run / 'checkpoints' / f'checkpoint-{last}'}" in second.stdout
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps[len(steps_before):] == list(range(last + 1, 41))        # continued at last+1, not at 1
    assert layout.RunDir(run).is_done() and [r["step"] for r in training.read_log(run)] == list(range(1, 41))
    model = modeling.load_model(str(run))
    assert model.config.vocab_size == len(modeling.load_tokenizer(str(run)))


@pytest.mark.train
@pytest.mark.parametrize("fault", [lambda: OSError(errno.ENOSPC, "No space left on device"),
                                   lambda: RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                                                        "failed writing file data/3: file write failed; unexpected pos "
                                                        "974528 vs 974416")],
                         ids=["ENOSPC", "unexpected-pos"])
def test_full_disk_during_checkpoint_save_is_a_run_error_that_resumes(synthetic_data, tiny_model, monkeypatch, fault):
    from trl import SFTTrainer

    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=4, batch_size=4, per_device_batch_size=4, epochs=1,
                         save_steps=1, report_to="none", max_length=512)
    original = SFTTrainer.__dict__.get("_save_checkpoint")

    def full(self, *a, **k):
        raise fault()

    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", full)
    with pytest.raises(RunError) as e:
        stages.stage1(cfg, "x2en_question", "de", name="x")
    run = layout.run("tiny", "x")
    message = str(e.value)
    assert "no space" in message.lower() and str(run.path) in message and "resum" in message.lower(), message
    assert not run.is_done()
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", original)
    stages.stage1(cfg, "x2en_question", "de", name="x")  # once space is freed: rerun
    assert run.is_done()


@pytest.mark.train
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-merged"])
def test_full_disk_while_saving_the_model_is_a_run_error_naming_it_that_resumes(synthetic_data, tiny_model, monkeypatch,
                                                                               lora):
    """safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)"), without the
    path (issue 21): a one-line RunError naming the model folder, nothing half-written left, and the rerun resumes
    from the last checkpoint without training again."""
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    cfg = train_cfg(tiny_model, epochs=2, save_steps=1, **({"lora_r": 4, "lora_alpha": 8.0} if lora else {}))
    original = mu.safe_save_file
    run = layout.run("tiny", "x")

    def full(tensors, filename, *a, **k):
        if Path(filename).parent == run.model_tmp:  # the final model, not a checkpoint
            Path(filename).write_bytes(b"half")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return original(tensors, filename, *a, **k)

    monkeypatch.setattr(mu, "safe_save_file", full)
    with pytest.raises(RunError) as e:
        stages.stage1(cfg, "x2en_question", "de", name="x")
    message = str(e.value)
    assert message == (f"run x: no space left on device while saving its model to {run.model_tmp}; free space "
                       "(`df -h`) and rerun: training resumes from the last checkpoint")
    assert not run.is_done() and not run.model.exists() and not run.model_tmp.exists()
    assert training.last_checkpoint(run.path).endswith("checkpoint-2")
    monkeypatch.setattr(mu, "safe_save_file", original)
    stages.stage1(cfg, "x2en_question", "de", name="x")  # once space is freed: rerun
    assert run.is_done() and [r["step"] for r in training.read_log(run.path)] == [1, 2]
    assert modeling.load_model(str(run.path)).config.vocab_size == len(modeling.load_tokenizer(str(run.path)))


def test_run_files_are_readable_by_the_group_as_the_umask_says(synthetic_data, tiny_model, umask022):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    out = training.prepare(cfg, "shared", ["x2en_question"], "de", "base", 1)
    run = layout.RunDir(out)
    assert mode(run.run_json) == 0o644 and mode(run.train_jsonl) == 0o644
    root = layout.eval_root("tiny", tiny_model, "base")
    files.write_json(root.metrics, {})
    files.write_json(root.settings("mgsm"), {})
    assert mode(root.metrics) == 0o644 and mode(root.settings("mgsm")) == 0o644
# ----------------------------------------------------------------------------------------------------------------
# One trainer path: the speed benchmark and the doctor's smoke train with the trainer a stage builds


def trainer_facts(trainer) -> dict:
    """What decides how a trainer trains (not where it writes, nor which examples), as train() finds it."""
    import trl.trainer.utils as tu
    from transformers import Trainer

    args = trainer.args
    keys = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "optim",
            "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "max_length", "padding_free",
            "completion_only_loss", "train_sampling_strategy", "use_liger_kernel", "bf16", "tf32",
            "gradient_checkpointing", "seed", "data_seed", "logging_steps", "report_to", "use_cpu", "n_gpu",
            "save_strategy")
    optimizer, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, trainer.model)
    return {**{k: getattr(getattr(args, k), "value", getattr(args, k)) for k in keys},  # enums by value
            "trainer": type(trainer).__name__, "model": type(trainer.model).__name__,
            "model_accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,
            "optimizer": (optimizer.__name__, sorted(optimizer_kwargs.items())),
            "callbacks": sorted(type(c).__name__ for c in trainer.callback_handler.callbacks),
            "lm_head_scores_completions_only_on_cpu": tu._use_triton(torch.device("cpu"))}


def test_the_benchmark_and_the_doctor_train_with_the_trainer_a_stage_builds(synthetic_data, tiny_model, tmp_path,
                                                                            monkeypatch):
    """The trainer the speed benchmark times and the one the doctor's smoke worker trains are, for their config, the
    trainer a stage's run builds (training.build_trainer): the same arguments, loss (model_accepts_loss_kwargs,
    completion-only loss and logits), batching (padding-free, sampling), optimizer and schedule, callbacks; compared
    when train() is called. Their own hooks only: the benchmark saves no checkpoint and adds its clock, the doctor
    adds its measuring callback."""
    from trl import SFTTrainer

    from qalign_lib.core import log
    from qalign_lib.tools import speed
    from qalign_lib.tools.doctor import smoke_runs

    class Started(Exception):
        pass

    configs, seen = [], []
    make_args = training.training_args
    monkeypatch.setattr(training, "training_args", lambda cfg, *a, **k: configs.append(cfg) or make_args(cfg, *a, **k))

    def started(self, *args, **kwargs):
        seen.append(trainer_facts(self))
        raise Started

    monkeypatch.setattr(SFTTrainer, "train", started)

    def as_a_stage(cfg, name: str, examples: list[dict]) -> dict:
        """The trainer of a stage's run of ``cfg`` on ``examples``: prepared as training.prepare writes it."""
        run = training.write_inputs(tmp_path / "runs" / name, cfg, {
            "name": name, "stage": 1, "tasks": ["x2en_question"], "langs": ["de"], "init": "base",
            "init_model": cfg.model, "fingerprint": name, "n_examples": len(examples), "examples": examples})
        with pytest.raises(Started):
            training.fit(run)
        return seen[-1]

    s = speed.settings("cpu", warmup_steps=1, train_steps=1, train_batch_size=2, max_length=128)
    examples = [{"prompt": f"### Instruction:\nWhat is {k} plus {k}?\n\n### Response:", "completion": f" {2 * k}."}
                for k in range(4)]
    for recipe in ("reference", "ours"):
        with pytest.raises(Started):
            speed.train_once(tiny_model, recipe, s, tmp_path / "bench", examples)
        bench, cfg = seen[-1], configs[-1]
        stage = as_a_stage(cfg, f"bench-{recipe}", examples)
        assert bench == {**stage, "save_strategy": "no", "callbacks": sorted([*stage["callbacks"], "Clock"])}, recipe
    assert seen[0]["model_accepts_loss_kwargs"] is False and seen[0]["padding_free"] is False  # reference recipe
    assert seen[2]["padding_free"] is True and seen[2]["lm_head_scores_completions_only_on_cpu"] is True  # ours

    model = smoke_runs.build_model(tmp_path / "smoke")
    cfg = smoke_runs.smoke_cfg(model, "single", 1, 1, gpu=False)
    examples = smoke_runs._examples(4)
    run = smoke_runs._prepare(tmp_path / "smoke", "single-1", cfg, model, examples)
    monkeypatch.setenv(smoke_runs.MEASURE_ENV, str(tmp_path / "measured"))
    monkeypatch.setattr(log, "setup", lambda level="INFO": None)  # the worker's own logging setup, not the test's
    with pytest.raises(Started):
        smoke_runs._train_main(str(run))  # the measured worker of `qalign doctor`'s smoke
    smoke, cfg = seen[-1], configs[-1]
    stage = as_a_stage(cfg, "doctor-single", examples)
    assert smoke == {**stage, "callbacks": sorted([*stage["callbacks"], "Measure"])}
