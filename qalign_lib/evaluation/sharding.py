"""Data-parallel generation: the missing questions of a benchmark sharded over several engines (one per GPU, or per
group of ``tensor_parallel_size`` GPUs), each appending its rows to files of its own as they finish.

    parent (evaluation, holding the eval root's lock)
      fold()            shard files left by a killed run -> the per-language files (idempotent: present ids skipped)
      shard()           the missing questions, sorted by prompt length and dealt round-robin (balanced shards)
      write task.json   the engine, the model, the decoding and every shard's questions
      launch            hf: ``accelerate launch --num_processes N -m qalign_lib.evaluation.sharding TASK`` (RANK = the shard);
                        vllm: N processes with CUDA_VISIBLE_DEVICES = their GPU group (QALIGN_SHARD = the shard)
      fold()            when every worker is done, and also when one failed (the finished batches are kept)
    worker k            loads its engine, generates shard k, appends each batch to <bench>/shards/<lang>.shard<k>.jsonl

A kill at any moment loses at most each engine's in-flight batch: the shard files are appended per batch and fsynced,
a torn last line is repaired when read (generation.done_ids), and the next evaluation folds them in before it
computes what is missing. File names come from :mod:`qalign_lib.core.layout`.
"""
from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qalign_lib.core import hardware, layout, log
from qalign_lib.core.errors import ConfigError, LaunchError, ResultsError
from qalign_lib.core.files import append_jsonl, atomic_write, read_jsonl
from qalign_lib.models import engines, generation
from qalign_lib.train.launch import launch_configs, stop_groups, worker_error

logger = log.get(__name__)
SHARD_ENV = ("QALIGN_SHARD", "QALIGN_SHARDS")  # set by the vllm launcher; accelerate sets RANK / WORLD_SIZE


def n_engines(data_parallel_size: int | None, tensor_parallel_size: int, n_gpus: int | None = None) -> int:
    """How many engines generate at once: the config's, else one per GPU group (1 without GPUs)."""
    n_gpus = hardware.gpus() if n_gpus is None else n_gpus
    if data_parallel_size is None:
        return max(1, n_gpus // tensor_parallel_size)
    if n_gpus and data_parallel_size * tensor_parallel_size > n_gpus:
        raise ConfigError(f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size} "
                          f"needs {data_parallel_size * tensor_parallel_size} GPUs; {n_gpus} are visible")
    return data_parallel_size


def shard(items: list[dict], n: int) -> list[list[dict]]:
    """``n`` shards of ``items``: sorted by prompt length (longest first), dealt round-robin, so every shard gets the
    same mix of long and short prompts. Every item lands in exactly one shard."""
    order = sorted(range(len(items)), key=lambda i: (-len(items[i]["prompt"]), i))
    return [[items[i] for i in order[k::n]] for k in range(n)]


def fold(root: layout.EvalRoot, benchmark: str, langs) -> int:
    """Append the rows of every shard file to the language's generations file (ids already there are skipped, so a
    fold interrupted half-way is simply done again), then delete the shard files. Returns the rows added."""
    added = 0
    for lang in langs:
        files = root.shard_files(benchmark, lang)
        if not files:
            continue
        target = root.generations(benchmark, lang)
        present = generation.done_ids(target)
        for path in files:
            generation.done_ids(path)  # repairs a torn last line (a kill mid-write)
            try:
                rows = read_jsonl(path, ("lang", "id", "response"))
            except Exception as e:  # noqa: BLE001 - named below with the fix
                raise ResultsError(f"{path}: {e}; delete the file to regenerate its questions") from None
            new = [r for r in rows if r["id"] not in present]
            if new:
                append_jsonl(target, new)
                present |= {r["id"] for r in new}
                added += len(new)
            path.unlink()
    shards = root.shards_dir(benchmark)
    if shards.is_dir() and not any(p.suffix == ".jsonl" for p in shards.iterdir()):
        root.shard_task(benchmark).unlink(missing_ok=True)
        if not any(shards.iterdir()):
            shards.rmdir()
    return added


def generate(cfg, root: layout.EvalRoot, benchmark: str, items: list[dict], max_new_tokens: int, n: int,
             langs) -> None:
    """Generate ``items`` with ``n`` engines at once (n > 1), then fold their files in. Raises LaunchError naming
    the failed worker's own error; what the others finished is kept."""
    name = engines.require(cfg.engine)
    task = {"engine": name, "model": root.model, "root": str(root.path), "benchmark": benchmark, "dtype": cfg.dtype,
            "tensor_parallel_size": cfg.tensor_parallel_size, "vllm_chunk": cfg.vllm_chunk,
            "vllm_eager": cfg.vllm_eager, "vllm_kv_cache_gib": cfg.vllm_kv_cache_gib, "max_new_tokens": max_new_tokens, "batch_size": cfg.eval_batch_size,
            "token_budget": cfg.eval_token_budget, "shards": shard(items, n)}
    path = root.shard_task(benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(task, ensure_ascii=False))
    logger.info("%s: %d questions over %d %s engines (%s)", benchmark, len(items), n, name,
                ", ".join(str(len(s)) for s in task["shards"]))
    try:
        if name == "hf":
            _run([_accelerate(n, path)], root.shard_log(benchmark), _hf_env(), total=len(items),
                 progress=lambda: _count(root, benchmark, langs))
        else:
            cmd = [sys.executable, "-m", "qalign_lib.evaluation.sharding", str(path)]
            _run([cmd] * n, root.shard_log(benchmark), _vllm_envs(n, cfg.tensor_parallel_size), total=len(items),
                 progress=lambda: _count(root, benchmark, langs))
    finally:
        fold(root, benchmark, langs)


