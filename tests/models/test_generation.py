"""Greedy generation (qalign_lib.models.generation) on a random tiny LLaMA: batches sorted and budgeted, our loop
against Transformers' generate, a checkpoint's generation config ignored; the generations files appended without
duplicate ids and repaired in place, keeping their mode."""
from __future__ import annotations

import json
import os
import shutil

import torch

from qalign_lib.models import engines, generation, modeling
from tests.helpers import mode


def test_batches_sorted_and_budgeted():
    lengths = [5, 50, 20, 40, 10]
    assert generation.batches(lengths, 2, 10) == [[1, 3], [2, 4], [0]]
    # token budget: rows x (longest prompt + new tokens) <= 100
    assert generation.batches(lengths, 8, 10, token_budget=100) == [[1], [3, 2], [4, 0]]


def test_sorted_batches_give_the_same_greedy_outputs(tiny_model):
    tok, model = modeling.load_tokenizer(tiny_model, "left"), modeling.load_model(tiny_model)
    prompts = ["Translate the following sentences", "Janet's ducks lay 16 eggs per day. She eats three.", "### Response:",
               "Natalia sold clips to 48 of her friends in April, and then she sold half as many", "How much?"]
    def run(**kw):
        out = {}
        for results in generation.generate(model, tok, prompts, 12, **kw):
            out.update({i: text for i, text, _ in results})
        return out
    reference = run(batch_size=32, sort=False)
    assert run(batch_size=2) == reference and run(batch_size=1) == reference and run(batch_size=8, token_budget=60) == reference


def test_our_greedy_loop_gives_what_transformers_generate_gives(tiny_model):
    """generation.greedy (rows leave the batch at EOS) against Transformers' generate on the same left-padded batches;
    an EOS that the random model does emit mid-answer makes rows finish at different steps."""
    tok, model = modeling.load_tokenizer(tiny_model, "left"), modeling.load_model(tiny_model)
    prompts = ["Translate the following sentences", "Janet's ducks lay 16 eggs per day. She eats three.", "### Response:",
               "Natalia sold clips to 48 of her friends in April, and then she sold half as many", "How much?",
               "Q: 2 + 2 = ?", "A long prompt " * 9]

    def run(loop, batch_size=4):
        return {i: (t, n) for results in generation.generate(model, tok, prompts, 20, batch_size, loop=loop)
                for i, t, n in results}

    plain = run("transformers")
    assert run("greedy") == plain and run("greedy", batch_size=1) == plain
    tokens = []  # each prompt's 20 greedy tokens, with no EOS at all
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        tokens += generation.greedy(model, ids, torch.ones_like(ids), 20, eos_token_id=-1)
    common = max(set(t for row in tokens for t in row[2:12]), key=lambda t: sum(t in row[2:12] for row in tokens))
    tok.eos_token_id = common  # stop where that token comes: rows finish at different steps
    early = run("transformers")
    assert len({n for _, n in early.values()}) > 1 and min(n for _, n in early.values()) < 20  # the test bites
    assert run("greedy") == early


def test_a_checkpoints_generation_config_never_leaks_into_the_evaluation(tiny_model, tmp_path):
    """The reference decodes with a fresh GenerationConfig(max_new_tokens, do_sample=False): a checkpoint whose
    generation_config.json sets a repetition penalty, n-gram blocking or sampling is evaluated greedily all the same."""

    from transformers import GenerationConfig

    prompts = ["Janet's ducks lay 16 eggs per day. She eats three.", "### Response:", "How much? How much? How much?"]

    def texts(path):
        tok, model = modeling.load_tokenizer(str(path), "left"), modeling.load_model(str(path))
        return [t for results in generation.generate(model, tok, prompts, 16) for _, t, _ in sorted(results)]

    plain = texts(tiny_model)
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    GenerationConfig(repetition_penalty=5.0, no_repeat_ngram_size=1, do_sample=True, top_k=3,
                     eos_token_id=[0, 1, 2]).save_pretrained(odd)
    assert modeling.load_model(str(odd)).generation_config.repetition_penalty == 5.0  # the checkpoint's config loads
    assert texts(odd) == plain
    # the control: with the checkpoint's own config, the same prompts decode differently
    tok, model = modeling.load_tokenizer(str(odd), "left"), modeling.load_model(str(odd))
    own = model.generate(**tok(prompts[:1], return_tensors="pt"), max_new_tokens=16, do_sample=False)
    assert tok.decode(own[0][len(tok(prompts[0])["input_ids"]):], skip_special_tokens=True) != plain[0]


# ----------------------------------------------------------------------------------------------------------------
# The generations files


def test_repaired_generations_file_keeps_its_mode(tmp_path):
    path = tmp_path / "en.jsonl"
    path.write_text(json.dumps({"lang": "en", "id": 0, "response": "5"}) + '\n{"lang": "en", "id": 1, "resp')
    path.chmod(0o644)
    old = os.umask(0o077)  # a colleague's umask: the repaired file keeps the mode it had
    try:
        assert generation.done_ids(path) == {0}
    finally:
        os.umask(old)
    assert mode(path) == 0o644
    assert path.read_text() == json.dumps({"lang": "en", "id": 0, "response": "5"}) + "\n"


def test_generation_appends_skip_ids_already_present(tmp_path, monkeypatch):
    folder = tmp_path / "mgsm"
    folder.mkdir()
    first = {"lang": "en", "id": 0, "response": "first", "new_tokens": 1}
    (folder / "en.jsonl").write_text(json.dumps(first) + "\n")  # another process wrote id 0 meanwhile

    def fake_generate(model, tokenizer, prompts, *a, **k):
        yield [(i, f"second {i}", 1) for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", fake_generate)
    items = [{"id": 0, "lang": "en", "prompt": "p0"}, {"id": 1, "lang": "en", "prompt": "p1"}]
    generation.generate_to_files(engines.HF(None, None), items, folder, max_new_tokens=4, batch_size=8)
    rows = [json.loads(line) for line in (folder / "en.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and rows[0] == first
