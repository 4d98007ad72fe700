"""The notebooks: committed as clean, editable sources whose parameters match the config schema and are checked
first; executed headlessly through papermill (slow tier) on a random tiny LLaMA and synthetic data: the stages, the
study, the report, and bad parameters refused before any work."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
import torch
import yaml

from qalign_lib.core import benchmarks, config, layout
from qalign_lib.study import runner, studies
from tests.helpers import ROOT, fake_system, nothing_under

# each notebook's own parameters (the rest of its parameters cell are config overrides, listed in OVERRIDES)
OWN = {
    "stage1": {"size", "task", "langs", "run_name"},
    "stage2": {"size", "init", "stage2_data", "langs", "run_name"},
    "evaluate": {"size", "run", "model", "benchmarks", "examples_per_lang"},
    "report": {"size", "study", "extra_models", "n_boot", "log_level"},
    "analyze": {"size", "run", "model", "examples_per_lang"},
    "benchmark": {"device", "models", "parts", "gen_engines", "repeats", "train_steps", "warmup_steps",
                  "train_batch_size", "max_length", "gen_per_lang", "max_new_tokens", "layers", "out_dir", "log_level"},
}


def _read(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _assigned(source: str) -> list[str]:
    return [t.id for node in ast.parse(source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def _annotated(source: str) -> set[str]:
    return {node.target.id for node in ast.parse(source).body if isinstance(node, ast.AnnAssign)}


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
    # the notebook's own parameters carry their type (checked by parameters.check_parameters); config overrides do not
    # (config.resolve checks them against their declaration)
    assert _annotated(params_cell) == OWN[name], f"{name}: annotated {sorted(_annotated(params_cell) ^ OWN[name])}"
    # papermill's own inspection (--help-notebook) still lists every parameter, annotated or not
    assert list(pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))) == declared, name
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
    run = layout.run("tiny", "s1-x2en_question")
    assert json.loads(run.run_json.read_text())["config"]["epochs"] == 2  # the papermill override reached the run
    run_nb("stage2", tmp_path, size="tiny", init="s1-x2en_question", stage2_data="gsm8k", run_name="qalign")
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
    assert "9 steps run" in out  # 3 trainings, 3 evaluations, 2 analyses (base, stage 1), the report
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
    # a second run does nothing: the report, too, was made from the same results, study, size and code
    assert runner.run_study("tiny") == 0
    assert "0 steps run, 9 already complete" in capsys.readouterr().out
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


# ----------------------------------------------------------------------------------------------------------------
# Every notebook checks its parameters first; bad ones stop the first code cell with a ConfigError (slow)


def test_every_notebook_checks_its_parameters_first():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        first = code[1].source  # the first code cell after the parameters cell
        assert "check_parameters()" in first, f"{path.name}: its first code cell does not check the parameters"
        before = first.split("check_parameters()")[0]
        assert "resolve(" not in before and "load(" not in before, f"{path.name}: parameters checked after use"


def _victim(tmp_path) -> Path:
    victim = tmp_path / "victim"  # runs/tiny/../../victim
    (victim / "model").mkdir(parents=True)
    (victim / "model" / "model.safetensors").write_bytes(b"precious")
    return victim


STAGE1_BAD = {  # id: (parameters, what the message must contain)
    "run_name=../../victim": ({"run_name": "../../victim"}, ["run_name", "victim"]),
    "run_name=absolute": ({"run_name": "{tmp}/elsewhere"}, ["run_name", "elsewhere"]),
    "batch_size=0": ({"batch_size": 0}, ["batch_size=0", "out of range"]),
    "epochs=-1": ({"epochs": -1}, ["epochs=-1", "out of range"]),
    "epoch=1 (misspelled)": ({"epoch": 1}, ["'epoch'", "epochs"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STAGE1_BAD))
def test_stage1_notebook_refuses_bad_parameters_before_any_work(tiny_params, tmp_path, case):
    parameters, expected = STAGE1_BAD[case]
    parameters = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in parameters.items()}
    victim = _victim(tmp_path)
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("stage1", tmp_path, size="tiny", **parameters)
    assert e.value.ename == "ConfigError", (e.value.ename, e.value.evalue)
    assert all(x in e.value.evalue for x in expected), e.value.evalue
    assert nothing_under(layout.runs_dir()) and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in victim.rglob("*")) == ["model", "model.safetensors"]
    assert (victim / "model" / "model.safetensors").read_bytes() == b"precious"


EVALUATE_BAD = {
    "eval_limt=1 (misspelled)": ({"eval_limt": 1}, [r"'eval_limt'", r"'eval_limit'"]),
    "limit=abc (no such parameter)": ({"limit": "abc"}, [r"(?<!\w)limit(?!\w)"]),
    "eval_limit=abc": ({"eval_limit": "abc"}, [r"eval_limit='abc'"]),
    "eval_limit=0": ({"eval_limit": 0}, [r"eval_limit=0\b", "out of range"]),
    "eval_batch_size=0": ({"eval_batch_size": 0}, [r"eval_batch_size=0\b", "out of range"]),
    "model=''": ({"model": ""}, ["model"]),
    "benchmarks=gsm8k": ({"benchmarks": "gsm8k"}, ["gsm8k"]),
    "run=../../victim": ({"run": "../../victim"}, [r"\.\./\.\./victim"]),
    "model=5": ({"model": 5}, [r"^parameter model=5: expected Optional\[str\] .*; e\.g\. -p model \S+ \(or -r model 5 for the text '5'\)$"]),
    "examples_per_lang=abc": ({"examples_per_lang": "abc"},
                              [r"^parameter examples_per_lang='abc': expected NonNegativeInt .*; e\.g\. -p examples_per_lang 2$"]),
    "benchmarks=5": ({"benchmarks": 5}, [r"^parameter benchmarks=5: expected NameList"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EVALUATE_BAD))
def test_evaluate_notebook_refuses_bad_parameters_before_any_work(tiny_params, tmp_path, case):
    parameters, expected = EVALUATE_BAD[case]
    victim = _victim(tmp_path)
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("evaluate", tmp_path, size="tiny", **parameters)
    assert e.value.ename == "ConfigError", (e.value.ename, e.value.evalue)
    assert all(re.search(x, e.value.evalue) for x in expected), e.value.evalue
    assert nothing_under(layout.runs_dir()) and not (victim / "eval").exists()


# ----------------------------------------------------------------------------------------------------------------
# The report notebook on fake systems (slow)


@pytest.mark.slow
def test_report_notebook_on_synthetic_results(synthetic_data, params_copy, tmp_path):
    with (params_copy / "sizes" / "7b.yaml").open("a") as f:
        f.write("eval_limit: 10\n")
    s = studies.load("paper", size="7b")
    assert s.cfg.eval_limit == 10
    mgsm, msvamp = benchmarks.get("mgsm"), benchmarks.get("msvamp")
    skip = {"Stage 1: En->X responses"}  # one system without results: reported as absent
    k = {system: 2 + n % 7 for n, system in enumerate(s.systems)}  # 2..8 of 10 right in every averaged language
    for system, run in s.systems.items():
        if system not in skip:  # the extra language: 10 - k right, so it would move the average if it were in it
            fake_system(s.cfg, run, {"mgsm": {**{lang: k[system] for lang in mgsm.averaged}, **{lang: 10 - k[system] for lang in mgsm.extra}},
                                      "msvamp": {lang: k[system] for lang in msvamp.langs}})
    out = tmp_path / "report.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "report.ipynb"), str(out), parameters={"size": "7b", "study": "paper", "n_boot": 2000},
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    fig = layout.report_dir("7b")
    table = pd.read_csv(fig / "table2_mgsm.csv", index_col=0)
    main = s.groups["main"]
    expected = {system: 10.0 * k[system] for system in main}
    assert list(table.index) == main
    assert table["Avg"].to_dict() == pytest.approx(expected)
    assert table["te"].to_dict() == pytest.approx({x: 100 - v for x, v in expected.items()})
    assert list(table.columns) == list(mgsm.langs) + ["Avg", "Avg non-En"]
    ci = pd.read_csv(fig / "table2_mgsm_ci.csv")
    assert ((ci["lo"] <= ci["acc"]) & (ci["acc"] <= ci["hi"])).all() and len(ci) == len(main) * (len(mgsm.langs) + 2)
    assert len(pd.read_csv(fig / "table3_msvamp_ci.csv")) == len(main) * (len(msvamp.langs) + 2)
    ablation = pd.read_csv(fig / "table4_ablation.csv", index_col=0)
    assert list(ablation.index) == [x for x in s.groups["ablation"] if x not in skip]
    assert ablation.loc["Stage 1: FLORES X->En", f"{mgsm.display} acc"] == pytest.approx(10.0 * k["Stage 1: FLORES X->En"])
    assert "- Stage 1: En->X responses: run 'ablation-en2x_response'" in (fig / "table4_ablation.md").read_text()
    assert "En->X responses" not in (fig / "table2_mgsm.md").read_text()
    mixed = pd.read_csv(fig / "figure2_mixed.csv")
    assert len(mixed) == 2 * len(s.groups["mixed"])
    pvu = pd.read_csv(fig / "paper_vs_us.csv", index_col=0)
    assert pvu.loc["QAlign+MonoReason", f"paper {mgsm.display}"] == 49.6 and pvu.loc["MultiReason", f"paper {msvamp.display}"] == 44.1
    assert pvu.loc["QAlign+MonoReason", f"ours {mgsm.display}, our recipe"].startswith(f"{expected['QAlign+MonoReason']:.1f} [")
    assert pvu.loc["MonoReason", "paper number measures"].startswith("released MetaMath checkpoint")
    paired = pd.read_csv(fig / "paired_mgsm.csv", index_col=0)
    diff = expected["QAlign+MonoReason"] - expected["MonoReason"]
    assert paired["diff"].tolist() == pytest.approx([diff] * len(mgsm.averaged) + [-diff] * len(mgsm.extra))
    consistency = pd.read_csv(fig / "figure3_consistency.csv")
    same = consistency[~consistency["lang"].isin(mgsm.extra)]
    assert len(same) == 2 * (len(mgsm.averaged) - 1 + len(msvamp.langs) - 1) and (same["jaccard"] == 100.0).all()
    assert not consistency["lang"].isin(mgsm.extra).any()  # Figure 3: the ten languages only (no Telugu)
    for f in ("table2_mgsm.png", "table3_msvamp.png", "figure2_mixed.png", "figure3_consistency.png", "accuracy_mgsm.png",
              "accuracy_msvamp.png", "README.md"):
        assert (fig / f).is_file(), f
    nb = json.loads(out.read_text())
    shown = {c["id"]: json.dumps(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code"}
    assert "- Stage 1: En->X responses: run 'ablation-en2x_response'" in shown["collect"]
    assert "Avg non-En" in shown["tables"] and "image/png" in shown["write"]
