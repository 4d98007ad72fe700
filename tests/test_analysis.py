"""What stage 1 did (qalign_lib/analysis.py): chrF and BLEU exactly as sacrebleu computes them, cosine and retrieval
against hand-computed values on tiny tensors, pooling without padding or template leakage, resumable translation,
paired effects, the study's analysis section and plan, the report's new outputs, and the CLI's error paths."""
import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from qalign_lib.analysis import effects, inference, inputs, mt_metrics, pipeline, representations, translation
from qalign_lib.core import config, layout
from qalign_lib.core.errors import ConfigError
from qalign_lib.data import prompts
from qalign_lib.models import modeling
from qalign_lib.report import document
from qalign_lib.study import runner, studies
from qalign_lib.tools.cli import main
from tests.helpers import BASE_STUDY, fake_analysis, one_line_error, tiny_llama, write_study

# ----------------------------------------------------------------------------------------------------------------
# chrF and BLEU: sacrebleu's numbers


HYPS = ["Janet's ducks lay 16 eggs per day.", "She sells the rest at the market.", "", "How much does she make?",
        "The the the the the"]
REFS = ["Janet’s ducks lay 16 eggs per day.", "She sells the remainder at the farmers' market daily.",
        "How many eggs?", "How much in dollars does she make every day?", "A robe takes 2 bolts of blue fiber."]


def test_corpus_scores_equal_sacrebleu_on_fixed_strings():
    from sacrebleu.metrics import BLEU, CHRF

    assert mt_metrics.corpus_score("chrf", HYPS, REFS) == pytest.approx(CHRF().corpus_score(HYPS, [REFS]).score, abs=1e-9)
    assert mt_metrics.corpus_score("bleu", HYPS, REFS) == pytest.approx(BLEU().corpus_score(HYPS, [REFS]).score, abs=1e-9)
    assert mt_metrics.corpus_score("chrf", REFS, REFS) == pytest.approx(100.0)
    assert mt_metrics.corpus_score("bleu", REFS, REFS) == pytest.approx(100.0)
    assert 0 < mt_metrics.corpus_score("chrf", HYPS, REFS) < 100


def test_vectorised_scores_equal_sacrebleu_on_every_subset():
    """The bootstrap scores resampled statistics; each must be sacrebleu's score of those statistics (empty
    hypotheses, orders without matches and brevity penalties included)."""
    from sacrebleu.metrics import BLEU, CHRF

    rng = random.Random(0)
    words = "the cat sat on a mat dog 12 apples eggs market".split()
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(60)]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(60)]
    for metric, cls in (("chrf", CHRF), ("bleu", BLEU)):
        stats = mt_metrics.sentence_stats(metric, hyps, refs)
        subsets = [np.random.default_rng(k).integers(0, 60, size=1 + k % 7) for k in range(200)]
        summed = np.stack([stats[idx].sum(0) for idx in subsets])
        ours = mt_metrics.SCORES[metric](summed)
        theirs = [cls()._compute_score_from_stats(row.astype(int).tolist()).score for row in summed]
        assert ours == pytest.approx(theirs, abs=1e-9), metric


def test_translation_metrics_average_and_cis():
    rows = {lang: [{"id": i, "hypothesis": h, "reference": r} for i, (h, r) in enumerate(zip(HYPS, REFS))]
            for lang in ("de", "fr")}
    rows["fr"][0] = {**rows["fr"][0], "hypothesis": REFS[0]}  # fr is better on one sentence
    m = translation.translation_metrics(rows, n_boot=300)
    assert m["chrf"]["de"] == pytest.approx(mt_metrics.corpus_score("chrf", HYPS, REFS))
    assert m["chrf"]["fr"] > m["chrf"]["de"]
    assert m["chrf"]["avg"] == pytest.approx((m["chrf"]["de"] + m["chrf"]["fr"]) / 2)
    for metric in ("chrf", "bleu"):
        for lang, (lo, hi) in m["ci"][metric].items():
            assert lo <= m[metric][lang] <= hi, (metric, lang)
    assert m["signature"]["chrf"].startswith("nrefs:1|") and "tok:13a" in m["signature"]["bleu"]


