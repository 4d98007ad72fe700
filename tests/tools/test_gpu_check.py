"""tools/gpu_check.py on a CPU: the device call it prints, the carried wheels and size, the comparisons, and the
``run`` half without CUDA (every GPU part SKIP with its reason, one results file written atomically after each part).
The GPU parts themselves run on a GPU machine only (``make gpu-check``, then the printed device call)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from qalign_lib.core import versions
from qalign_lib.core.errors import ConfigError
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_call_fits_the_tool(gc):
    plan = gc.plan()
    assert len(plan["command"]) < 2000
    assert plan["carry"] == [".whl", ".gpu_check"] and len(plan["carry"]) <= 8
    assert gc.TOTAL_S + 30 <= plan["timeout_s"] <= 480  # the run, the wheel install; the 8 minutes
    assert "--no-index --no-deps" in plan["command"] and ".whl/*.whl" in plan["command"]
    assert "PYTHONPATH=/tmp/site:$PWD" in plan["command"] and "tools/gpu_check.py run" in plan["command"]
    assert set(plan["parts"]) == set(gc.PARTS)
    # every part's limit fits the run's total, and the GPU parts are those the issue names
    assert all(v["limit_s"] <= gc.TOTAL_S for v in plan["parts"].values())
    assert {k for k, v in plan["parts"].items() if v["needs_cuda"]} == {"train_single", "train_fsdp", "generate", "hidden"}


def test_carried_wheels_are_the_gpu_sets_pins(gc):
    gpu = versions.tested_set("gpu")
    specs = gc.wheel_specs()
    assert {s.split("==")[0] for s in specs} == set(gc.WHEEL_NAMES)
    for spec in specs:
        name, version = spec.split("==")
        assert gpu[versions.normalize(name)] == version
    assert "transformers==5.19.0" in specs  # the tested transformers, not the machine's 5.17
    assert not {"torch", "vllm", "deepspeed", "pyarrow"} & set(gc.WHEEL_NAMES)  # the machine's, or too big / no wheel


def test_a_name_the_gpu_set_does_not_pin_is_an_error(gc, tmp_path):
    (tmp_path / "gpu.txt").write_text("trl==1.16.0\n")
    with pytest.raises(ConfigError, match="transformers"):
        gc.pinned(("trl", "transformers"), tmp_path / "gpu.txt")


def test_download_command_is_for_the_device_machines_python(gc, tmp_path):
    cmd = gc.download_command(["trl==1.16.0"], tmp_path)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "manylinux_2_28_x86_64" in cmd and cmd[-1] == "trl==1.16.0"


def test_check_wheels_finds_missing_other_and_duplicate_versions(gc, tmp_path):
    want = {"trl": "1.16.0", "transformers": "5.19.0", "multiprocess": "0.70.19"}
    for name in ("trl-1.16.0-py3-none-any.whl", "transformers-5.19.0-py3-none-any.whl",
                 "multiprocess-0.70.19-py312-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert gc.check_wheels(tmp_path, want) == []
    (tmp_path / "trl-1.15.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "transformers-5.19.0-py3-none-any.whl").unlink()
    problems = gc.check_wheels(tmp_path, want)
    assert any(p.startswith("trl: 2 wheels") for p in problems)
    assert "transformers==5.19.0: no wheel" in problems


def test_what_travels_is_held_to_64_mib(gc, tmp_path):
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".gpu_check").mkdir()
    with open(tmp_path / ".whl" / "a.whl", "wb") as f:
        f.truncate(40 * gc.MiB)  # sparse: the size counts, nothing is written
    with open(tmp_path / ".gpu_check" / "model.safetensors", "wb") as f:
        f.truncate(20 * gc.MiB)
    size = gc.carried_size(tmp_path)
    assert size["carried_bytes"] == {".gpu_check": 20 * gc.MiB, ".whl": 40 * gc.MiB} and size["fits"]
    with open(tmp_path / ".whl" / "b.whl", "wb") as f:
        f.truncate(5 * gc.MiB)
    assert not gc.carried_size(tmp_path)["fits"]


def test_prepared_payload_fits_and_is_pinned(gc):
    """Where `make gpu-check` ran in this checkout: what it left travels within 64 MiB, with the pinned wheels."""
    if not (ROOT / gc.FOLDER / "reference.json").is_file() or not list((ROOT / gc.WHEELS).glob("*.whl")):
        pytest.skip("not prepared in this checkout (make gpu-check)")
    assert gc.carried_size()["fits"]
    assert gc.check_wheels(ROOT / gc.WHEELS, gc.pinned()) == []


def test_loss_comparison_holds_the_tolerances(gc):
    ref = [10.0, 8.0, 6.0]
    assert gc.compare_losses([10.05, 8.1, 6.1], ref, 1e-2, 3e-2, "x")["status"] == "PASS"
    assert gc.compare_losses([10.2, 8.0, 6.0], ref, 1e-2, 3e-2, "x")["status"] == "FAIL"  # first step 2e-2 > 1e-2
    assert gc.compare_losses([10.0, 8.0, 6.3], ref, 1e-2, 3e-2, "x")["status"] == "FAIL"  # last step 5e-2 > 3e-2
    assert gc.compare_losses([10.0, 8.0], ref, 1e-2, 3e-2, "x")["status"] == "FAIL"        # a step missing
    assert gc.compare_losses([10.0, float("nan"), 6.0], ref, 1e-2, 3e-2, "x")["status"] == "FAIL"


def test_text_and_cosine_comparisons(gc):
    assert gc.compare_texts(["a", "b"], ["a", "b"], 1.0, "x")["status"] == "PASS"
    bad = gc.compare_texts(["a", "bc"], ["a", "bd"], 1.0, "x")
    assert bad["status"] == "FAIL" and "prompt 1 differs after 1 characters" in bad["detail"]
    assert gc.compare_prefix(["abcd", "xy"], ["abcd", "zz"], 0.5, "x")["status"] == "PASS"   # (1 + 0) / 2
    assert gc.compare_prefix(["abzz", "xy"], ["abcd", "zz"], 0.5, "x")["status"] == "FAIL"   # (0.5 + 0) / 2
    assert gc.compare_cosines({"de/0/1": 0.5}, {"de/0/1": 0.50005}, 1e-4, "x")["status"] == "PASS"
    assert gc.compare_cosines({"de/0/1": 0.5}, {"de/0/1": 0.51}, 1e-4, "x")["status"] == "FAIL"
    assert gc.compare_cosines({"de/0/2": 0.5}, {"de/0/1": 0.5}, 1e-4, "x")["status"] == "FAIL"
    assert gc.combine([{"status": "SKIP"}, {"status": "PASS"}]) == "PASS"
    assert gc.combine([{"status": "PASS"}, {"status": "FAIL"}]) == "FAIL"


def _schema_ok(gc, doc: dict) -> None:
    assert doc["schema"] == gc.SCHEMA
    for key in ("started", "finished", "seconds", "status", "cuda", "stack", "tolerances", "limits_s", "parts"):
        assert key in doc
    for part in doc["parts"].values():
        assert part["status"] in ("PASS", "FAIL", "SKIP") and part["detail"] and "seconds" in part


def test_run_without_cuda_skips_the_gpu_parts_with_the_reason(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "cuda_available", lambda: False)
    results = tmp_path / "out" / "gpu_check.json"
    doc = gc.run(tmp_path / "missing-folder", results, parts=["versions", "train_single", "train_fsdp", "generate",
                                                              "hidden", "cpu_reference"], work=tmp_path / "work")
    on_disk = json.loads(results.read_text())
    assert on_disk == json.loads(json.dumps(doc))
    _schema_ok(gc, on_disk)
    parts = on_disk["parts"]
    for name in ("train_single", "train_fsdp", "generate", "hidden"):
        assert parts[name]["status"] == "SKIP" and parts[name]["detail"] == gc.NO_CUDA
    assert parts["cpu_reference"]["status"] == "SKIP" and "make gpu-check" in parts["cpu_reference"]["detail"]
    # the versions part ran for real (a subprocess): this venv has the GPU set's versions of the carried packages
    assert parts["versions"]["status"] == "PASS", parts["versions"]["detail"]
    assert parts["versions"]["installed"]["transformers"] == gc.pinned()["transformers"]
    assert on_disk["status"] == "PASS" and on_disk["cuda"] is False
    assert sorted(p.name for p in results.parent.iterdir()) == ["gpu_check.json", "gpu_check.log"]  # no temp files


def test_results_are_written_after_every_part(gc, tmp_path, monkeypatch):
    """A run cut short (a device call at its limit) leaves a valid results file with the parts done so far."""
    monkeypatch.setattr(gc, "cuda_available", lambda: True)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "reference.json").write_text(json.dumps({"model": {"note": "m"}, "meta": {}}))
    calls = []

    def fake_part(name, folder, work, limit, log_file):
        calls.append((name, limit))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the second part
        return {"status": "PASS", "detail": "ok", "seconds": 1.0}

    monkeypatch.setattr(gc, "run_part", fake_part)
    results = tmp_path / "gpu_check.json"
    with pytest.raises(KeyboardInterrupt):
        gc.run(tmp_path / "folder", results, parts=["train_single", "train_fsdp"], work=tmp_path / "work")
    doc = json.loads(results.read_text())
    _schema_ok(gc, doc)
    assert list(doc["parts"]) == ["train_single"] and doc["finished"] is None and doc["status"] is None
    assert calls[0] == ("train_single", gc.PARTS["train_single"][0])  # its own limit, within the total


def test_parts_share_the_total_and_an_unknown_part_is_an_error(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "cuda_available", lambda: False)
    doc = gc.run(tmp_path, tmp_path / "r.json", parts=["versions", "doctor"], total=0, work=tmp_path / "w")
    assert all(p["status"] == "SKIP" and "spent" in p["detail"] for p in doc["parts"].values())
    with pytest.raises(ConfigError, match="unknown part"):
        gc.run(tmp_path, tmp_path / "r.json", parts=["nope"])


def test_a_part_past_its_limit_is_killed_and_fails(gc, tmp_path):
    with open(tmp_path / "log", "w") as log_file:
        r = gc.run_part("versions", tmp_path, tmp_path, 0.01, log_file)
    assert r["status"] == "FAIL" and "no result within its limit" in r["detail"]


def test_cli_run_and_plan(gc, tmp_path, monkeypatch, capsys):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "run", "--parts", "nope"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: unknown part(s) nope")
    assert len(proc.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gc.default_results() == tmp_path / "gpu_check.json"
    monkeypatch.setattr(gc, "carried_size", lambda: {"total_bytes": 70 * gc.MiB, "fits": False})
    assert gc.main(["plan"]) == 1
    assert "over the 64 MiB limit" in capsys.readouterr().err
    monkeypatch.setattr(gc, "carried_size", lambda: {"total_bytes": 40 * gc.MiB, "fits": True})
    assert gc.main(["plan"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[:out.index("\n\n")])["command"] == gc.device_command()


@pytest.mark.slow
def test_prepare_then_run_on_a_cpu(gc, tmp_path, real_data, monkeypatch):
    """The prepare half (no wheels) into a temporary folder, then the run half here: the CPU re-run reproduces the
    references, and the GPU parts' own code (called directly: on a CPU, bf16 training is fp32) passes against them."""
    folder = tmp_path / "gpu_check"
    refs = gc.prepare(folder, None, real_data)
    losses = refs["train"]["losses"]
    assert len(losses) == gc.STEPS and losses[-1] < losses[0]
    assert len(set(refs["generate"]["outputs"])) == gc.PROMPTS  # distinct greedy outputs: padding and lengths matter
    assert refs["model"]["params"] < 8e6 and "not the embedded model" in refs["model"]["note"]
    monkeypatch.setattr(gc, "cuda_available", lambda: False)
    doc = gc.run(folder, tmp_path / "out" / "gpu_check.json", parts=["doctor", "cpu_reference"], work=tmp_path / "w")
    assert doc["parts"]["cpu_reference"]["status"] == "PASS", doc["parts"]["cpu_reference"]["detail"]
    assert doc["parts"]["doctor"]["status"] == "SKIP" and doc["parts"]["doctor"]["rows"]
    with open(tmp_path / "log", "w") as log_file:
        for name in ("train_single", "generate", "hidden"):
            r = gc.run_part(name, folder, tmp_path / "w2", 300, log_file)
            assert r["status"] == "PASS", (name, r["detail"])
