"""chrF and BLEU (qalign_lib.analysis.mt_metrics): exactly as sacrebleu computes them, on fixed strings and on
every resampled subset."""
import random

import numpy as np
import pytest

from qalign_lib.analysis import mt_metrics
from tests.helpers import HYPS, REFS


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
