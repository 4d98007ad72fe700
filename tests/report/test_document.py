"""The written report (qalign_lib.report.document) from fake systems on the synthetic data: published
checkpoints as rows, the analyses first, the versions the jobs ran with (through the report notebook:
tests/notebook/test_notebooks.py)."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from qalign_lib.analysis import effects as analysis_effects
from qalign_lib.analysis import mt_metrics, representations
from qalign_lib.core import benchmarks, layout
from qalign_lib.core.files import write_json
from qalign_lib.report import document
from qalign_lib.study import runner, studies
from tests.helpers import BASE_STUDY, ROOT, fake_analysis, fake_system, write_study


def test_published_checkpoint_row_joins_the_report(synthetic_data):
    s = studies.load("tiny")
    model = "Wenhao97/QAlign-MetaMathQA-7B"
    root = fake_system(s.cfg, f"model:{model}",
                        {b: {lang: s.cfg.eval_limit for lang in s.cfg.eval_langs if lang in benchmarks.get(b).langs}
                         for b in s.benchmarks})
    assert root == layout.eval_root(s.size, "", model=model)
    written = document.write_report(s, extra_models=[model], n_boot=500)
    out = layout.report_dir(s.size)
    name = f"{benchmarks.get('mgsm').table.lower().replace(' ', '')}_mgsm"
    table = pd.read_csv(out / f"{name}.csv", index_col=0)
    assert list(table.index) == [f"model: {model}"] and table.loc[f"model: {model}", "Avg"] == 100.0
    md = (out / f"{name}.md").read_text()
    assert s.caption.split(".")[0] in md and "- Base: not evaluated (" in md and "- MonoReason: run 'monoreason'" in md
    assert written[name] == out / f"{name}.md" and written[f"{name}_png"] == out / f"{name}.png"
    assert (out / f"{name}.png").stat().st_size > 0
    # the consistency pair has no results: paired tests say so, Figure 3 is not drawn
    assert "_no results_" in (out / "paired_mgsm.md").read_text()
    assert "figure3_consistency" not in written and not (out / "figure3_consistency.png").exists()
    index = (out / "README.md").read_text()
    assert f"`{name}.md`" in index and "- QAlign+MonoReason: run 'qalign-monoreason'" in index
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]  # no temporary file left behind
    assert not (out / "INCOMPLETE.md").exists()  # written whole


def test_report_writes_the_analyses_and_opens_with_the_effects(params_copy, synthetic_data, tmp_path):
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")
    s = studies.load("x")
    found = {"Base": fake_analysis(0.0, 0.4), "S1": fake_analysis(1.0, 0.8)}
    out = tmp_path / "report"
    written = document.write_report(s, out, n_boot=200, collected=({}, {}), analyses=(found, {}))
    for name in ("translation_mgsm", "representations_mgsm", "representations_mgsm_langs", "stage1_effects_mgsm",
                 "translation_mgsm_png", "representations_mgsm_png", "representations_mgsm_langs_png",
                 "stage1_effects_mgsm_png", "stage1_layers_mgsm", "stage1_layers_mgsm_png"):
        assert name in written and written[name].is_file(), name
    readme = (out / "README.md").read_text().splitlines()
    first = _lead(readme)
    assert first.startswith("**What stage 1 did**") and "\n- **S1 - Base**: chrF +" in first and "excludes zero" not in first
    m = 2 + len(analysis_effects.PRIMARY)  # one pair x the primary measures
    assert f"Holm-adjusted p = {min(1, m * 2 / 64):.3f} (family of {m})" in first and "one training run per system" in first
    # a bare pair declares no reading: the bullet has its numbers and verdict, no "tests" or "does not show"
    assert "**Verdict**: " in first and "(tests: " not in first and "**Does not show**" not in first
    top = "\n".join(readme[:12])
    assert "![Translation of mGSM questions" in top and "translation_mgsm.png" in top and "stage1_effects_mgsm.png" in top
    effects = pd.read_csv(out / "stage1_effects_mgsm.csv")
    assert set(effects["measure"]) == set(mt_metrics.METRICS) | set(representations.MEASURES)
    assert {"p", "p_adj", "family", "mde", "verdict"} <= set(effects.columns)
    caption = (out / "stage1_effects_mgsm.md").read_text().split("\n")[0]
    assert f"= {m} tests, Holm-adjusted" in caption and "Size tiny: one training run per system" in caption
    langs = pd.read_csv(out / "representations_mgsm_langs.csv")
    assert set(langs["layers"]) == {2}  # layers 1..2 of the fixture's 0..2: the embeddings left out
    layers = pd.read_csv(out / "stage1_layers_mgsm.csv")
    assert sorted(set(layers["layer"])) == [1, 2] and set(layers["measure"]) == set(analysis_effects.PRIMARY)


def _lead(readme: list[str]) -> str:
    """The README's lead: the first paragraph and the bullets of its effects, up to the first figure."""
    start = next(i for i, line in enumerate(readme) if i and line.strip())
    end = next(i for i, line in enumerate(readme) if line.startswith("!["))
    return "\n".join(line for line in readme[start:end] if line.strip())


