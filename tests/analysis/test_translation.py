"""What stage 1 did to translation (qalign_lib.analysis.translation): scores with CIs, and translation that
resumes, checks its settings and moves changed ones aside."""
import json

import pytest

from qalign_lib.analysis import inputs, mt_metrics, translation
from qalign_lib.core import layout
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
