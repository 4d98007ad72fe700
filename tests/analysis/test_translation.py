"""What stage 1 did to translation (qalign_lib.analysis.translation): the scored text (first line, capped), scores
with CIs, the descriptives (floor, length ratio, English share, raw scores), and translation that resumes, checks its
settings, moves changed ones aside and rescores a changed cap without regenerating."""
import json

import pytest

from qalign_lib.analysis import inputs, mt_metrics, translation
from qalign_lib.core import layout
from qalign_lib.core.errors import ConfigError, DataError
from qalign_lib.data import prompts
from tests.helpers import HYPS, REFS


def test_translation_metrics_average_and_cis():
    rows = {lang: [{"id": i, "hypothesis": h, "reference": r} for i, (h, r) in enumerate(zip(HYPS, REFS))]
            for lang in ("de", "fr")}
    rows["fr"][0] = {**rows["fr"][0], "hypothesis": REFS[0]}  # fr is better on one sentence
    m = translation.translation_metrics(rows, n_boot=300)
    assert m["chrf"]["de"] == pytest.approx(mt_metrics.corpus_score("chrf", HYPS, REFS))
    assert m["chrf"]["fr"] > m["chrf"]["de"]
    assert m["chrf"]["Avg"] == pytest.approx((m["chrf"]["de"] + m["chrf"]["fr"]) / 2)
    for metric in ("chrf", "bleu"):
        for lang, (lo, hi) in m["ci"][metric].items():
            assert lo <= m[metric][lang] <= hi, (metric, lang)
    assert m["signature"]["chrf"].startswith("nrefs:1|") and "tok:13a" in m["signature"]["bleu"]


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
    assert set(json.loads(out.metrics.read_text())["chrf"]) == {"de", "zh", "Avg"}
    again = EchoEngine()
    translation.translate(again, out, "mgsm", ["de", "zh"], 6, 16, 3, settings=settings)
    assert len(again.asked) == 4  # only ids 4 and 5 of each language were missing
    changed = EchoEngine()
    translation.translate(changed, out, "mgsm", ["de"], 2, 32, 3, settings=translation.translation_settings(32, "some/model"))
    assert len(changed.asked) == 2 and list(tmp_path.glob("t.replaced-*"))


# ----------------------------------------------------------------------------------------------------------------
# The scored text


def test_scored_hypothesis_is_the_first_line_capped_at_the_reference_length():
    assert translation.scored_hypothesis("Tom has 3 apples.\nTom has 3 apples.\n", "Tom has three apples.") == "Tom has 3 apples."
    assert translation.scored_hypothesis("\n\n  Tom has apples. \r\nmore", "x" * 40) == "Tom has apples."
    assert translation.scored_hypothesis("abcdefghij", "abc") == "abcdef"  # the declared cap, 2.0
    assert translation.scored_hypothesis("abcdefghij", "abc", 1.5) == "abcd"  # floor(4.5) characters
    assert translation.scored_hypothesis("ab cdef", "ab", 1.5) == "ab"  # "ab " without its trailing space
    assert translation.scored_hypothesis("  \n ", "abc") == ""
    assert translation.resolve_cap(None) == 2.0 and translation.resolve_cap(3) == 3.0
    for bad in (0, -1.0, "2", True):
        with pytest.raises(ConfigError, match="translation_length_cap"):
            translation.scored_hypothesis("abc", "abc", bad)


def test_scores_are_of_the_scored_hypothesis_and_the_raw_one_is_kept_apart():
    rows = [{"id": i, "hypothesis": r + "\n### Instruction: " + r, "reference": r} for i, r in enumerate(REFS)]
    for metric in ("chrf", "bleu"):
        assert translation.translation_stats(rows, metric).tolist() == mt_metrics.sentence_stats(metric, REFS, REFS).tolist()
        raw = mt_metrics.sentence_stats(metric, [r["hypothesis"] for r in rows], REFS)
        assert translation.raw_stats(rows, metric).tolist() == raw.tolist()
    m = translation.translation_metrics({"de": rows}, n_boot=50)
    assert m["chrf"]["de"] == pytest.approx(100.0) and m["bleu"]["de"] == pytest.approx(100.0)
    d = translation.translation_descriptives({"de": rows})
    assert d["raw"]["chrf"]["de"] == pytest.approx(mt_metrics.corpus_score("chrf", [r["hypothesis"] for r in rows], REFS))
    assert d["raw"]["chrf"]["de"] < 100


# ----------------------------------------------------------------------------------------------------------------
# Descriptives


