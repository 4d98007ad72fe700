"""The real notebooks, executed headlessly through papermill on a random tiny LLaMA."""
import json
import shutil
import subprocess
import sys

import nbformat
import papermill as pm
import pytest
import torch
import yaml

from qalign_lib import config, runner, study as studies
from tests.conftest import ROOT
from tests.helpers import tiny_llama

NOTEBOOKS = ["stage1", "stage2", "evaluate", "report", "benchmark"]


@pytest.fixture
def tiny_params(tmp_path, monkeypatch, real_data):
    """A params/ copy whose tiny size is a random tiny LLaMA with minute subsets."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    cfg = yaml.safe_load((params / "tiny.yaml").read_text())
    cfg.update(model=str(tiny_llama(tmp_path / "model")), stage1_limit=2, stage2_limit=4, batch_size=4,
               per_device_batch_size=4, max_length=512, eval_limit=2, max_new_tokens={"mgsm": 8, "msvamp": 8},
               eval_langs=["sw", "de", "en"], stage1_langs=["sw", "de"])
    (params / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("QALIGN_PARAMS_DIR", str(params))
    return params


def run_nb(name, tmp_path, **parameters):
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=parameters, kernel_name="python3",
                        progress_bar=False, cwd=str(ROOT))
    return nbformat.read(out, as_version=4)


def test_notebooks_are_committed_clean_and_generated():
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name
    # the committed notebooks are exactly what tools/make_notebooks.py writes
    before = {n: (ROOT / "notebooks" / f"{n}.ipynb").read_text() for n in NOTEBOOKS}
    subprocess.run([sys.executable, "tools/make_notebooks.py"], cwd=ROOT, check=True, capture_output=True)
    assert {n: (ROOT / "notebooks" / f"{n}.ipynb").read_text() for n in NOTEBOOKS} == before


def test_stage_notebooks_through_papermill(tiny_params, tmp_path):
    nb = run_nb("stage1", tmp_path, size="tiny", task="x2en_question", langs="sw,de", epochs=2)
    assert any("last loss" in str(o) for c in nb.cells for o in c.get("outputs", []))
    run = config.runs_dir() / "tiny" / "stage1-x2en_question"
    assert json.loads((run / "run.json").read_text())["config"]["epochs"] == 2  # papermill override reached the run
    run_nb("stage2", tmp_path, size="tiny", init="stage1-x2en_question", data="gsm8k", run_name="qalign")
    assert (config.runs_dir() / "tiny" / "qalign" / "model" / "model.safetensors").is_file()
    nb = run_nb("evaluate", tmp_path, size="tiny", run="qalign", benchmarks="mgsm", limit=1)
    metrics = json.loads((config.runs_dir() / "tiny" / "qalign" / "eval" / "metrics.json").read_text())
    assert metrics["mgsm"]["reference"]["n"] == {"sw": 1, "de": 1, "en": 1}
    assert any("reference scorer" in str(o) for c in nb.cells for o in c.get("outputs", []))


def test_study_chain_and_report_through_papermill(tiny_params, tmp_path, capsys):
    assert runner.run_study("tiny") == 0
    out = capsys.readouterr().out
    assert "7 steps run" in out
    s = studies.load("tiny")
    for name in ("s1-x2en_question", "monoreason", "qalign-monoreason"):
        assert (config.runs_dir() / "tiny" / name / "DONE").is_file()
    figures = config.figures_dir() / "tiny"
    for f in ("table2_mgsm.csv", "table2_mgsm.md", "table2_mgsm.png", "table3_msvamp.csv", "accuracy_mgsm.png",
              "figure3_consistency.png", "figure3_consistency.csv", "paired_mgsm.md", "paper_vs_us.md", "README.md"):
        assert (figures / f).is_file(), f
    table = (figures / "table2_mgsm.md").read_text()
    assert s.caption.split(".")[0] in table and "QAlign+MonoReason" in table and "Avg" in table
    assert (config.runs_dir() / "tiny" / "notebooks").is_dir()
    # a second run does nothing but the report
    assert runner.run_study("tiny") == 0
    assert "1 steps run, 6 already complete" in capsys.readouterr().out


def test_big_size_stops_early_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("stage1", tmp_path, size="13b")
    assert e.value.ename == "ModelError" and "needs a CUDA GPU" in e.value.evalue and "-p size tiny" in e.value.evalue


def test_study_cli_dry_run_and_missing_data(real_data, capsys):
    from qalign_lib.cli import main

    assert main(["study", "--study", "offline", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "multireason" in out and "skip" in out and "missing data: gsm8kinstruct [bn]" in out
    assert "depends on qalign-gsm8kinstruct, which is skipped" in out
    assert main(["study", "--study", "paper", "--only", "QAlign+MonoReason", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s1-x2en_question" in out and "qalign-monoreason" in out and "sft-gsm8k" not in out
    assert main(["study", "--study", "nope", "--dry-run"]) == 2
