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
    for x in (g["reference"], g["ours"]):
        assert 0 < x["roofline_share"] <= 1 and x["roofline_share"] == max(x["compute_share"], x["memory_share"])
    assert g["bandwidth"] > 0 and g["peak_flops"] >= results["peak_flops"]
    assert g["reference"]["flops"] == pytest.approx(g["ours"]["flops"])  # same outputs, same useful work
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["models"]["tiny-random"]["train"]["ratio"] == pytest.approx(train["ratio"])
    assert {"torch", "transformers"} <= set(saved["versions"]) and saved["device"] and saved["peak_flops"] > 0
    assert "| tiny-random | train tokens/s |" in (tmp_path / "bench" / "results.md").read_text()
    assert "| tiny-random | generated tokens/s (hf) |" in (tmp_path / "bench" / "results.md").read_text()
    assert (tmp_path / "bench" / "ratios.png").stat().st_size > 0


def test_roofline_is_the_slower_of_compute_and_memory():
    assert speed.roofline(6e9, 5e9, peak=2e9, bandwidth=1e9) == {"compute_s": 3.0, "memory_s": 5.0, "limit_s": 5.0,
                                                                "bound": "memory"}
    assert speed.roofline(8e9, 1e9, peak=2e9, bandwidth=1e9)["bound"] == "compute"
    assert speed.share_of_limit(5.0, 10.0, "x") == 0.5
    assert speed.share_of_limit(5.0, 5.0, "x") == 1.0
    with pytest.raises(AssertionError, match="x: 125.0% of its roofline, above 100%"):
        speed.share_of_limit(5.0, 4.0, "x")


def test_useful_flops_count_shared_prefixes_once_and_fed_tokens():
    assert speed.prefix_nodes([[1, 2, 3], [1, 2, 4, 5], [6]]) == [1, 2, 3, 3, 4, 1]  # [1, 2] is shared
    # N_body 10, N_head 3, 1 layer, hidden 1 (4 FLOPs a context position); prompts [1, 2, 3] and [1, 2, 4, 5]
    flops = speed.useful_flops(10, 3, 1, 1, [[1, 2, 3], [1, 2, 4, 5]])
    prefill = 2 * 10 * 5 + 4 * (1 + 2 + 3 + 3 + 4)  # 5 distinct prefixes at depths 1, 2, 3, 3, 4
    # row 1: 2 new tokens, 1 fed back at context 4; row 2: 1 new token, nothing fed back
    assert flops([2, 1]) == prefill + (2 * 10 + 4 * 4 + 2 * 3 * 2) + 2 * 3 * 1
    # 3 new tokens after a 2-token prompt: 2 fed back, at contexts 3 and 4
    assert speed.useful_flops(10, 3, 1, 1, [[7, 8]])([3]) == 2 * 10 * 2 + 4 * 3 + 2 * 2 * 10 + 4 * (3 + 4) + 2 * 3 * 3


def test_generation_bytes_count_weights_per_pass_and_the_kv_cache():
    # prompts [1, 2, 3] and [1, 2, 4, 5, 6]: 6 distinct prefixes; 100 bytes of weights, 10 bytes of KV a token
    nbytes = speed.gen_bytes(100, 10, [[1, 2, 3], [1, 2, 4, 5, 6]])
    # 2 passes of the weights (the longest row); row 1 (2 new) writes 1 fed token and reads its 3 prompt tokens once,
    # row 2 (1 new) writes and reads nothing more
    assert nbytes([2, 1]) == 2 * 100 + 10 * (6 + 1 + 3)
    # prompt 2, 3 new tokens: writes 2 + 2, reads 2 (token 2) + 3 (token 3); 3 passes
    assert speed.gen_bytes(100, 10, [[7, 8]])([3]) == 3 * 100 + 10 * (4 + 5)
    from types import SimpleNamespace
    smollm2 = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    assert speed.kv_bytes_per_token(smollm2, 4) == 46080  # 2 x 30 layers x 3 kv heads x 64 x 4 bytes


