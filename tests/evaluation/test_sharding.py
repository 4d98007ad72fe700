"""Data-parallel generation (qalign_lib.evaluation.sharding): shard assignment, per-shard appends, folding the
shards in (also after a kill), a worker's shard, a cache root per vLLM engine, and (slow) two hf processes under
`accelerate launch`."""
import json
import sys

import pytest

from qalign_lib.core import config, files, hardware, layout
from qalign_lib.core.errors import ConfigError, LaunchError
from qalign_lib.evaluation import evaluator, sharding
from qalign_lib.models import engines, generation
from tests.helpers import FakeEngine


def items(n: int, lang: str = "en") -> list[dict]:
    return [{"id": i, "lang": lang, "prompt": "x" * (1 + (i * 7) % 13)} for i in range(n)]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# Sharding, per-shard files, folding


def test_data_parallel_size_defaults_to_one_engine_per_gpu_group():
    assert sharding.n_engines(None, 1, n_gpus=0) == 1
    assert sharding.n_engines(None, 1, n_gpus=8) == 8
    assert sharding.n_engines(None, 2, n_gpus=8) == 4
    assert sharding.n_engines(None, 4, n_gpus=2) == 1
    assert sharding.n_engines(3, 1, n_gpus=0) == 3      # CPU processes, as the tests run them
    assert sharding.n_engines(2, 2, n_gpus=4) == 2
    with pytest.raises(ConfigError, match="needs 6 GPUs; 4 are visible"):
        sharding.n_engines(3, 2, n_gpus=4)


def test_each_vllm_engine_gets_its_own_group_of_the_visible_gpus():
    assert sharding.gpu_groups(4, 2, visible="0,1,2,3,4,5,6,7") == ["0,1", "2,3", "4,5", "6,7"]
    assert sharding.gpu_groups(2, 1, visible="4,6,7") == ["4", "6"]  # the node's own CUDA_VISIBLE_DEVICES is kept
    with pytest.raises(ConfigError, match="need 4 GPUs; 3 are visible"):
        sharding.gpu_groups(2, 2, visible="1,2,3")


def test_shards_cover_every_question_once_with_the_same_mix_of_lengths():
    todo = items(23) + items(5, "de")
    for n in (1, 2, 3, 8, 40):
        shards = sharding.shard(todo, n)
        assert len(shards) == n
        flat = [(it["lang"], it["id"]) for s in shards for it in s]
        assert sorted(flat) == sorted((it["lang"], it["id"]) for it in todo) and len(set(flat)) == len(flat)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    a, b = sharding.shard(todo, 2)
    assert abs(sum(len(it["prompt"]) for it in a) - sum(len(it["prompt"]) for it in b)) <= 13  # one prompt at most


def test_fold_appends_shard_rows_once_repairs_torn_lines_and_removes_the_shards(tmp_path):
    root = layout.EvalRoot(tmp_path / "eval", "m")
    main = root.generations("mgsm", "en")
    main.parent.mkdir(parents=True)
    main.write_text(json.dumps({"lang": "en", "id": 0, "response": "kept", "new_tokens": 1}) + "\n")
    s0, s1 = root.shard_generations("mgsm", "en", 0), root.shard_generations("mgsm", "en", 1)
    s0.parent.mkdir()
    s0.write_text("".join(json.dumps({"lang": "en", "id": i, "response": f"r{i}", "new_tokens": 1}) + "\n" for i in (0, 2)))
    s1.write_text(json.dumps({"lang": "en", "id": 1, "response": "r1", "new_tokens": 1}) + "\n" + '{"lang": "en", "id": 3, "resp')
    assert root.shard_files("mgsm", "en") == [s0, s1]
    assert sharding.fold(root, "mgsm", ["en", "de"]) == 2
    got = rows(main)
    assert [(r["id"], r["response"]) for r in got] == [(0, "kept"), (2, "r2"), (1, "r1")]  # id 3 was torn: lost
    assert not root.shards_dir("mgsm").exists()
    assert sharding.fold(root, "mgsm", ["en"]) == 0 and rows(main) == got  # nothing left: a no-op


def test_worker_generates_only_its_shard_into_its_own_files(tmp_path, monkeypatch):
    root = layout.EvalRoot(tmp_path / "eval", "m")
    todo = items(7) + items(4, "de")
    task = root.shard_task("mgsm")
    task.parent.mkdir(parents=True)
    shards = sharding.shard(todo, 3)
    task.write_text(json.dumps({"engine": "hf", "model": "m", "root": str(root.path), "benchmark": "mgsm",
                                "dtype": "float32", "tensor_parallel_size": 1, "vllm_chunk": 8, "vllm_eager": None,
                                "vllm_kv_cache_gib": 0.75, "max_new_tokens": 4, "batch_size": 2, "token_budget": None, "shards": shards}))
    fake = FakeEngine()
    loaded = []
    monkeypatch.setattr(engines, "load", lambda *a, **k: loaded.append(a) or fake)
    monkeypatch.setenv("QALIGN_SHARD", "1")
    monkeypatch.setenv("QALIGN_SHARDS", "3")
    assert sharding.rank() == (1, 3)
    assert sharding.worker(task) == len(shards[1])
    assert sorted(fake.seen) == sorted(it["prompt"] for it in shards[1])
    assert loaded[0][-1] == 0.75  # each worker's engine gets the size's KV-cache budget (vllm_kv_cache_gib)
    written = {(r["lang"], r["id"]) for lang in ("en", "de") for p in root.shard_files("mgsm", lang) for r in rows(p)}
    assert written == {(it["lang"], it["id"]) for it in shards[1]}
    assert all(p.name.endswith(".shard1.jsonl") for lang in ("en", "de") for p in root.shard_files("mgsm", lang))
    monkeypatch.setenv("QALIGN_SHARDS", "2")
    with pytest.raises(ConfigError, match="3 shards"):
        sharding.worker(task)


