"""The analyses of a model (qalign_lib.analysis.pipeline): what decides a stored analysis, and on a faked GPU the
hf model freed before vLLM starts in the same process."""
import weakref

import torch

from qalign_lib.analysis import pipeline
from qalign_lib.core import config
from qalign_lib.models import engines
from tests.helpers import GIB, fake_reserved


def test_analysis_settings_follow_their_parameters(synthetic_data):
    """What decides a stored analysis: the generated parameters of group analysis (and the model); speed,
    training and evaluation parameters do not; the representation limit picks the ids compared."""
    cfg = config.resolve("tiny")
    ref = pipeline.settings(cfg, "mgsm", "m")
    assert pipeline.settings(cfg.replace(translation_max_new_tokens=7), "mgsm", "m")["translation"] != ref["translation"]
    other = "question" if cfg.representation_pooling != "question" else "template"
    assert pipeline.settings(cfg.replace(representation_pooling=other), "mgsm", "m")["representations"] != \
        ref["representations"]
    assert pipeline.settings(cfg, "mgsm", "other") != ref
    for name, value in (("analysis_batch_size", 3), ("translation_limit", 2), ("eval_batch_size", 1), ("lr", 1e-5),
                        ("max_new_tokens", {"mgsm": 3})):
        assert pipeline.settings(cfg.replace(**{name: value}), "mgsm", "m") == ref, name
    assert pipeline.settings(cfg.replace(representation_limit=3), "mgsm", "m")["representations"]["ids"] == [0, 1, 2]


CUDA0 = torch.device("cuda", 0)


def test_analysis_frees_the_hf_model_and_the_cuda_cache_before_vllm_starts(synthetic_data, tiny_model, monkeypatch):
    """The analyze notebook's sequence (analysis.analyze): representations with the hf model, then translations
    with vLLM. When vLLM is constructed, the hf model must be collected and PyTorch's cache emptied (vLLM refuses
    to start unless 0.92 of the card is free)."""
    cfg = config.resolve("tiny", model=tiny_model, engine="vllm", analysis_langs=["de"], representation_limit=2,
                         translation_limit=2, translation_max_new_tokens=2)
    models, calls, started = [], [], []
    real_load = engines.HF.load.__func__

    def load(cls, *args, **kwargs):
        engine = real_load(cls, *args, **kwargs)
        models.append(weakref.ref(engine.model))
        return engine

    class FakeVLLM:
        name = "vllm"

        def __init__(self, *args, **kwargs):
            assert models and models[0]() is None, "the hf model is still alive when vLLM starts"
            assert calls == ["empty_cache"], "PyTorch's CUDA cache was not emptied before vLLM starts"
            started.append(args)

        def generate(self, prompts, max_new_tokens, batch_size=0, token_budget=None, desc=""):
            yield [(i, "a translation", 2) for i in range(len(prompts))]

    monkeypatch.setattr(engines.HF, "load", classmethod(load))
    monkeypatch.setattr(engines, "VLLM", FakeVLLM)
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    monkeypatch.setattr(engines, "model_device", lambda model: CUDA0)  # the hf model "lives on the GPU"
    fake_reserved(monkeypatch, [14 * GIB], calls, alive=lambda: models[0]() is not None)
    out = pipeline.analyze(cfg, model=tiny_model)
    assert len(models) == 1 and len(started) == 1
    assert set(out["mgsm"]) == {"representations", "translation"}
    assert pipeline.is_complete(cfg, model=tiny_model)
    capped = cfg.replace(translation_length_cap=0.5)  # another scoring: incomplete, rescored without generating
    assert not pipeline.is_complete(capped, model=tiny_model)
    again = pipeline.analyze(capped, model=tiny_model)
    assert len(models) == 1 and len(started) == 1 and again["mgsm"]["translation"]["scoring"]["length_cap"] == 0.5
    assert pipeline.is_complete(capped, model=tiny_model)


# ----------------------------------------------------------------------------------------------------------------
# Every analysis records its inputs and is verified when read (issue 21: cases 2, 3, 5, 10)


def _cfg(tiny_model):
    return config.resolve("tiny", model=tiny_model, engine="hf", analysis_langs=["de"], analysis_benchmarks=["mgsm"],
                          representation_limit=3, translation_limit=2, translation_max_new_tokens=2)


def _finished_run(name: str, tiny_model: str, fingerprint: str):
    import shutil

    from qalign_lib.core import layout

    run = layout.run("tiny", name)
    shutil.copytree(tiny_model, run.model)
    (run.path / "run.json").write_text(f'{{"fingerprint": "{fingerprint}"}}')
    run.done_marker.write_text(fingerprint + "\n")
    return run


