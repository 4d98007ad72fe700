"""Smoke test of the speed benchmark on the random tiny LLaMA: structure, ratios, identical greedy outputs.
Speed itself is never asserted (that is what notebooks/benchmark.ipynb measures)."""
import json

import pytest

from qalign_lib.tools import speed
from tests.synthetic import make_data_dir


@pytest.fixture
def varied_data(tmp_path, monkeypatch):
    """Synthetic data whose GSM8K answers differ in length (the synthetic ones are nearly all alike), so that the
    reference recipe's padded batches do hold padding."""
    root = make_data_dir(tmp_path / "data")
    path = root / "gsm8k" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for i, row in enumerate(rows):
        row["answer"] = "Let us think. " * (i % 9) + row["answer"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setenv("QALIGN_DATA_DIR", str(root))
    return root


@pytest.mark.slow
def test_benchmark_smoke(varied_data, tmp_path):
    s = speed.settings("cpu", models="tiny-random", repeats=2, warmup_steps=1, train_steps=2, train_batch_size=4,
                           max_length=256, gen_langs="en,de", gen_per_lang=3, max_new_tokens=4, gen_batch_size=4,
                           gen_benchmarks="mgsm", train_data="gsm8k", train_sizes="tiny")
    results = speed.run(s, tmp_path / "bench")
    m = results["models"]["tiny-random"]
    for part, metrics in (("train", speed.TRAIN_METRICS), ("generate", speed.GEN_METRICS)):
        r = m[part]
        for k in metrics:
            assert r["reference"][k] > 0 and r["ours"][k] > 0, (part, k)
            assert r["ratio"][k] == pytest.approx(r["ours"][k] / r["reference"][k]), (part, k)
        assert len(r["reference"]["seconds_per_round"]) == len(r["ours"]["seconds_per_round"]) == 2  # ABBA rounds
    train = m["train"]
    assert train["reference"]["tokens"] == train["ours"]["tokens"]  # both recipes timed on the same examples
    assert train["ours"]["pad_share"] == 0 and train["reference"]["pad_share"] > 0
    assert train["ours"]["recipe"]["padding_free"] and train["ours"]["recipe"]["sampling"] == "group_by_length"
    assert not train["reference"]["recipe"]["padding_free"] and train["reference"]["recipe"]["sampling"] == "random"
    assert not train["reference"]["recipe"]["completion_only_logits"] and train["ours"]["recipe"]["completion_only_logits"]
    tiny = train["extra"]["size tiny"]  # the tiny size's own recipe, timed in the same rounds on the same examples
    assert tiny["tokens"] == train["reference"]["tokens"] and tiny["recipe"]["lora_r"] == 16
    assert train["ratios"]["size tiny"]["tokens_per_s"] == pytest.approx(tiny["tokens_per_s"] / train["reference"]["tokens_per_s"])
    assert "| tiny-random | train tokens/s (size tiny) |" in speed.table(results)
    assert m["generate"]["n"] == 6 and m["generate"]["mismatches"] == 0  # fp32 greedy: identical outputs
    g = m["generate"]
    assert g["identical"] == {"reference": 1.0, "hf": 1.0} and set(g["engines"]) == {"hf"}  # tiny-random: hf only
    assert 0 < g["reference"]["roofline_fraction"] < 1 and g["roofline_tokens_per_s"] > 0
    assert g["reference"]["flops"] == pytest.approx(g["ours"]["flops"])  # same outputs, same useful work
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["models"]["tiny-random"]["train"]["ratio"] == pytest.approx(train["ratio"])
    assert {"torch", "transformers"} <= set(saved["versions"]) and saved["device"] and saved["peak_flops"] > 0
    assert "| tiny-random | train tokens/s |" in (tmp_path / "bench" / "results.md").read_text()
    assert "| tiny-random | generated tokens/s (hf) |" in (tmp_path / "bench" / "results.md").read_text()
    assert (tmp_path / "bench" / "ratios.png").stat().st_size > 0


def test_settings_overrides_and_errors():
    s = speed.settings("cpu", models="a,b", train_steps=7)
    assert s["models"] == ["a", "b"] and speed.for_model(s, "tiny-random")["train_steps"] == 7
    assert speed.for_model(speed.settings("cpu"), "tiny-random")["train_steps"] != speed.settings("cpu")["train_steps"]
    with pytest.raises(speed.config.ConfigError, match="unknown benchmark parameter"):
        speed.settings("cpu", lr=1)