def test_a_killed_data_parallel_run_resumes_from_its_shard_files(synthetic_data, tiny_model, monkeypatch):
    """What two engines finished before a kill (their shard files, one line torn) is folded in; only the rest is
    generated again, and the result equals an uninterrupted run."""
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=4, max_new_tokens={"mgsm": 4}, engine="hf")
    whole = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    root = evaluator.target(cfg, run="base")
    full = {r["id"]: r for r in rows(root.generations("mgsm", "en"))}
    root.generations("mgsm", "en").unlink()
    for k, ids in enumerate([(0, 1), (2,)]):
        path = root.shard_generations("mgsm", "en", k)
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(full[i]) + "\n" for i in ids) + ('{"lang": "en", "id": 3' if k else ""))
    calls = []
    real = generation.generate_to_files
    monkeypatch.setattr(evaluator, "generate_to_files", lambda e, todo, *a, **k: calls.append(todo) or real(e, todo, *a, **k))
    again = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert [[it["id"] for it in todo] for todo in calls] == [[3]]
    assert {r["id"]: r for r in rows(root.generations("mgsm", "en"))} == full
    assert again["mgsm"] == whole["mgsm"] and not root.shards_dir("mgsm").exists()


def test_a_failing_worker_names_its_error_and_keeps_what_the_others_finished(synthetic_data, tiny_model, monkeypatch):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=2, max_new_tokens={"mgsm": 3}, engine="hf",
                         data_parallel_size=2)
    monkeypatch.setattr(sharding, "_accelerate", lambda n, task: [sys.executable, "-c", "raise ValueError('worker broke')"])
    with pytest.raises(LaunchError, match="ValueError: worker broke"):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")


# ----------------------------------------------------------------------------------------------------------------
# Slow: two hf engines under accelerate launch (CPU processes)


@pytest.mark.slow
def test_two_hf_processes_under_accelerate_give_what_one_process_gives(synthetic_data, tiny_model):
    base = config.resolve("tiny", model=tiny_model, eval_limit=5, max_new_tokens={"mgsm": 6}, engine="hf")
    one = evaluator.evaluate(base, model=tiny_model, benchmarks="mgsm", langs="de,en")
    root = evaluator.target(base, model=tiny_model)
    single = {lang: {r["id"]: r["response"] for r in rows(root.generations("mgsm", lang))} for lang in ("de", "en")}
    files.move_aside(root.path, "test")
    two = evaluator.evaluate(base.replace(data_parallel_size=2), model=tiny_model, benchmarks="mgsm", langs="de,en")
    sharded = {lang: {r["id"]: r["response"] for r in rows(root.generations("mgsm", lang))} for lang in ("de", "en")}
    assert sharded == single and two["mgsm"] == one["mgsm"]
    log = root.shard_log("mgsm").read_text()  # the workers' output is kept beside the generations
    assert "mgsm shard 0/2:" in log and "mgsm shard 1/2:" in log
    assert not root.shards_dir("mgsm").exists()  # the shard files are folded in and removed


# ----------------------------------------------------------------------------------------------------------------
# A cache root of its own for every vLLM engine (eight starting at once)


def test_every_vllm_engine_has_its_own_cache_root(tmp_path, monkeypatch):

    cfg = config.resolve("tiny", engine="vllm")
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    monkeypatch.setattr(hardware, "gpus", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "shared"))
    launched = []
    monkeypatch.setattr(sharding, "_run", lambda cmds, log_path, envs, **kwargs: launched.append((cmds, envs)))
    root = layout.EvalRoot(tmp_path / "eval", "m")
    items = [{"id": i, "lang": "en", "prompt": "x" * i} for i in range(16)]
    sharding.generate(cfg, root, "mgsm", items, 4, 8, ["en"])
    (cmds, envs), = launched
    roots = [env["VLLM_CACHE_ROOT"] for env in envs]
    assert len(cmds) == 8 and len(set(roots)) == 8 and str(tmp_path / "shared") not in roots
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == [str(k) for k in range(8)]
    assert [env["QALIGN_SHARD"] for env in envs] == [str(k) for k in range(8)]
