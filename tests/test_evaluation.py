"""Generation + scoring end to end on a random tiny LLaMA, resume, and batching."""
import json

import pytest

from qalign_lib import config, evaluation, generation, modeling
from tests.helpers import tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


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


def test_evaluate_end_to_end_and_resume(real_data, tiny_model, monkeypatch):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=3, max_new_tokens=6, eval_batch_size=4)
    metrics = evaluation.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    root = config.runs_dir() / "tiny" / "base" / "eval"
    assert (root / "metrics.json").is_file() and json.loads((root / "metrics.json").read_text()) == metrics
    assert metrics["mgsm"]["reference"]["n"] == {"de": 3, "en": 3, "te": 3}
    assert metrics["msvamp"]["reference"]["n"] == {"de": 3, "en": 3}  # te is not part of mSVAMP: skipped by parse
    for scorer in ("reference", "strict"):
        r = metrics["mgsm"][scorer]
        assert set(r["accuracy"]) == {"de", "en", "te"} and r["average_langs"] == ["de", "en"]
    rows = [json.loads(line) for line in (root / "mgsm" / "de.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == [0, 1, 2] and all("response" in r for r in rows)

    # resume: drop one row and tear the last line as a kill mid-write would; only the missing id is generated again
    path = root / "mgsm" / "de.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1]) + lines[1][:10])
    calls = []
    real = generation.generate_to_files
    monkeypatch.setattr(evaluation, "generate_to_files", lambda m, t, items, *a, **k: calls.append(items) or real(m, t, items, *a, **k))
    again = evaluation.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    assert [[(it["lang"], it["id"]) for it in items] for items in calls] == [[("de", 1), ("de", 2)]]
    assert again["mgsm"]["reference"]["n"] == metrics["mgsm"]["reference"]["n"]
    # nothing missing: no model is even loaded
    monkeypatch.setattr(evaluation, "_load", lambda *a: (_ for _ in ()).throw(AssertionError("model loaded")))
    evaluation.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="de,en,te")


def test_changed_generation_settings_move_old_generations_aside(real_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=4, eval_batch_size=4)
    evaluation.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    evaluation.evaluate(config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=5), run="base", benchmarks=["mgsm"], langs="en")
    root = config.runs_dir() / "tiny" / "base" / "eval"
    assert len(list(root.glob("mgsm.replaced-*"))) == 1


def test_evaluate_external_model_and_unknown_run(real_data, tiny_model):
    cfg = config.resolve("tiny", eval_limit=1, max_new_tokens=4)
    metrics = evaluation.evaluate(cfg, model=tiny_model, benchmarks=["msvamp"], langs="en")
    assert metrics["model"] == tiny_model
    assert list((config.runs_dir() / "tiny" / "models").glob("*/eval/metrics.json"))
    with pytest.raises(modeling.ModelError, match="not finished"):
        evaluation.evaluate(cfg, run="never-trained")