# ----------------------------------------------------------------------------------------------------------------
# Cosine and retrieval on tiny tensors (hand-computed)


def _states():
    en = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    de = np.array([[1, 0], [1, 1], [0, 1]], dtype=float)
    # two layers: layer 1 is layer 0 scaled (cosine and retrieval do not change) ; shape (n, layers, hidden)
    return {"en": np.stack([en, 3 * en], 1), "de": np.stack([de, 2 * de], 1)}


def test_similarity_by_hand():
    pq = representations.similarity(_states(), ids=[10, 11, 12])
    assert list(pq.columns) == ["lang", "layer", "id", "cosine", "centred_cosine", "retrieval_top1", "retrieval_top1_centred"]
    for layer in (0, 1):
        at = pq[pq["layer"] == layer].set_index("id")
        # cos(de_i, en_i): [1,0]·[1,0] = 1; [1,1]·[0,1] = 1/sqrt2; [0,1]·[1,1] = 1/sqrt2
        assert at["cosine"].tolist() == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(2)])
        # nearest English of [1,1] is [1,1] (id 12, not 11); of [0,1] it is [0,1] (id 11, not 12)
        assert at["retrieval_top1"].tolist() == [1, 0, 0]
        # centred: both languages have mean [2/3, 2/3]; de_c = [1,-2]/3, [1,1]/3, [-2,1]/3; en_c = [1,-2]/3, [-2,1]/3, [1,1]/3
        assert at["centred_cosine"].tolist() == pytest.approx([1, -1 / math.sqrt(10), -1 / math.sqrt(10)])
        assert at["retrieval_top1_centred"].tolist() == [1, 0, 0]


