"""Training on a randomly initialised tiny LLaMA: masking, EOS, loss, save/reload, skip, resume."""
import json

import pytest
import torch
from transformers import TrainerCallback

from qalign_lib import config, modeling, training
from tests.helpers import tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def cfg_for(model, **kw):
    base = dict(model=model, stage1_limit=4, epochs=1, batch_size=4, per_device_batch_size=4, lr=1e-3,
                max_length=512, save_steps=2)
    return config.resolve("tiny", **{**base, **kw})


def test_pad_token_added_with_mean_embedding(tiny_model):
    tok, model = modeling.load_tokenizer(tiny_model), modeling.load_model(tiny_model)
    assert tok.pad_token is None and tok.eos_token == "</s>"
    before = model.get_input_embeddings().weight.detach().clone()
    assert modeling.ensure_pad_token(tok, model)
    emb = model.get_input_embeddings().weight
    assert tok.pad_token == "[PAD]" and tok.pad_token_id != tok.eos_token_id and emb.shape[0] == before.shape[0] + 1
    assert torch.allclose(emb[-1], before.mean(0), atol=1e-6)
    assert torch.allclose(model.get_output_embeddings().weight[-1], model.get_output_embeddings().weight[:-1].mean(0), atol=1e-6)
    assert not modeling.ensure_pad_token(tok, model)  # a second call changes nothing


def test_prompt_tokens_masked_and_eos_trained(real_data, tiny_model):
    cfg = cfg_for(tiny_model, padding_free=False)  # one padded row per example; padding-free: see the equality test
    out = training.prepare(cfg, "mask", ["x2en_question"], "de", "base", 1)
    trainer = training.make_trainer(out)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = labels[labels != -100]
    assert trained[-1].item() == tok.eos_token_id              # EOS appended to the completion and trained on
    examples = {e["completion"].strip(): e for e in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    example = examples[tok.decode(trained[:-1]).strip()]      # exactly one example's completion, nothing else
    n_prompt = len(tok(example["prompt"])["input_ids"])
    assert (labels[:n_prompt - 1] == -100).all()              # the prompt (up to the token boundary) is not trained on
    assert tok.decode(ids[:n_prompt - 1]) in example["prompt"]
    assert (ids[: len(labels)][labels != -100] == labels[labels != -100]).all()


def test_loss_falls_save_reload_generate_and_skip(real_data, tiny_model, capsys):
    cfg = cfg_for(tiny_model, epochs=8, lr=5e-3)
    run = training.stage1(cfg, "x2en_question", "de", name="s1")
    log = training.read_log(run)
    assert len(log) == 8 and log[-1]["loss"] < log[0]["loss"] * 0.85
    for f in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "run.json", "train.jsonl", "loss.png", "DONE"):
        assert (run / f).is_file(), f
    assert not (run / "checkpoints").exists()
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["lr"] == 5e-3 and meta["tasks"] == ["x2en_question"] and meta["langs"] == ["de"]
    tok, model = modeling.load_tokenizer(str(run), "left"), modeling.load_model(str(run))
    assert tok.pad_token == "[PAD]"
    out = model.generate(**tok(["### Instruction:\nHallo"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 0
    capsys.readouterr()
    assert training.stage1(cfg, "x2en_question", "de", name="s1") == run
    assert "skipping" in capsys.readouterr().out
    # changed inputs: the old run is moved aside, not overwritten
    training.stage1(cfg_for(tiny_model, epochs=1, lr=5e-3), "x2en_question", "de", name="s1")
    assert len(list(run.parent.glob("s1.replaced-*"))) == 1 and len(training.read_log(run)) == 1


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_interruption(real_data, tiny_model):
    cfg = cfg_for(tiny_model, epochs=2)  # de+fr: 8 examples, batch 4 -> 2 steps per epoch, 4 in all
    out = training.prepare(cfg, "resume", ["x2en_question"], "de,fr", "base", 1)
    with pytest.raises(KeyboardInterrupt):
        training.fit(out, callbacks=[Interrupt()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "DONE").exists()
    steps_before = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps_before == [1, 2]  # step 3 ran but was interrupted before it was logged or checkpointed
    # rerunning the same run continues from checkpoint-2 instead of restarting
    assert training.prepare(cfg, "resume", ["x2en_question"], "de,fr", "base", 1) == out
    training.fit(out)
    steps_after = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps_after[len(steps_before):] == [3, 4]  # resumed at step 3, total 4 steps, not 1..4 again
    assert training.is_done(out) and [r["step"] for r in training.read_log(out)] == [1, 2, 3, 4]


def test_examples_longer_than_max_length_are_an_error(real_data, tiny_model):
    out = training.prepare(cfg_for(tiny_model, max_length=16), "short", ["x2en_question"], "de", "base", 1)
    with pytest.raises(training.data.DataError, match="longer than max_length=16"):
        training.make_trainer(out)


def test_stage2_chain_needs_finished_init(real_data, tiny_model):
    with pytest.raises(modeling.ModelError, match="not finished"):
        training.stage2(cfg_for(tiny_model), init="nope", data_seq=["gsm8k"])


def test_big_size_without_gpu_stops_early():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(modeling.ModelError, match="needs a CUDA GPU"):
        training.stage1(config.resolve("13b"))


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


def test_padding_free_loss_equals_padded_loss(real_data, tiny_model):
    """The same batch, padded (reference) and padding-free (examples concatenated, position ids reset), gives the
    same loss: no attention across examples, no pad token counted."""
    losses = {}
    for padding_free in (False, True):
        cfg = cfg_for(tiny_model, padding_free=padding_free)
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