def test_summaries_and_their_check_never_above_the_limit():
    run = {"seconds": 10.0, "questions": 2, "new_tokens": 40, "flops": 6e9, "bytes": 5e9, "peak_mem_gib": 1.0}
    out = speed.summarize([run], 2e9, bandwidth=1e9)
    assert (out["roofline_share"], out["compute_share"], out["memory_share"], out["bound"]) == (0.5, 0.3, 0.5, "memory")
    assert out["roofline_tokens_per_s"] == 8.0 and out["new_tokens_per_s"] == 4.0
    train = {"seconds": 2.0, "tokens": 100, "slots": 125, "flops": 3e9, "peak_mem_gib": 1.0}
    mfu = speed.summarize([train], 2e9)
    assert mfu["mfu"] == 0.75 and mfu["pad_share"] == pytest.approx(0.2, abs=1e-12)
    ok = {"models": {"m": {"train": {"reference": mfu, "ours": mfu, "extra": {}},
                           "generate": {"reference": out, "engines": {"vllm": out}}}}}
    speed.check_limits(ok)
    over = speed.summarize([{**run, "seconds": 4.0}], 2e9, bandwidth=1e9)
    assert over["roofline_share"] == 1.25
    ok["models"]["m"]["generate"]["engines"]["vllm"] = over
    with pytest.raises(AssertionError, match=r"m: generation \(vllm, memory-bound\): 125.0% of its roofline"):
        speed.check_limits(ok)
    ok["models"]["m"]["generate"]["engines"]["vllm"] = out
    ok["models"]["m"]["train"]["extra"]["size tiny"] = speed.summarize([{**train, "flops": 5e9}], 2e9)
    with pytest.raises(AssertionError, match=r"m: training MFU \(size tiny\): 125.0%"):
        speed.check_limits(ok)


def test_one_peak_for_the_run_the_best_measured():
    run = {"seconds": 10.0, "questions": 2, "new_tokens": 40, "flops": 6e9, "bytes": 5e8, "peak_mem_gib": 1.0}
    gen = speed.summarize([run], 1e9, bandwidth=1e9)  # compute-bound at a peak of 1e9: 60%
    train = speed.summarize([{"seconds": 2.0, "tokens": 100, "slots": 100, "flops": 1e9, "peak_mem_gib": 1.0}], 1e9)
    results = {"peak_flops": 1e9, "peak_source": "measured", "models": {"m": {
        "train": {"reference": train, "ours": dict(train), "extra": {}},
        "generate": {"peak_flops": 2e9, "bandwidth": 1e9, "reference": gen, "ours": dict(gen), "engines": {"hf": dict(gen)},
                     "ratio": {"roofline_share": 1.0}, "ratios": {"hf": {"roofline_share": 1.0}}}}}}
    speed.rebase_peak(results)
    m = results["models"]["m"]
    assert results["peak_flops"] == 2e9 and m["generate"]["peak_flops"] == 2e9 and "best measurement: 2.0" in results["peak_source"]
    assert (train["mfu"], m["train"]["ours"]["mfu"]) == (0.25, 0.25)  # 1e9 / 2 s / 2e9
    assert gen["roofline_share"] == 0.3 and m["generate"]["engines"]["hf"]["roofline_share"] == 0.3  # 6e9 / 2e9 / 10 s
    assert m["generate"]["ours"]["bound"] == "compute" and m["generate"]["ratios"]["hf"]["roofline_share"] == 1.0


def test_memory_bandwidth_given_or_measured():
    assert speed.memory_bandwidth({"peak_bandwidth": 5e10}, 2**20) == (5e10, "given (peak_bandwidth)")
    bandwidth, source = speed.memory_bandwidth({}, 8 * 2**20, repeats=2)
    assert bandwidth > 0 and source == "measured: torch.sum over 8 MiB (the weights' size), best of 2"


def test_settings_overrides_and_errors():
    s = speed.settings("cpu", models="a,b", train_steps=7)
    assert s["models"] == ["a", "b"] and speed.for_model(s, "tiny-random")["train_steps"] == 7
    assert speed.for_model(speed.settings("cpu"), "tiny-random")["train_steps"] != speed.settings("cpu")["train_steps"]
    with pytest.raises(speed.config.ConfigError, match="unknown benchmark parameter"):
        speed.settings("cpu", lr=1)