def test_similarity_table_values_cis_and_average():
    states = _states()
    states["fr"] = states["en"].copy()  # a perfect translation: cosine 1, retrieval 1
    table = representations.similarity_table(representations.similarity(states, ids=[0, 1, 2]), n_boot=200)
    row = table[(table["lang"] == "de") & (table["layer"] == 0)].iloc[0]
    assert row["cosine"] == pytest.approx((1 + 2 / math.sqrt(2)) / 3)
    assert row["retrieval_top1"] == pytest.approx(1 / 3) and row["chance"] == pytest.approx(1 / 3) and row["n"] == 3
    fr = table[(table["lang"] == "fr") & (table["layer"] == 0)].iloc[0]
    assert fr["cosine"] == pytest.approx(1) and fr["retrieval_top1"] == 1 and fr["retrieval_top1_lo"] == 1
    avg = table[(table["lang"] == "avg") & (table["layer"] == 0)].iloc[0]
    assert avg["cosine"] == pytest.approx((row["cosine"] + fr["cosine"]) / 2)
    for m in representations.MEASURES:
        assert (table[f"{m}_lo"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_hi"] + 1e-12).all(), m
    assert ((table["cosine"] >= -1) & (table["cosine"] <= 1)).all()
    assert ((table["retrieval_top1"] >= 0) & (table["retrieval_top1"] <= 1)).all()


def test_score_ci_and_paired_difference_of_means():
    x = inference.mean_stats([1, 0, 1, 1])
    ci = inference.score_ci(x, inference.mean_score, 500)
    assert ci["value"] == 0.75 and ci["lo"] <= 0.75 <= ci["hi"] and ci["n"] == 4
    same = inference.paired_score_diff(x, x, inference.mean_score, 500)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["p_value"] == 1.0
    better = inference.paired_score_diff(inference.mean_stats([0] * 20), inference.mean_stats([1] * 20),
                                          inference.mean_score, 500)
    assert better["diff"] == 1 and better["lo"] == 1 and better["p_value"] == 0.0
    with pytest.raises(ValueError, match="same, non-zero number of items"):
        inference.score_ci({"a": x, "b": inference.mean_stats([1])}, inference.mean_score, 10)


# ----------------------------------------------------------------------------------------------------------------
# Pooling on the tiny LLaMA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return modeling.load_model(str(path)), modeling.load_tokenizer(str(path)), str(path)


def test_pooling_is_the_mean_over_the_question_tokens_without_padding(tiny):
    model, tok, _ = tiny
    texts = ["Tom has 3 apples.", "Tom has 3 apples and buys 5 more. How many apples does he have now?"]
    pooled = representations.pooled_states(model, tok, texts, batch_size=2)
    ids = tok(texts[0], add_special_tokens=True, return_special_tokens_mask=True)
    keep = [k for k, s in enumerate(ids["special_tokens_mask"]) if not s]
    with torch.no_grad():
        states = model.get_decoder()(input_ids=torch.tensor([ids["input_ids"]]), output_hidden_states=True).hidden_states
    manual = np.stack([h[0, keep].mean(0).numpy() for h in states])
    assert pooled.shape == (2, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert pooled[0] == pytest.approx(manual, abs=1e-5)  # batched beside a longer text = alone: no padding leaks in
    alone = representations.pooled_states(model, tok, texts[1:], batch_size=1)
    assert pooled[1] == pytest.approx(alone[0], abs=1e-5)


def test_template_pooling_covers_the_question_tokens_only(tiny):
    _, tok, _ = tiny
    question = "Tom has 3 apples and buys 5 more."
    ids, keep = representations._question_positions(tok, question, "template")
    assert tok.decode([ids[k] for k in keep]).strip() == question
    assert len(ids) > len(keep)  # the template's tokens are fed but not pooled
    with pytest.raises(ConfigError, match="representation_pooling"):
        representations._question_positions(tok, question, "last")


# ----------------------------------------------------------------------------------------------------------------
# Translation: resumable, settings-checked, scored


class EchoEngine:
    """Answers every stage-1 prompt with a fixed text per call (counts what it was asked)."""

    def __init__(self, text=None):
        self.text, self.asked = text, []

    def generate(self, prompts_, max_new_tokens, batch_size, token_budget=None, desc=""):
        self.asked += prompts_
        for start in range(0, len(prompts_), batch_size):
            yield [(k, self.text or "Tom has apples.", 3) for k in range(start, min(start + batch_size, len(prompts_)))]


def test_translate_writes_rows_resumes_and_moves_changed_settings_aside(synthetic_data, tmp_path):
    out = layout.TranslationDir(tmp_path / "t")
    engine = EchoEngine()
    settings = translation.translation_settings(16, "some/model")
    m = translation.translate(engine, out, "mgsm", ["de", "zh"], 4, 16, 3, settings=settings)
    assert len(engine.asked) == 8 and m["n"] == {"de": 4, "zh": 4}
    assert engine.asked[0] == prompts.alpaca(prompts.translate(inputs.parallel_questions("mgsm", ["de"], 1)[1]["de"][0], "de", "en"))
    row = json.loads(out.hypotheses("de").read_text().splitlines()[0])
    assert {"id", "source", "hypothesis", "reference"} <= set(row) and row["hypothesis"] == "Tom has apples."
    assert set(json.loads(out.metrics.read_text())["chrf"]) == {"de", "zh", "avg"}
    again = EchoEngine()
    translation.translate(again, out, "mgsm", ["de", "zh"], 6, 16, 3, settings=settings)
    assert len(again.asked) == 4  # only ids 4 and 5 of each language were missing
    changed = EchoEngine()
    translation.translate(changed, out, "mgsm", ["de"], 2, 32, 3, settings=translation.translation_settings(32, "some/model"))
    assert len(changed.asked) == 2 and list(tmp_path.glob("t.replaced-*"))


def test_analysis_settings_follow_their_parameters(synthetic_data):
    """What decides a stored analysis: the generated parameters of group analysis (and the model); speed,
    training and evaluation parameters do not; the representation limit picks the ids compared."""
    cfg = config.resolve("tiny")
    ref = pipeline.settings(cfg, "mgsm", "m")
    assert pipeline.settings(cfg.replace(translation_max_new_tokens=7), "mgsm", "m")["translation"] != ref["translation"]
    assert pipeline.settings(cfg.replace(representation_pooling="template"), "mgsm", "m")["representations"] != \
        ref["representations"]
    assert pipeline.settings(cfg, "mgsm", "other") != ref
    for name, value in (("analysis_batch_size", 3), ("translation_limit", 2), ("eval_batch_size", 1), ("lr", 1e-5),
                        ("max_new_tokens", {"mgsm": 3})):
        assert pipeline.settings(cfg.replace(**{name: value}), "mgsm", "m") == ref, name
    assert pipeline.settings(cfg.replace(representation_limit=3), "mgsm", "m")["representations"]["ids"] == [0, 1, 2]


def test_parallel_questions_align_by_id_and_name_missing_languages(synthetic_data):
    ids, q = inputs.parallel_questions("mgsm", "de,te", 3)
    assert ids == [0, 1, 2] and set(q) == {"en", "de", "te"}
    with pytest.raises(ConfigError, match="mSVAMP has no parallel questions in te"):
        inputs.parallel_questions("msvamp", "te")
    with pytest.raises(ConfigError, match="en is the reference"):
        inputs.parallel_questions("mgsm", "en,de")


# ----------------------------------------------------------------------------------------------------------------
# Effects between systems


def test_effects_are_paired_differences_with_cis():
    found = {"A": fake_analysis(0.0, 0.4), "B": fake_analysis(1.0, 0.8), "C": fake_analysis(0.0, 0.4)}
    eff = effects.effects(found, [("A", "B"), ("A", "C")], "mgsm", n_boot=500)
    avg = eff[eff["lang"] == "avg"].set_index(["b", "measure"])
    assert avg.loc[("B", "chrf"), "diff"] == pytest.approx(avg.loc[("B", "chrf"), "value b"] - avg.loc[("B", "chrf"), "value a"])
    assert avg.loc[("B", "chrf"), "value b"] == pytest.approx(100.0) and avg.loc[("B", "chrf"), "excludes zero"]
    assert avg.loc[("B", "cosine"), "diff"] == pytest.approx(0.4) and avg.loc[("B", "retrieval_top1"), "diff"] == 1
    assert avg.loc[("B", "retrieval_top1_centred"), "diff"] == 0 and not avg.loc[("B", "retrieval_top1_centred"), "excludes zero"]
    assert (avg.loc["C", "diff"] == 0).all() and not avg.loc["C", "excludes zero"].any()  # identical systems
    assert set(eff["lang"]) == {"de", "fr", "avg"}
    text = effects.summary(eff, "A", "B")
    assert "chrF +" in text and "(CI excludes zero)" in text and "centred retrieval top-1 +0.000" in text


# ----------------------------------------------------------------------------------------------------------------
# The study: its analysis section, the plan, the report


def test_study_analysis_section_and_default(params_copy):
    write_study(params_copy, BASE_STUDY)
    s = studies.load("x")
    assert s.analyses == {"Base": "base", "Stage 1: s1": "s1"} and s.effects == [("Base", "Stage 1: s1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")
    s = studies.load("x")
    assert s.analyses == {"Base": "base", "S1": "s1"} and s.effects == [("Base", "S1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: nope}\n")
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        studies.load("x")
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base}\n  effects: [[Base, Other]]\n")
    with pytest.raises(ConfigError, match="is not a pair"):
        studies.load("x")


def test_plan_has_analyze_steps_after_training(params_copy, synthetic_data):
    write_study(params_copy, BASE_STUDY)
    steps = runner.plan(studies.load("x"))
    analyze = [st for st in steps if st.kind == "analyze"]
    assert [(st.name, st.params, st.status) for st in analyze] == [
        ("Base", {"size": "tiny", "run": "base"}, "todo"), ("Stage 1: s1", {"size": "tiny", "run": "s1"}, "todo")]
    assert analyze[1].reason == "after training s1"
    assert [st.kind for st in steps][-1] == "report" and steps[-1].status == "todo"


def test_report_dir_of_other_studies_is_a_subfolder():
    assert layout.report_dir("tiny", "tiny") == layout.report_dir("tiny") == layout.figures_dir() / "tiny"
    assert layout.report_dir("7b", "paper") == layout.figures_dir() / "7b"
    assert layout.report_dir("tiny", "offline") == layout.figures_dir() / "tiny" / "offline"


def test_report_writes_the_analyses_and_opens_with_the_effects(params_copy, synthetic_data, tmp_path):
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")
    s = studies.load("x")
    found = {"Base": fake_analysis(0.0, 0.4), "S1": fake_analysis(1.0, 0.8)}
    out = tmp_path / "report"
    written = document.write_report(s, out, n_boot=200, collected=({}, {}), analyses=(found, {}))
    for name in ("translation_mgsm", "representations_mgsm", "representations_mgsm_langs", "stage1_effects_mgsm",
                 "translation_mgsm_png", "representations_mgsm_png", "representations_mgsm_langs_png",
                 "stage1_effects_mgsm_png"):
        assert name in written and written[name].is_file(), name
    readme = (out / "README.md").read_text().splitlines()
    first = next(line for line in readme[1:] if line.strip())
    assert first.startswith("**What stage 1 did**") and "**S1 - Base**: chrF +" in first and "CI excludes zero" in first
    top = "\n".join(readme[:8])
    assert "![Translation of mGSM questions" in top and "translation_mgsm.png" in top and "stage1_effects_mgsm.png" in top
    effects = pd.read_csv(out / "stage1_effects_mgsm.csv")
    assert set(effects["measure"]) == set(mt_metrics.METRICS) | set(representations.MEASURES)


def test_consistency_panel_without_data_says_so():
    from qalign_lib.report import figures

    frame = pd.DataFrame([{"benchmark": "mGSM", "system": "A", "lang": "de", "jaccard": float("nan"), "agreement": 50.0},
                          {"benchmark": "mGSM", "system": "B", "lang": "de", "jaccard": float("nan"), "agreement": 25.0}])
    fig = figures.consistency_grid(frame, "t")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("no data: no question answered correctly") for t in texts)
    assert sum(bool(ax.patches) for ax in fig.axes) == 1  # the agreement panel keeps its bars


# ----------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_unknown_model_and_language_without_parallel_data(synthetic_data, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["analyze", "translation", "--model", str(tmp_path / "no-such-model"), "--langs", "de",
                 "--out", out]) == 1
    assert "neither an embedded model, an existing directory nor a Hub id" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "representations", "--model", "embedded:nope", "--langs", "de", "--out", out]) == 1
    assert "unknown embedded model" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "translation", "--model", "x/y", "--benchmark", "msvamp", "--langs", "te", "--out", out]) == 1
    assert "mSVAMP has no parallel questions in te" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "representations", "--model", "x/y", "--langs", "en,de", "--out", out]) == 1
    assert "en is the reference" in one_line_error(capsys.readouterr().err)
    (tmp_path / "file").write_text("")
    assert main(["analyze", "representations", "--model", "x/y", "--out", str(tmp_path / "file")]) == 1
    assert "is not a directory" in one_line_error(capsys.readouterr().err)


def test_cli_representations_and_translation_on_the_tiny_llama(synthetic_data, tiny, tmp_path, capsys):
    _, _, path = tiny
    out = tmp_path / "rep"
    assert main(["analyze", "representations", "--model", path, "--langs", "de,zh", "--limit", "4", "--out", str(out)]) == 0
    table = pd.read_csv(layout.RepresentationDir(out).similarity)
    assert {"lang", "layer", "cosine", "retrieval_top1", "centred_cosine", "cosine_lo", "cosine_hi"} <= set(table.columns)
    assert set(table["lang"]) == {"de", "zh", "avg"} and table["layer"].nunique() == 3  # 2 layers + embeddings
    assert ((table["cosine"] >= -1 - 1e-9) & (table["cosine"] <= 1 + 1e-9)).all()
    out = tmp_path / "tr"
    assert main(["analyze", "translation", "--model", path, "--langs", "de", "--limit", "2", "--max-new-tokens", "4",
                 "--engine", "hf", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "de.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and all({"source", "hypothesis", "reference"} <= set(r) for r in rows)
    metrics = json.loads(layout.TranslationDir(out).metrics.read_text())
    assert set(metrics["chrf"]) == {"de"} and set(metrics["bleu"]) == {"de"}