def test_each_declared_effect_is_printed_with_what_it_tests_its_verdict_and_what_it_does_not_show(
        params_copy, synthetic_data, tmp_path):
    """Issue 19: a claim names its measure, adjusted p and what it does not show. The reading is declared in the study
    file beside the pair; the verdict is computed from the primary family, never written by hand."""
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n"
                "    - compare: [Base, S1]\n      tests: whether S1 translates\n"
                "      not_shown: reasoning accuracy, which nothing here measures\n")
    found = {"Base": fake_analysis(0.0, 0.4), "S1": fake_analysis(1.0, 0.8)}
    out = tmp_path / "report"
    document.write_report(studies.load("x"), out, n_boot=200, collected=({}, {}), analyses=(found, {}))
    lead = _lead((out / "README.md").read_text().splitlines())
    bullet = next(line for line in lead.splitlines() if line.startswith("- **S1 - Base**"))
    assert bullet.startswith("- **S1 - Base** (tests: whether S1 translates): chrF +")
    table = pd.read_csv(out / "stage1_effects_mgsm.csv")
    assert bullet.split("**Verdict**: ")[1].split(". **Does not show**")[0] == analysis_effects.verdict(table, "Base", "S1")
    assert bullet.endswith("**Does not show**: reasoning accuracy, which nothing here measures.")
    assert "what each effect tests and does not show is declared in the study file" in lead.splitlines()[0]


def test_one_analysis_language_opens_the_report_with_its_effects(params_copy, synthetic_data, tmp_path):
    """Issue 21 case 13: with a single analysis language the README's first paragraph names the language, the
    questions, each measure with its estimate and adjusted p; no empty phrase."""
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")

    def only_de(part):
        m = part["mgsm"]
        pq = m["representations"]
        return {"mgsm": {"translation": {"de": m["translation"]["de"]}, "representations": pq[pq["lang"] == "de"]}}

    found = {"Base": only_de(fake_analysis(0.0, 0.4)), "S1": only_de(fake_analysis(1.0, 0.8))}
    out = tmp_path / "report"
    document.write_report(studies.load("x"), out, n_boot=200, collected=({}, {}), analyses=(found, {}))
    readme = (out / "README.md").read_text().splitlines()
    first = _lead(readme)
    m = len(analysis_effects.primary_measures())
    assert first.startswith("**What stage 1 did** (mGSM, size tiny, 1 language: de; questions per language, "
                            "translation: 6, representations: 6; differences b - a on its one language with 95% "), first
    assert f"= {m} tests, Holm-adjusted" in first
    assert f"- **S1 - Base**: chrF +97.7 [+97.7, +97.7], Holm-adjusted p = {min(1, m * 2 / 64):.3f} (family of {m})" in first
    text = first.replace("**S1 - Base**: chrF", "X").replace("**Verdict**: ", "")
    for fragment in ("()", ", ;", ": .", ";;", ", ,", "**: ", "  "):
        at = text.find(fragment)
        assert at < 0, (fragment, text[max(0, at - 60):at + 30])


