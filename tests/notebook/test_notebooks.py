"""The notebooks: committed as clean, editable sources whose parameters match the config schema; executed headlessly
through papermill (slow tier) on a random tiny LLaMA and synthetic data."""
import ast
import json

import nbformat
import papermill as pm
import pytest
import torch
import yaml

from qalign_lib.core import config, layout
from qalign_lib.study import runner
from tests.helpers import ROOT

# each notebook's own parameters (the rest of its parameters cell are config overrides, listed in OVERRIDES)
OWN = {
    "stage1": {"size", "task", "langs", "run_name"},
    "stage2": {"size", "init", "data", "langs", "run_name"},
    "evaluate": {"size", "run", "model", "benchmarks", "examples_per_lang"},
    "report": {"size", "study", "extra_models", "n_boot", "log_level"},
    "analyze": {"size", "run", "model", "examples_per_lang"},
    "benchmark": {"device", "models", "parts", "gen_engines", "repeats", "train_steps", "warmup_steps",
                  "train_batch_size", "max_length", "gen_per_lang", "max_new_tokens", "layers", "out_dir", "log_level"},
}


def _read(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _assigned(source: str) -> list[str]:
    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)]


def _overrides(nb) -> list[str]:
    """The OVERRIDES list a notebook's code computes (evaluated from its own assignment)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "OVERRIDES" for t in node.targets):
                return eval(compile(ast.Expression(node.value), "OVERRIDES", "eval"), {"config": config})
    return []


@pytest.mark.parametrize("name", sorted(OWN))
def test_notebook_is_a_clean_source_with_declared_parameters(name):
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: commit without outputs"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: the first code cell is the parameters cell"
    params_cell = code[0].source
    for line in params_cell.splitlines():  # papermill --help-notebook reads `name = value  # help`; '=' breaks it
        assert "=" not in line.partition("#")[2], f"{name}: '=' in a parameter comment: {line}"
    declared = _assigned(params_cell)
    assert len(declared) == len(set(declared)), f"{name}: a parameter is declared twice"
    overrides = _overrides(nb)
    assert all(k in config.schema() for k in overrides), f"{name}: OVERRIDES names an undeclared config key"
    assert set(declared) == OWN[name] | set(overrides), (
        f"{name}: parameters cell {sorted(set(declared) ^ (OWN[name] | set(overrides)))} differ from own + OVERRIDES")
    # a researcher reads what each cell does: every code cell after the parameters is introduced by a markdown cell
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[:2] == ["markdown", "code"], name
    assert all(kinds[i - 1] == "markdown" for i in range(2, len(kinds)) if kinds[i] == "code"), name


def test_stage_notebooks_take_every_training_parameter():
    training_keys = set(config.params(group=("model", "train", "launch", "run")))
    for name in ("stage1", "stage2"):
        assert training_keys <= set(_overrides(_read(name))), name


def run_nb(name, tmp_path, **parameters):
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=parameters, kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path))
    return nbformat.read(out, as_version=4)


def _outputs(nb) -> str:
    return json.dumps([o for c in nb.cells for o in c.get("outputs", [])])


@pytest.mark.slow
def test_stage_notebooks_through_papermill(tiny_params, tmp_path):
    nb = run_nb("stage1", tmp_path, size="tiny", task="x2en_question", langs="sw,de", epochs=2)
    out = _outputs(nb)
    assert "last loss" in out and "masked" in out and "image/png" in out  # summary, the example's mask, the loss curve
    run = layout.run("tiny", "stage1-x2en_question")
    assert json.loads(run.run_json.read_text())["config"]["epochs"] == 2  # the papermill override reached the run
    run_nb("stage2", tmp_path, size="tiny", init="stage1-x2en_question", data="gsm8k", run_name="qalign")
    assert (layout.run("tiny", "qalign").model / "model.safetensors").is_file()
    nb = run_nb("evaluate", tmp_path, size="tiny", run="qalign", benchmarks="mgsm", eval_limit=1)
    metrics = json.loads(layout.run("tiny", "qalign").eval.metrics.read_text())
    assert metrics["mgsm"]["reference"]["n"] == {"sw": 1, "de": 1, "en": 1}
    out = _outputs(nb)
    assert "reference scorer" in out and "strict pred" in out  # the metrics and the generations with both scorers


@pytest.mark.slow
def test_study_chain_and_report_through_papermill(tiny_params, tmp_path, capsys):
    from qalign_lib.core import log
    from qalign_lib.study import studies

    log.setup("INFO")
    assert runner.run_study("tiny") == 0
    out = capsys.readouterr().out
    assert "11 steps run" in out  # 3 trainings, 3 evaluations, 4 analyses, the report
    s = studies.load("tiny")
    for name in ("s1-x2en_question", "monoreason", "qalign-monoreason"):
        assert layout.run("tiny", name).is_done()
    figures = layout.report_dir("tiny")
    for f in ("table2_mgsm.csv", "table2_mgsm.md", "table2_mgsm.png", "table3_msvamp.csv", "accuracy_mgsm.png",
              "figure3_consistency.png", "figure3_consistency.csv", "paired_mgsm.md", "paper_vs_us.md", "README.md",
              "translation_mgsm.png", "representations_mgsm.png", "stage1_effects_mgsm.md", "stage1_effects_mgsm.png"):
        assert (figures / f).is_file(), f
    table = (figures / "table2_mgsm.md").read_text()
    assert s.caption.split(".")[0] in table and "QAlign+MonoReason" in table and "Avg" in table
    assert layout.notebooks_dir("tiny").is_dir()
    # a second run does nothing but the report
    assert runner.run_study("tiny") == 0
    assert "1 steps run, 10 already complete" in capsys.readouterr().out
    assert (figures / "README.md").read_text().split("\n\n")[1].startswith("**What stage 1 did**")
    # a changed learning rate: the plan compares fingerprints, so every run (and what follows) is todo again
    size = tiny_params / "sizes" / "tiny.yaml"
    declared = yaml.safe_load(size.read_text())
    declared["lr"] = 1.5 * declared.get("lr", config.schema()["lr"].default)
    size.write_text(yaml.safe_dump(declared))
    steps = {st.name: st.status for st in runner.plan(studies.load("tiny"))}
    assert steps["s1-x2en_question"] == steps["qalign-monoreason"] == steps["QAlign+MonoReason"] == "todo"


@pytest.mark.slow
def test_big_size_stops_early_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("stage1", tmp_path, size="13b")
    assert e.value.ename == "ModelError" and "needs a CUDA GPU" in e.value.evalue and "-p size tiny" in e.value.evalue


@pytest.mark.slow
def test_bad_override_stops_before_any_work(tmp_path, synthetic_data):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("stage1", tmp_path, size="tiny", epochs=-1)
    assert e.value.ename == "ConfigError" and "epochs=-1" in e.value.evalue and "out of range" in e.value.evalue
    assert not (layout.runs_dir() / "tiny").exists()
