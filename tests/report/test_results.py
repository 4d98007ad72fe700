"""Collecting results (qalign_lib.report.results): absent systems reported, corrupt generations raised."""
import pytest

from qalign_lib.core import benchmarks, errors, layout
from qalign_lib.report import results
from qalign_lib.study import studies
from tests.helpers import fake_system


def test_collect_reports_absent_systems_but_raises_on_corrupt_generations(synthetic_data, monkeypatch):
    s = studies.load("tiny")
    langs = {b: [lang for lang in s.cfg.eval_langs if lang in benchmarks.get(b).langs] for b in s.benchmarks}
    root = fake_system(s.cfg, s.systems["MonoReason"], {b: {lang: 1 for lang in langs[b]} for b in s.benchmarks})
    layout.run(s.size, s.systems["QAlign+MonoReason"]).model.mkdir(parents=True)  # started, never finished
    got, absent = results.collect(s)
    assert list(got) == ["MonoReason"] and set(got["MonoReason"]) == set(s.benchmarks)
    assert got["MonoReason"]["mgsm"]["accuracy"]["en"] == pytest.approx(100 / s.cfg.eval_limit, abs=1e-3)
    assert absent["Base"] == f"not evaluated ({layout.eval_root(s.size, s.cfg.model, 'base').path})"
    assert absent["QAlign+MonoReason"].startswith("run 'qalign-monoreason' (") and "is not finished" in absent["QAlign+MonoReason"]
    # a corrupt generations file is an error, not an absent system
    with root.generations("mgsm", "en").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(errors.ResultsError, match="not valid JSON"):
        results.collect(s)
    # and so is a bug
    from qalign_lib.evaluation import evaluator

    monkeypatch.setattr(evaluator, "load_generations", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        results.collect(s)


def test_an_extra_model_never_evaluated_is_an_absent_row(synthetic_data):
    """The report notebook's ``extra_models`` naming a model that was never evaluated (or a name no model has): the
    report lists it among the systems without results, never a traceback (issue 21, report parameters)."""
    from qalign_lib.report import document

    s = studies.load("tiny")
    extra = ["never/evaluated", "../../etc", "a b"]
    got, absent = results.collect(s, extra_models=extra)
    assert got == {}
    assert absent["model: never/evaluated"] == f"not evaluated ({layout.eval_root(s.size, '', model='never/evaluated').path})"
    assert absent["model: ../../etc"].startswith("not evaluated (") and str(layout.runs_dir()) in absent["model: ../../etc"]
    document.write_report(s, extra_models=extra, n_boot=100)
    index = (layout.report_dir(s.size) / "README.md").read_text()
    assert "- model: never/evaluated: not evaluated (" in index and "- model: a b: not evaluated (" in index