def test_the_report_prints_the_versions_its_jobs_ran_with(synthetic_data):
    s = studies.load("tiny")
    done = layout.run(s.size, "monoreason")
    done.model.mkdir(parents=True)
    (done.model / "config.json").write_text("{}")
    write_json(done.run_json, {"fingerprint": "x", "versions": {"torch": "2.13.0", "transformers": "5.23.0", "cuda": None}})
    done.done_marker.write_text("x\n")
    write_json(done.eval.metrics, {"versions": {"torch": "2.13.0", "transformers": "5.19.0", "cuda": "13.0"}})
    write_json(layout.eval_root(s.size, s.cfg.model, "base").metrics, {})  # from before versions were recorded: left out
    recorded = document.recorded_versions(s)
    assert set(recorded) == {"training monoreason", "evaluation MonoReason"}
    table = document.versions_table(recorded)
    assert "| torch | 2.13.0 |" in table
    assert "| transformers | 5.23.0 (training monoreason); 5.19.0 (evaluation MonoReason) |" in table
    assert "| cuda | — (training monoreason); 13.0 (evaluation MonoReason) |" in table
    document.write_report(s, n_boot=100)
    index = (layout.report_dir(s.size) / "README.md").read_text()
    assert "## Software" in index and table in index
    assert "_no versions recorded" in document.versions_table({})


def test_seeds_and_attainable_notes():
    from types import SimpleNamespace

    def part(k):
        return {"translation": {}, "replicates": [{}] * k}
    ctx = SimpleNamespace(analyses={"A": {"mgsm": part(1)}, "B": {"mgsm": part(1)}}, study=SimpleNamespace(effects=[("A", "B")]))
    assert document.seeds_note(ctx, "mgsm").startswith("one training run per system (no seeds)")
    ctx.analyses["B"]["mgsm"] = part(3)
    assert document.seeds_note(ctx, "mgsm").startswith("training runs per system: A 1, B 3;")
    table = pd.DataFrame({"family": ["primary"] * 8, "n": [6] * 4 + [20] * 4})
    assert "smallest attainable p is 2 / 2^6 = 0.031, above 0.05 / 8" in document.attainable_note(table)
    assert document.attainable_note(table.assign(n=20)) == ""  # 2^20 swaps: Monte Carlo, p can reach 1e-4
    assert document.attainable_note(table.assign(n=12)) == ""  # 2 / 4096 < 0.05 / 8


KILLED_REPORT = """
from qalign_lib.report import document
from qalign_lib.study import studies
document.write_report(studies.load("x"), n_boot=20000)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_report_killed_with_sigkill_is_marked_incomplete_and_planned_again(params_copy, synthetic_data, monkeypatch,
                                                                               tmp_path, capsys):
    """Issue 21 case 6: `kill -9` in the middle of the report leaves its INCOMPLETE.md (no index), and
    `qalign study --dry-run` plans the report again, saying why; a rerun writes it whole."""
    write_study(params_copy, "size: tiny\nbenchmarks: [mgsm]\nsystems: {Base: base}\n")
    s = studies.load("x")
    fake_system(s.cfg, "base", {"mgsm": {lang: 1 for lang in s.cfg.eval_langs if lang in benchmarks.get("mgsm").langs}})
    monkeypatch.setattr(runner.evaluator, "incomplete", lambda *a, **k: None)
    monkeypatch.setattr(runner.pipeline, "incomplete", lambda *a, **k: None)
    out = layout.report_dir("tiny", "x")
    document.write_report(s, n_boot=100)  # the old report, whole, stamped as `qalign study` does
    runner.stamp_report(s, runner.report_inputs(s))
    assert runner.plan(s)[-1].status == "done"
    first = out / f"{benchmarks.get('mgsm').table.lower().replace(' ', '')}_mgsm.md"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_REPORT], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while first.stat().st_mtime_ns == before[first.name] and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # after its first table, before its index
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert first.stat().st_mtime_ns != before[first.name]  # new files beside old ones
    assert (out / "INCOMPLETE.md").is_file() and not (out / "README.md").exists()
    step = runner.plan(studies.load("x"))[-1]
    assert step.status == "todo" and step.reason.startswith(
        f"the report in {out} is being written or was interrupted ({out / 'INCOMPLETE.md'}: since "), step.reason
    assert f" by PID {proc.pid} on " in step.reason
    from qalign_lib.tools.cli import main

    capsys.readouterr()
    assert main(["study", "--study", "x", "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]  # the report, last step of the plan
    assert " report " in line and " todo " in line and f"({out / 'INCOMPLETE.md'}: since " in line, line
    document.write_report(s, n_boot=100)  # the rerun: whole again
    runner.stamp_report(s, runner.report_inputs(s))
    assert not (out / "INCOMPLETE.md").exists() and runner.plan(studies.load("x"))[-1].status == "done"
