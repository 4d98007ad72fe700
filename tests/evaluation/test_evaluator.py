"""Generation + scoring end to end on a random tiny LLaMA, resume, and batching."""
import json

import pytest
import torch

from qalign_lib.core import config, layout
from qalign_lib.core.errors import ConfigError, RunError
from qalign_lib.evaluation import evaluator
from qalign_lib.models import generation, modeling


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

    plain = run("hf")
    assert run("ours") == plain and run("ours", batch_size=1) == plain
    tokens = []  # each prompt's 20 greedy tokens, with no EOS at all
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        tokens += generation.greedy(model, ids, torch.ones_like(ids), 20, eos_token_id=-1)
    common = max(set(t for row in tokens for t in row[2:12]), key=lambda t: sum(t in row[2:12] for row in tokens))
    tok.eos_token_id = common  # stop where that token comes: rows finish at different steps
    early = run("hf")
    assert len({n for _, n in early.values()}) > 1 and min(n for _, n in early.values()) < 20  # the test bites
    assert run("ours") == early


def test_a_checkpoints_generation_config_never_leaks_into_the_evaluation(tiny_model, tmp_path):
    """The reference decodes with a fresh GenerationConfig(max_new_tokens, do_sample=False): a checkpoint whose
    generation_config.json sets a repetition penalty, n-gram blocking or sampling is evaluated greedily all the same."""
    import shutil

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


def new_tokens(n: int) -> dict:
    return {"mgsm": n, "msvamp": n}


def test_evaluate_end_to_end_and_resume(synthetic_data, tiny_model, monkeypatch):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=3, max_new_tokens=new_tokens(6), eval_batch_size=4)
    assert not evaluator.is_complete(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    metrics = evaluator.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    target = evaluator.target(cfg, run="base")
    assert target.path == layout.base_eval("tiny", tiny_model).path and target.model == tiny_model
    assert target.metrics.is_file() and json.loads(target.metrics.read_text()) == metrics
    assert target.read_settings("mgsm") == evaluator.settings(cfg, "mgsm", tiny_model)
    assert evaluator.is_complete(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    assert not evaluator.is_complete(cfg.replace(eval_limit=4), run="base", benchmarks=["mgsm"], langs="de,en,te")
    assert not evaluator.is_complete(cfg.replace(max_new_tokens=new_tokens(7)), run="base", benchmarks=["mgsm"],
                                      langs="de,en,te")
    assert evaluator.is_complete(cfg.replace(eval_batch_size=1), run="base", benchmarks=["mgsm"], langs="de,en,te")
    assert metrics["mgsm"]["reference"]["n"] == {"de": 3, "en": 3, "te": 3}
    assert metrics["msvamp"]["reference"]["n"] == {"de": 3, "en": 3}  # te is not part of mSVAMP: skipped
    for scorer in ("reference", "strict"):
        r = metrics["mgsm"][scorer]
        assert set(r["accuracy"]) == {"de", "en", "te"} and r["average_langs"] == ["de", "en"]
    rows = [json.loads(line) for line in target.generations("mgsm", "de").read_text().splitlines()]
    assert [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == [0, 1, 2] and all("response" in r for r in rows)
    assert {r["id"] for r in evaluator.load_generations(target, "mgsm", ["de", "en", "sw"], limit=2)["de"]} == {0, 1}

    # resume: drop one row and tear the last line as a kill mid-write would; only the missing id is generated again
    path = target.generations("mgsm", "de")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1]) + lines[1][:10])
    calls = []
    real = generation.generate_to_files
    monkeypatch.setattr(evaluator, "generate_to_files", lambda e, items, *a, **k: calls.append(items) or real(e, items, *a, **k))
    again = evaluator.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    assert [[(it["lang"], it["id"]) for it in items] for items in calls] == [[("de", 1), ("de", 2)]]
    assert again["mgsm"]["reference"]["n"] == metrics["mgsm"]["reference"]["n"]
    # nothing missing: no model is even loaded
    monkeypatch.setattr(evaluator, "_load", lambda *a: (_ for _ in ()).throw(AssertionError("model loaded")))
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="de,en,te")


def test_changed_generation_settings_move_old_generations_aside(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    root = evaluator.target(cfg, run="base").path
    evaluator.evaluate(cfg.replace(eval_batch_size=2), run="base", benchmarks=["mgsm"], langs="en")  # speed only
    assert not list(root.glob("mgsm.replaced-*"))
    evaluator.evaluate(cfg.replace(max_new_tokens=new_tokens(5)), run="base", benchmarks=["mgsm"], langs="en")
    aside = list(root.glob("mgsm.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "en.jsonl").is_file() and json.loads((aside[0] / "settings.json").read_text())[
        "max_new_tokens"] == 4


def test_evaluate_external_model_and_unknown_run(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", eval_limit=1, max_new_tokens=new_tokens(4))
    metrics = evaluator.evaluate(cfg, model=tiny_model, benchmarks=["msvamp"], langs="en")
    assert metrics["model"] == tiny_model and metrics["size"] == "tiny" and metrics["limit"] == 1
    assert layout.model_eval("tiny", tiny_model).read_metrics() == metrics
    with pytest.raises(RunError, match="not finished"):
        evaluator.evaluate(cfg, run="never-trained")
    assert not evaluator.is_complete(cfg, run="never-trained")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        evaluator.evaluate(cfg, model=tiny_model, benchmarks="gsm8k")
    with pytest.raises(ConfigError, match="langs: unknown or unsupported language code"):
        evaluator.evaluate(cfg, model=tiny_model, langs="de,xx")


def test_each_benchmark_takes_the_languages_it_has():
    cfg = config.resolve("tiny", eval_langs="de,en,te")
    assert evaluator.requested(cfg, "mgsm") == ["de", "en", "te"]
    assert evaluator.requested(cfg, "msvamp") == ["de", "en"]
    assert evaluator.requested(cfg, "msvamp", langs="te") == []
