"""Representation alignment (qalign_lib.analysis.representations): cosine and retrieval against hand-computed
values on tiny tensors, and pooling on the tiny LLaMA without padding or template leakage."""
import math

import numpy as np
import pytest
import torch

from qalign_lib.analysis import representations
from qalign_lib.core.errors import ConfigError
from qalign_lib.models import modeling


# ----------------------------------------------------------------------------------------------------------------
# Cosine and retrieval on tiny tensors (hand-computed)


def _states():
    en = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    de = np.array([[1, 0], [1, 1], [0, 1]], dtype=float)
    # two layers: layer 1 is layer 0 scaled (cosine and retrieval do not change) ; shape (n, layers, hidden)
    return {"en": np.stack([en, 3 * en], 1), "de": np.stack([de, 2 * de], 1)}


def test_similarity_by_hand():
    pq = representations.per_question_similarity(_states(), ids=[10, 11, 12])
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
    table = representations.similarity_table(representations.per_question_similarity(states, ids=[0, 1, 2]), n_boot=200)
    row = table[(table["lang"] == "de") & (table["layer"] == 0)].iloc[0]
    assert row["cosine"] == pytest.approx((1 + 2 / math.sqrt(2)) / 3)
    assert row["retrieval_top1"] == pytest.approx(1 / 3) and row["chance"] == pytest.approx(1 / 3) and row["n"] == 3
    fr = table[(table["lang"] == "fr") & (table["layer"] == 0)].iloc[0]
    assert fr["cosine"] == pytest.approx(1) and fr["retrieval_top1"] == 1 and fr["retrieval_top1_lo"] == 1
    avg = table[(table["lang"] == "Avg") & (table["layer"] == 0)].iloc[0]
    assert avg["cosine"] == pytest.approx((row["cosine"] + fr["cosine"]) / 2)
    for m in representations.MEASURES:
        assert (table[f"{m}_lo"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_hi"] + 1e-12).all(), m
    assert ((table["cosine"] >= -1) & (table["cosine"] <= 1)).all()
    assert ((table["retrieval_top1"] >= 0) & (table["retrieval_top1"] <= 1)).all()


# ----------------------------------------------------------------------------------------------------------------
# Pooling on the tiny LLaMA


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The tiny LLaMA loaded: (model, tokenizer, path)."""
    return modeling.load_model(tiny_model), modeling.load_tokenizer(tiny_model), tiny_model


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