def gpu_groups(n: int, tensor_parallel_size: int, visible: str | None = None) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of ``n`` engines: consecutive groups of ``tensor_parallel_size`` of the GPUs
    this process sees (its own CUDA_VISIBLE_DEVICES, if set, else 0, 1, ...)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(hardware.gpus())]
    tp = tensor_parallel_size
    if len(ids) < n * tp:
        raise ConfigError(f"{n} engines x tensor_parallel_size={tp} need {n * tp} GPUs; {len(ids)} are visible")
    return [",".join(ids[k * tp:(k + 1) * tp]) for k in range(n)]


def _vllm_envs(n: int, tensor_parallel_size: int) -> list[dict]:
    """The environment of each of ``n`` vLLM engines: its shard, its GPU group, and a cache root of its own (engines
    starting at once in one ~/.cache/vllm race on its compile cache, vllm-project/vllm#24601)."""
    groups = gpu_groups(n, tensor_parallel_size) if hardware.gpus() else [None] * n
    cache = vllm_cache_root()
    return [{**os.environ, SHARD_ENV[0]: str(k), SHARD_ENV[1]: str(n), "PYTHONUNBUFFERED": "1",
             "VLLM_CACHE_ROOT": str(cache / f"shard{k}"),
             **({"CUDA_VISIBLE_DEVICES": groups[k]} if groups[k] else {})} for k in range(n)]


_vllm_cache: Path | None = None


def vllm_cache_root() -> Path:
    """A temporary folder of this process for its vLLM engines' cache roots: made once (an engine of the next
    benchmark reuses its shard's compiled graphs), removed when the process exits."""
    global _vllm_cache
    if _vllm_cache is None:
        _vllm_cache = Path(tempfile.mkdtemp(prefix="qalign-vllm-cache-"))
        atexit.register(shutil.rmtree, _vllm_cache, True)
    return _vllm_cache


def _accelerate(n: int, task: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_configs()["ddp"]),
            "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
            "-m", "qalign_lib.evaluation.sharding", str(task)]


def _hf_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not hardware.gpus():
        env["ACCELERATE_USE_CPU"] = "true"  # CPU processes (gloo); nothing is exchanged between them anyway
    return env


def _count(root: layout.EvalRoot, benchmark: str, langs) -> int:
    n = 0
    for lang in langs:
        for path in root.shard_files(benchmark, lang):
            try:
                n += path.read_bytes().count(b"\n")
            except OSError:
                pass
    return n


def _run(cmds: list[list[str]], log_path: Path, envs, total: int, progress, every: float = 30.0) -> None:
    """Run the commands at once (each in its own process group), their output into ``log_path``; stop all of them
    when one fails or when this process is interrupted."""
    envs = envs if isinstance(envs, list) else [envs] * len(cmds)
    for cmd in dict.fromkeys(map(tuple, cmds)):
        logger.info("$ %s", shlex.join(cmd))
    procs = []
    with open(log_path, "ab") as out:
        try:
            for cmd, env in zip(cmds, envs):
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            last = time.time()
            while any(p.poll() is None for p in procs):
                if any(p.returncode for p in procs if p.returncode is not None):
                    break
                time.sleep(0.5)
                if time.time() - last > every:
                    last = time.time()
                    logger.info("  %d / %d generated", progress(), total)
        except BaseException:
            stop_groups(procs)
            raise
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        stop_groups(procs)
        error = worker_error(log_path.read_text(encoding="utf-8", errors="replace"))
        raise LaunchError(f"{error}\n[generation worker failed: exit code {failed[0]}; full log: {log_path}; "
                          "rerun to resume: finished batches are kept]")


def rank() -> tuple[int, int]:
    """(shard, shards) of this worker: QALIGN_SHARD/QALIGN_SHARDS, else accelerate's RANK/WORLD_SIZE, else (0, 1)."""
    for r, w in (SHARD_ENV, ("RANK", "WORLD_SIZE")):
        if os.environ.get(r) is not None and os.environ.get(w) is not None:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


def worker(task_path: str | Path) -> int:
    """Generate this worker's shard of a task file; returns the rows appended."""
    task = json.loads(Path(task_path).read_text(encoding="utf-8"))
    k, n = rank()
    if n != len(task["shards"]):
        raise ConfigError(f"{task_path}: {len(task['shards'])} shards, but this worker is {k} of {n}")
    if task["engine"] == "hf" and os.environ.get("LOCAL_RANK") is not None and hardware.cuda():
        import torch

        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    root = layout.EvalRoot(Path(task["root"]), task["model"])
    items = task["shards"][k]
    if not items:
        return 0
    bench = task["benchmark"]
    logger.info("%s shard %d/%d: %d questions with %s", bench, k, n, len(items), task["engine"])
    engine = engines.load(task["engine"], task["model"], task["dtype"], task["tensor_parallel_size"],
                          task["vllm_chunk"], task["vllm_eager"], task.get("vllm_kv_cache_gib"))
    return generation.generate_to_files(engine, items, lambda lang: root.shard_generations(bench, lang, k),
                                        task["max_new_tokens"], task["batch_size"], task["token_budget"],
                                        desc=f"{bench} shard {k}/{n}")


if __name__ == "__main__":
    log.setup(os.environ.get("QALIGN_LOG_LEVEL", "INFO"))
    worker(sys.argv[1])