def test_a_truncated_or_emptied_table_is_todo_and_is_never_read(synthetic_data, tiny_model):
    """Case 2: settings.json records the hashes of per_question.csv and similarity.csv; a truncated or header-only
    table makes the analysis todo (the reason names the file), the report's reader refuses it in one line, and
    analysing again recomputes it."""
    import re

    import pytest

    from qalign_lib.analysis.representations import read_per_question
    from qalign_lib.core.errors import ResultsError

    cfg = _cfg(tiny_model)
    pipeline.analyze(cfg, run="base")
    assert pipeline.incomplete(cfg, run="base") is None
    rdir = pipeline.target(cfg, run="base").representations("mgsm")
    whole = rdir.per_question.read_text()
    assert len(read_per_question(rdir)) == len(whole.splitlines()) - 1
    rdir.per_question.write_text("".join(whole.splitlines(keepends=True)[:5]))
    assert pipeline.incomplete(cfg, run="base") == \
        f"{rdir.per_question}: not the table settings.json records (truncated or edited)"
    with pytest.raises(ResultsError, match=re.escape(f"{rdir.per_question}: not the table settings.json records")):
        read_per_question(rdir)
    pipeline.analyze(cfg, run="base")
    assert rdir.per_question.read_text() == whole and pipeline.is_complete(cfg, run="base")
    rdir.similarity.write_text(rdir.similarity.read_text().splitlines(keepends=True)[0])  # the header only
    assert pipeline.incomplete(cfg, run="base") == \
        f"{rdir.similarity}: not the table settings.json records (truncated or edited)"
    pipeline.analyze(cfg, run="base")
    assert pipeline.is_complete(cfg, run="base")
    # case 10: a corrupt table (not CSV at all) is todo in the same words, never a pandas traceback
    rdir.similarity.write_bytes(b'\xff\xfe"unterminated,\x00\n')
    assert pipeline.incomplete(cfg, run="base") == \
        f"{rdir.similarity}: not the table settings.json records (truncated or edited)"
    rdir.per_question.write_bytes(b"")
    with pytest.raises(ResultsError, match=re.escape(f"{rdir.per_question}: not the table settings.json records")):
        read_per_question(rdir)
    pipeline.analyze(cfg, run="base")
    assert pipeline.is_complete(cfg, run="base")


def test_translations_changed_after_scoring_or_ill_typed_are_not_trusted(synthetic_data, tiny_model):
    """Cases 2 and 10: translation metrics record a hash of the rows they scored; a row edited since makes the
    analysis todo; a hypothesis that is not a string is a one-line error naming the file and row."""
    import json
    import re

    import pytest

    from qalign_lib.analysis.translation import translation_rows
    from qalign_lib.core.errors import ResultsError

    cfg = _cfg(tiny_model)
    pipeline.analyze(cfg, run="base")
    tdir = pipeline.target(cfg, run="base").translation("mgsm")
    path = tdir.hypotheses("de")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["hypothesis"] = "an edited hypothesis"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert pipeline.incomplete(cfg, run="base") == f"{tdir.metrics}: not computed from the translations now stored"
    rows[1]["hypothesis"] = 12345
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ResultsError, match=re.escape(f"{path}: row 2: field 'hypothesis' must be a string, got int;")):
        translation_rows(tdir, "de")
    rows[1]["hypothesis"], rows[1]["id"] = "ok", [3]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ResultsError, match=re.escape(f"{path}: row 2: id [3] must be an integer or a string;")):
        translation_rows(tdir, "de")


def test_an_edited_question_makes_the_analyses_todo(synthetic_data, tiny_model, tmp_path, monkeypatch):
    """Case 3: both analyses record hashes of the questions they used; editing one is noticed, and analysing again
    moves the old translations aside."""
    import json
    import shutil

    from qalign_lib.data import corpora

    shutil.copytree(synthetic_data, tmp_path / "data")
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path / "data"))
    cfg = _cfg(tiny_model)
    pipeline.analyze(cfg, run="base")
    root = pipeline.target(cfg, run="base")
    path = corpora.path_of("mgsm", "de", root=tmp_path / "data")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["question"] = "Eine ganz andere Frage?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reason = pipeline.incomplete(cfg, run="base")
    assert reason == f"{root.representations('mgsm').settings}: settings changed since (questions)"
    pipeline.analyze(cfg, run="base")
    assert len(list(root.translation("mgsm").path.parent.glob("mgsm.replaced-*"))) == 1
    assert pipeline.is_complete(cfg, run="base")


def test_copying_runs_keeps_analyses_of_runs_complete(synthetic_data, tiny_model, tmp_path, monkeypatch):
    """Case 5: analyses name a run relative to the runs root (with its fingerprint): a copied runs/ is complete."""
    import shutil

    cfg = _cfg(tiny_model)
    _finished_run("r1", tiny_model, "fp-1")
    pipeline.analyze(cfg, run="r1")
    saved = pipeline.target(cfg, run="r1").representations("mgsm").settings.read_text()
    assert '"model": "runs:tiny/r1"' in saved and str(tmp_path) not in saved
    shutil.copytree(tmp_path / "runs", tmp_path / "runs2", symlinks=True)
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "runs2"))
    assert pipeline.incomplete(cfg, run="r1") is None
