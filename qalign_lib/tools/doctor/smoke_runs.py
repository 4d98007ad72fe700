"""The smoke's runs: a tiny random LLaMA trained with one launch config through the stages' own path (a run directory
as training.prepare writes it, ``accelerate launch`` or one process, training.fit and its trainer), measured in its
workers (peak memory, each checkpoint's bytes), saved and reloaded; and greedy generation with each engine.

``python -m qalign_lib.tools.doctor.smoke_runs RUN_DIR`` (with $QALIGN_DOCTOR_MEASURE set) is the measured training
worker, ``... vllm SPEC.json`` the vLLM generation; both are internal (run ``qalign doctor``)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from qalign_lib.core import config, hardware, log
from qalign_lib.core.errors import QAlignError
from qalign_lib.tools.doctor.launch_checks import free_port
from qalign_lib.tools.doctor.machine import Node, environ
from qalign_lib.train import training


SMOKE_STEPS = 4
PROMPTS = 6


def _examples(n: int, seed: int = 0) -> list[dict]:
    from qalign_lib.data import prompts

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append({"prompt": prompts.alpaca(f"What is {a} plus {b}?"), "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    return out


def build_model(work: Path) -> Path:
    """The smoke's tiny random LLaMA (head dim 64 as real models, so every attention kernel takes it), with its
    output layer scaled up so that greedy choices are clear-cut (engines must agree, not break near-ties)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qalign_lib.models import modeling

    corpus = [e["prompt"] + e["completion"] for e in _examples(64, seed=1)] * 4
    path = modeling.tiny_random_llama(work / "tiny-llama", corpus, vocab_size=512, hidden=128, layers=2, heads=2, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(path)
    return path


def _prepare(work: Path, name: str, cfg: config.Config, model: Path, examples: list[dict]) -> Path:
    """A run directory as training.prepare writes it (training.write_inputs), for the smoke's own examples (no data
    directory needed)."""
    return training.write_inputs(work / "runs" / name, cfg, {
        "name": name, "stage": 1, "tasks": ["doctor-smoke"], "langs": ["en"], "init": "base", "init_model": str(model),
        "fingerprint": f"doctor-{name}", "n_examples": len(examples), "examples": examples})


def smoke_cfg(model: Path, launch: str, processes: int, world: int, gpu: bool) -> config.Config:
    """The same effective batch for every config (all examples in each optimizer step, loss over all their tokens),
    so that the loss after N steps must agree whatever the split over processes and accumulation steps."""
    return config.resolve("tiny", model=str(model), launch=launch, num_processes=processes, num_machines=1,
                          dtype="bfloat16" if gpu else "float32", lr=1e-3, epochs=SMOKE_STEPS, batch_size=4 * world,
                          per_device_batch_size=4, loss_reduction="token", scheduler="constant", warmup_ratio=0.0,
                          max_length=128, gradient_checkpointing=False, save_steps=SMOKE_STEPS // 2, report_to=["none"],
                          group_by_length=False, padding_free=False, liger=False).replace(lora_r=None)  # full fine-tuning


def own_peak_rss() -> int:
    """This process's own peak resident memory in bytes: VmHWM of /proc/self/status where there is one (Linux carries
    ru_maxrss across fork and exec, so a worker started by a large process would report its parent's peak), else
    ru_maxrss (KiB on Linux)."""
    import re
    import resource

    status = Path("/proc/self/status")
    m = re.search(r"VmHWM:\s+(\d+)", status.read_text()) if status.is_file() else None
    return int(m.group(1) if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


MEASURE_ENV = "QALIGN_DOCTOR_MEASURE"   # a folder: the smoke's workers write what they measured into it
WORKER = "qalign_lib.tools.doctor.smoke_runs"  # python -m WORKER RUN_DIR | vllm SPEC: this module's entry points


def _bytes_under(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file())


def _measuring_callback():
    """A TrainerCallback that records, on rank 0, the bytes of each checkpoint once it is written."""
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def __init__(self):
            self.saved = {}  # step -> bytes

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.saved[state.global_step] = _bytes_under(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return Measure()


def _train_main(run_dir: str) -> None:
    """``python -m qalign_lib.tools.doctor.smoke_runs RUN_DIR``: the smoke's training worker, :func:`training.fit`
    measured: this process's peak resident memory (and peak GPU memory), and each checkpoint's bytes, into
    $QALIGN_DOCTOR_MEASURE."""
    import torch

    log.setup(os.environ.get("QALIGN_LOG_LEVEL", "INFO"))
    measure = _measuring_callback()
    training.fit(Path(run_dir), callbacks=[measure])
    rank = int(os.environ.get("RANK", "0"))
    result = {"rank": rank, "peak_rss": own_peak_rss(),
              "gpu_peak": torch.cuda.max_memory_reserved() if hardware.cuda() else None,
              "saved": measure.saved}
    out = Path(os.environ[MEASURE_ENV])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def _measured(folder: Path, run: Path) -> dict:
    """What the workers of one smoke config measured: peak memory (largest process, sum over the node's processes),
    the last checkpoint's bytes and the final model's weights."""
    from qalign_lib.core import layout

    ranks = [json.loads(f.read_text()) for f in sorted(Path(folder).glob("rank*.json"))]
    if not ranks:
        return {}
    ckpts = {int(k): v for r in ranks for k, v in r["saved"].items()}
    gpu = [r["gpu_peak"] for r in ranks if r.get("gpu_peak")]
    return {"peak_rss": max(r["peak_rss"] for r in ranks), "node_rss": sum(r["peak_rss"] for r in ranks),
            "gpu_peak": max(gpu) if gpu else None, "checkpoint": ckpts[max(ckpts)] if ckpts else None,
            "model": _bytes_under(layout.RunDir(run).model, "*.safetensors")}


def _train_measured(cfg: config.Config, run: Path, measure: Path) -> None:
    """Train through the measured worker: ``accelerate launch`` as the study does, or for ``single`` one subprocess
    (the study trains single in the notebook's own process, whose peak memory says nothing about training)."""
    import subprocess
    import sys

    from qalign_lib.core import layout
    from qalign_lib.train import launch as launcher

    with environ(**{MEASURE_ENV: str(measure)}):
        if cfg.launch != "single":
            launcher.launch(cfg, run, module=WORKER)
            return
        proc = subprocess.run([sys.executable, "-m", WORKER, str(run)], capture_output=True, text=True)
        if proc.returncode:
            log_path = layout.RunDir(Path(run)).launch_log(0)
            log_path.write_text(proc.stdout + proc.stderr)
            raise QAlignError(f"{launcher.worker_error(proc.stdout + proc.stderr)} [exit code {proc.returncode}; "
                              f"full log: {log_path}]")


def train_config(work: Path, launch: str, processes: int, world: int, node: Node, model: Path, log_file) -> dict:
    """Train (checkpoints included), save and reload one launch config, measuring memory and bytes written; returns
    {"losses", "seconds", "run", "measured", "error"?}."""
    from qalign_lib.core import layout
    from qalign_lib.models import modeling

    cfg = smoke_cfg(model, launch, processes, world, node.has_gpu)
    name = f"{launch}-{processes}"
    run = _prepare(work, name, cfg, model, _examples(4 * world))
    env = {"MACHINE_RANK": None, "MAIN_PROCESS_IP": None, "MAIN_PROCESS_PORT": free_port(),
           "TOKENIZERS_PARALLELISM": "false", "QALIGN_LOG_LEVEL": "WARNING",
           "ACCELERATE_USE_CPU": "true" if not node.has_gpu and launch == "ddp" else None}
    if not node.has_gpu:
        env["OMP_NUM_THREADS"] = "1" if processes > 1 else None
    start = time.perf_counter()
    out = {"run": str(run), "launch": launch, "processes": processes}
    measure = work / "measured" / name
    shutil.rmtree(measure, ignore_errors=True)
    try:
        with environ(**env), contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            _train_measured(cfg, run, measure)
            out["losses"] = [r["loss"] for r in training.read_log(run)]
            if not layout.RunDir(run).is_done():
                raise QAlignError(f"{run}: no DONE after training")
            out["measured"] = _measured(measure, run)
            trained = modeling.load_model(str(run), "float32")
            base = modeling.load_model(str(model), "float32")
        changed = False
        import torch

        for (k, a), b in zip(trained.state_dict().items(), base.state_dict().values()):
            if not torch.isfinite(a).all():
                raise QAlignError(f"{run}/model: {k} has non-finite values after reload")
            changed |= a.shape == b.shape and not torch.equal(a, b)
        if not changed:
            raise QAlignError(f"{run}/model: the reloaded weights equal the initial ones (nothing was trained or saved)")
    except Exception as e:  # a smoke failure is a row, never a traceback
        out["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        out["error_full"] = str(e)
    out["seconds"] = time.perf_counter() - start
    return out


def hf_generate(model_dir: str, prompts: list[str], max_new_tokens: int, batch_size: int, dtype: str = "float32") -> list[str]:
    """Greedy responses with the project's hf engine (:mod:`qalign_lib.models.engines`: left-padded batches, by
    length)."""
    from qalign_lib.models import engines

    engine = engines.HF.load(model_dir, dtype)
    out = [""] * len(prompts)
    for batch in engine.generate(prompts, max_new_tokens, batch_size, desc="doctor"):
        for i, text, _ in batch:
            out[i] = text
    return out


def vllm_generate(model_dir: str, prompts: list[str], max_new_tokens: int, timeout: float = 600) -> dict:
    """Greedy responses with vLLM, in a subprocess of its own (its memory and any crash stay there):
    {"responses": [...], "dtype": ...} or {"error": ...}."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="qalign-vllm-") as tmp:
        spec = Path(tmp) / "in.json"
        spec.write_text(json.dumps({"model": model_dir, "prompts": prompts, "max_new_tokens": max_new_tokens}))
        try:
            proc = subprocess.run([sys.executable, "-m", WORKER, "vllm", str(spec)], capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {timeout:.0f} s"}
        result = Path(tmp) / "out.json"
        if proc.returncode or not result.is_file():
            tail = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-1:] or ["no output"]
            return {"error": f"exit code {proc.returncode}: {tail[0]}", "log": (proc.stdout + proc.stderr)[-20000:]}
        return json.loads(result.read_text())


def _vllm_main(spec_path: str) -> None:
    """``python -m qalign_lib.tools.doctor.smoke_runs vllm SPEC``: greedy generation with the project's vllm engine
    (:mod:`qalign_lib.models.engines`), float32 where vLLM's attention backend takes it, else bfloat16."""
    from qalign_lib.models import engines

    spec = json.loads(Path(spec_path).read_text())
    last = None
    for dtype in ("float32", "bfloat16"):
        try:
            engine = engines.VLLM(spec["model"], dtype, tensor_parallel_size=1, chunk=len(spec["prompts"]), eager=True)
        except Exception as e:  # noqa: BLE001 - e.g. an attention backend without float32: try bf16
            last = e
            continue
        out = [""] * len(spec["prompts"])
        for batch in engine.generate(spec["prompts"], spec["max_new_tokens"]):
            for i, text, _ in batch:
                out[i] = text
        Path(spec_path).with_name("out.json").write_text(json.dumps({"responses": out, "dtype": dtype}))
        return
    raise last  # type: ignore[misc]


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "vllm":
        _vllm_main(sys.argv[2])
    elif len(sys.argv) == 2 and os.environ.get(MEASURE_ENV):
        _train_main(sys.argv[1])
    else:
        raise SystemExit(f"usage: python -m {WORKER} vllm SPEC.json | RUN_DIR (internal; run `qalign doctor`)")