def test_floor_scores_each_hypothesis_against_the_next_ids_reference_cyclically():
    refs = {0: "Tom has three apples.", 1: "Ann buys 5 pears.", 2: "How many eggs are left?"}
    rows = [{"id": i, "hypothesis": refs[i] + "\nloop", "reference": refs[i]} for i in (2, 0, 1)]  # unsorted
    for metric in ("chrf", "bleu"):
        want = mt_metrics.sentence_stats(metric, [refs[0], refs[1], refs[2]], [refs[1], refs[2], refs[0]])
        assert translation.floor_stats(rows, metric).tolist() == want.tolist()
    d = translation.translation_descriptives({"de": rows})
    assert d["floor"]["chrf"]["de"] == pytest.approx(
        mt_metrics.corpus_score("chrf", [refs[0], refs[1], refs[2]], [refs[1], refs[2], refs[0]]))
    with pytest.raises(DataError, match="two questions"):
        translation.floor_stats(rows[:1], "chrf")
    assert translation.translation_descriptives({"de": rows[:1]})["floor"]["chrf"]["de"] is None


def test_floor_is_below_the_matched_score_on_real_sentences():
    rows = [{"id": i, "hypothesis": h, "reference": r} for i, (h, r) in enumerate(zip(HYPS, REFS))]
    m, d = translation.translation_metrics({"de": rows}, n_boot=50), translation.translation_descriptives({"de": rows})
    for metric in ("chrf", "bleu"):
        assert d["floor"][metric]["de"] < m[metric]["de"], metric
    assert 0 < d["floor"]["chrf"]["de"] < 30


def test_length_ratio_and_english_share_exact_with_the_average_over_languages():
    english = "The farmer sells twelve eggs at the market every morning."
    german = "Der Bauer verkauft jeden Morgen zwölf Eier auf dem Markt."
    refs = ["x" * 60, "y" * 30]
    de = [{"id": 0, "hypothesis": english, "reference": refs[0]},                  # 57 characters
          {"id": 1, "hypothesis": german + " " + german, "reference": refs[1]}]   # capped at 60
    fr = [{"id": 0, "hypothesis": "", "reference": refs[0]}, {"id": 1, "hypothesis": english, "reference": refs[1]},
          {"id": 2, "hypothesis": english, "reference": refs[1]}]  # id 2 is not in de: out of the average
    d = translation.translation_descriptives({"de": de, "fr": fr})
    assert d["length_ratio"]["de"] == pytest.approx((57 + 60) / 90)
    assert d["english_share"]["de"] == pytest.approx(1 / 2)
    assert d["length_ratio"]["fr"] == pytest.approx((0 + 57 + 57) / 120)
    assert d["english_share"]["fr"] == pytest.approx(2 / 3)
    assert d["length_ratio"]["Avg"] == pytest.approx(((57 + 60) / 90 + (0 + 57) / 90) / 2)
    assert d["english_share"]["Avg"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    table = translation.descriptive_table({"de": de, "fr": fr})
    assert list(table.columns) == ["lang", "metric", "floor", "raw", "length_ratio", "english_share"]
    assert len(table) == 6 and set(table["lang"]) == {"de", "fr", "Avg"}
    row = table[(table["lang"] == "fr") & (table["metric"] == "bleu")].iloc[0]
    assert row["floor"] == pytest.approx(d["floor"]["bleu"]["fr"]) and row["english_share"] == pytest.approx(2 / 3)


def test_translate_records_the_scoring_and_rescores_a_changed_cap_without_generating(synthetic_data, tmp_path):
    out = layout.TranslationDir(tmp_path / "t")
    settings = translation.translation_settings(16, "some/model")
    text = "Tom has apples and Tom has apples and Tom has apples and Tom has apples and Tom has apples.\nmore"
    m = translation.translate(EchoEngine(text), out, "mgsm", ["de", "zh"], 3, 16, 3, settings=settings)
    assert m["scoring"]["length_cap"] == 2.0 and m["scoring"]["signature"]["chrf"] == mt_metrics.signature("chrf")
    assert set(m["descriptives"]) == {"floor", "raw", "length_ratio", "english_share"}
    assert m["descriptives"]["english_share"] == {"de": 1.0, "zh": 1.0, "Avg": 1.0}
    row = json.loads(out.hypotheses("de").read_text().splitlines()[0])
    assert row["hypothesis"] == text  # the raw output is stored
    again = EchoEngine("never asked")
    short = translation.translate(again, out, "mgsm", ["de", "zh"], 3, 16, 3, settings=settings, length_cap=0.1)
    assert again.asked == [] and short["scoring"]["length_cap"] == 0.1
    assert short["descriptives"]["length_ratio"]["de"] < m["descriptives"]["length_ratio"]["de"]
    assert json.loads(out.metrics.read_text())["scoring"]["length_cap"] == 0.1
