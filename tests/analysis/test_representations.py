"""Representation alignment (qalign_lib.analysis.representations): cosine and retrieval against hand-computed
values on tiny tensors, and pooling on the tiny LLaMA without padding or template leakage."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from qalign_lib.analysis import representations
from qalign_lib.core.config import Config
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
    assert list(pq.columns) == ["lang", "layer", "id", *representations.MEASURES, "nearest_en", "nearest_en_csls"]
    for layer in (0, 1):
        at = pq[pq["layer"] == layer].set_index("id")
        # cos(de_i, en_i): [1,0]·[1,0] = 1; [1,1]·[0,1] = 1/sqrt2; [0,1]·[1,1] = 1/sqrt2
        assert at["cosine"].tolist() == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(2)])
        # nearest English of [1,1] is [1,1] (id 12, not 11); of [0,1] it is [0,1] (id 11, not 12)
        assert at["retrieval_top1"].tolist() == [1, 0, 0]
        assert at["nearest_en"].tolist() == [10, 12, 11]
        # centred: both languages have mean [2/3, 2/3]; de_c = [1,-2]/3, [1,1]/3, [-2,1]/3; en_c = [1,-2]/3, [-2,1]/3, [1,1]/3
        assert at["centred_cosine"].tolist() == pytest.approx([1, -1 / math.sqrt(10), -1 / math.sqrt(10)])
        assert at["retrieval_top1_centred"].tolist() == [1, 0, 0]


# Four questions already centred (each language's mean is 0), so raw and centred agree. Cosines de_i . en_j:
#   de0=[1,0]:  [ 1,  0, -1,  0]
#   de1=[0,1]:  [ 0,  1,  0, -1]
#   de2=[0,-1]: [ 0, -1,  0,  1]
#   de3=[-1,0]: [-1,  0,  1,  0]
# every row and column sums to 0, so with k = 4 (capped at n) CSLS = 2 cos - 0 - 0.
EN4 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float)
DE4 = np.array([[1, 0], [0, 1], [0, -1], [-1, 0]], dtype=float)


def test_every_measure_by_hand_on_four_questions():
    pq = representations.per_question_similarity({"en": EN4[:, None], "de": DE4[:, None]}, ids=[0, 1, 2, 3]).set_index("id")
    assert pq["cosine"].tolist() == pytest.approx([1, 1, 0, 0])
    assert pq["centred_cosine"].tolist() == pytest.approx([1, 1, 0, 0])
    # margin: own cosine - mean of the three others: 1 - (0 - 1 + 0)/3 = 4/3 (twice); 0 - (0 - 1 + 1)/3 = 0 (twice)
    assert pq["margin"].tolist() == pytest.approx([4 / 3, 4 / 3, 0, 0])
    assert pq["retrieval_top1"].tolist() == [1, 1, 0, 0] and pq["retrieval_top1_centred"].tolist() == [1, 1, 0, 0]
    # de2's row [0, -2, 0, 2]: en3 scores higher, en0 ties and comes first -> rank 3; de3's row [-2, 0, 2, 0]: en2
    # higher, en1 ties first -> rank 3. En->X uses the columns: en2's [-2, 0, 0, 2] and en3's [0, -2, 2, 0] -> rank 3
    for direction in ("x2en", "en2x"):
        assert pq[f"csls_top1_{direction}"].tolist() == [1, 1, 0, 0]
        assert pq[f"csls_rr_{direction}"].tolist() == pytest.approx([1, 1, 1 / 3, 1 / 3])
    assert pq["csls_mrr"].tolist() == pytest.approx([1, 1, 1 / 3, 1 / 3])
    assert pq["nearest_en"].tolist() == [0, 1, 3, 2] and pq["nearest_en_csls"].tolist() == [0, 1, 3, 2]


def test_csls_matches_its_formula_with_a_small_k():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in y] for a in x])
    r_x = [np.mean(sorted(row)[-2:]) for row in cos]  # x_i's two nearest y
    r_y = [np.mean(sorted(col)[-2:]) for col in cos.T]  # y_j's two nearest x
    manual = np.array([[2 * cos[i, j] - r_x[i] - r_y[j] for j in range(5)] for i in range(5)])
    assert representations.csls(x, y, k=2) == pytest.approx(manual)
    assert representations.csls(x, y, k=50) == pytest.approx(2 * cos - cos.mean(1)[:, None] - cos.mean(0)[None, :])


def test_csls_demotes_a_hub():
    # every query is nearest to the hub h = [1, 1] by cosine; CSLS with k = 1 gives each its own counterpart
    hub = np.array([1.0, 1.0])
    y = np.stack([hub, [1, 0.2], [0.2, 1]])
    x = np.stack([[1.0, 0.95], [1, 0.6], [0.6, 1]])  # x0 is h's counterpart; x1, x2 nearest h by raw cosine too
    raw = representations._unit(x) @ representations._unit(y).T
    assert (raw.argmax(1) == 0).all()  # a hub: nearest English of all three
    assert representations.csls(x, y, k=1).argmax(1).tolist() == [0, 1, 2]


def test_centring_makes_the_centred_measures_blind_to_a_language_offset():
    rng = np.random.default_rng(1)
    en = rng.normal(size=(12, 2, 8))
    de = en + 0.3 * rng.normal(size=en.shape)
    base = representations.per_question_similarity({"en": en, "de": de}, list(range(12)))
    moved = representations.per_question_similarity({"en": en - 2.0, "de": de + 5.0}, list(range(12)))
    centred = ["centred_cosine", "margin", "retrieval_top1_centred", "csls_top1_x2en", "csls_top1_en2x",
               "csls_rr_x2en", "csls_rr_en2x", "csls_mrr"]
    assert moved[centred].to_numpy() == pytest.approx(base[centred].to_numpy())
    assert not np.allclose(moved["cosine"], base["cosine"])


def test_aligned_data_retrieves_perfectly_and_shuffled_data_is_at_chance():
    rng = np.random.default_rng(2)
    n, layers = 50, 1
    en = rng.normal(size=(n, layers, 32))
    aligned = representations.per_question_similarity({"en": en, "de": 3 * en + 0.01 * rng.normal(size=en.shape)},
                                                      list(range(n)))
    for m in ("csls_top1_x2en", "csls_top1_en2x", "csls_mrr", "retrieval_top1_centred"):
        assert aligned[m].tolist() == [1.0] * n, m
    # 40 languages whose questions are other questions' (shuffled) translations: every retrieval measure at chance
    states = {"en": en, **{f"l{k}": en[rng.permutation(n)] + 0.5 * rng.normal(size=en.shape) for k in range(40)}}
    shuffled = representations.per_question_similarity(states, list(range(n)))
    for m in ("csls_top1_x2en", "csls_top1_en2x", "retrieval_top1", "retrieval_top1_centred"):
        assert shuffled[m].mean() == pytest.approx(1 / n, abs=0.012), m  # 2000 draws: SE ~0.003
    for m in ("csls_rr_x2en", "csls_rr_en2x", "csls_mrr"):
        assert shuffled[m].mean() == pytest.approx(representations.harmonic_chance(n), abs=0.015), m
    assert abs(shuffled["margin"].mean()) < 0.01


def test_chance_levels():
    assert representations.harmonic_chance(4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert representations.harmonic_chance(1) == 1.0
    info = representations.MEASURE_INFO
    assert set(info) == set(representations.MEASURES)
    assert {m for m in info if info[m]["chance"] is None} == {"cosine", "centred_cosine", "margin"}
    assert info["csls_mrr"]["chance"](50) == pytest.approx(representations.harmonic_chance(50))
    assert info["csls_top1_x2en"]["chance"](50) == pytest.approx(0.02)
    assert set(representations.PRIMARY) == {"csls_mrr", "margin"} and set(representations.PRIMARY) <= set(info)


def test_summary_layers_leave_the_embeddings_out():
    assert representations.summary_layers(30) == list(range(1, 31))
    assert representations.summary_layers(1) == [1]
    with pytest.raises(ValueError, match="at least one"):
        representations.summary_layers(0)


def test_hubness_counts_the_queries_sharing_a_nearest_neighbour():
    pq = pd.DataFrame({"lang": ["de"] * 5 + ["fr"] * 5, "layer": 0, "id": list(range(5)) * 2,
                       "nearest_en": [3, 3, 3, 1, 0, 0, 1, 2, 3, 4]})
    assert representations.hubness(pq).set_index("lang")["hub"].to_dict() == {"de": 3, "fr": 1}


def test_similarity_table_values_cis_and_average():
    states = _states()
    states["fr"] = states["en"].copy()  # a perfect translation: cosine 1, retrieval 1
    table = representations.similarity_table(representations.per_question_similarity(states, ids=[0, 1, 2]), n_boot=200)
    row = table[(table["lang"] == "de") & (table["layer"] == 0)].iloc[0]
    assert row["cosine"] == pytest.approx((1 + 2 / math.sqrt(2)) / 3)
    assert row["retrieval_top1"] == pytest.approx(1 / 3) and row["chance"] == pytest.approx(1 / 3) and row["n"] == 3
    assert row["csls_mrr_chance"] == pytest.approx(representations.harmonic_chance(3))
    assert row["retrieval_top1_chance"] == pytest.approx(1 / 3) and "margin_chance" not in table.columns
    # de's nearest English: ids 0, 2, 1 -> no hub (1); fr = en -> 1; Avg: the mean
    assert row["hub"] == 1 and table[(table["lang"] == "Avg") & (table["layer"] == 0)].iloc[0]["hub"] == 1
    fr = table[(table["lang"] == "fr") & (table["layer"] == 0)].iloc[0]
    assert fr["cosine"] == pytest.approx(1) and fr["retrieval_top1"] == 1 and fr["retrieval_top1_lo"] == 1
    # fr = en: centred English [1,-2]/3, [-2,1]/3, [1,1]/3 have cosines -4/5 (0,1), -1/sqrt10 (0,2 and 1,2); margins
    # 1 + (4/5 + 1/sqrt10)/2 (twice) and 1 + 1/sqrt10
    assert fr["csls_mrr"] == pytest.approx(1)
    assert fr["margin"] == pytest.approx((2 * (1 + (0.8 + 1 / math.sqrt(10)) / 2) + 1 + 1 / math.sqrt(10)) / 3)
    avg = table[(table["lang"] == "Avg") & (table["layer"] == 0)].iloc[0]
    assert avg["cosine"] == pytest.approx((row["cosine"] + fr["cosine"]) / 2)
    for m in representations.MEASURES:
        assert (table[f"{m}_lo"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_hi"] + 1e-12).all(), m
    assert ((table["cosine"] >= -1) & (table["cosine"] <= 1)).all()
    assert ((table["retrieval_top1"] >= 0) & (table["retrieval_top1"] <= 1)).all()


def test_hub_columns_count_a_hub():
    # three German questions all nearest to English question 2 by raw cosine
    en = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=float)[:, None]
    de = np.array([[1, 0.1, 0.9], [0.1, 1, 0.9], [1, 1, 1.2]], dtype=float)[:, None]
    table = representations.similarity_table(representations.per_question_similarity({"en": en, "de": de}, [0, 1, 2]),
                                             n_boot=50)
    assert table["hub"].tolist() == [3]


# ----------------------------------------------------------------------------------------------------------------
# Pooling on the tiny LLaMA


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The tiny LLaMA loaded: (model, tokenizer, path)."""
    return modeling.load_model(tiny_model), modeling.load_tokenizer(tiny_model), tiny_model


def test_pooling_is_the_mean_over_the_question_tokens_without_padding(tiny):
    model, tok, _ = tiny
    texts = ["Tom has 3 apples.", "Tom has 3 apples and buys 5 more. How many apples does he have now?"]
    pooled = representations.pooled_states(model, tok, texts, batch_size=2, pooling="question")
    ids = tok(texts[0], add_special_tokens=True, return_special_tokens_mask=True)
    keep = [k for k, s in enumerate(ids["special_tokens_mask"]) if not s]
    with torch.no_grad():
        states = model.get_decoder()(input_ids=torch.tensor([ids["input_ids"]]), output_hidden_states=True).hidden_states
    manual = np.stack([h[0, keep].mean(0).numpy() for h in states])
    assert pooled.shape == (2, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert pooled[0] == pytest.approx(manual, abs=1e-5)  # batched beside a longer text = alone: no padding leaks in
    alone = representations.pooled_states(model, tok, texts[1:], batch_size=1, pooling="question")
    assert pooled[1] == pytest.approx(alone[0], abs=1e-5)


def test_the_sink_free_poolings_feed_but_do_not_pool_the_first_position(tiny):
    model, tok, _ = tiny
    text = "Tom has 3 apples and buys 5 more."
    plain, every = representations._question_positions(tok, text, "question")
    ids, keep = representations._question_positions(tok, text, "question_skip_first")
    assert ids == plain and keep == every[1:] and 0 not in keep
    ids, keep = representations._question_positions(tok, text, "bos_prefix")
    assert ids == [representations.sink_token_id(tok), *plain] and keep == [k + 1 for k in every]
    # pooled: the mean over exactly those positions
    with torch.no_grad():
        states = model.get_decoder()(input_ids=torch.tensor([plain]), output_hidden_states=True).hidden_states
    manual = np.stack([h[0, every[1:]].mean(0).numpy() for h in states])
    assert representations.pooled_states(model, tok, [text], pooling="question_skip_first")[0] == pytest.approx(manual, abs=1e-5)
    assert representations.pooled_lengths(tok, [text], "question_skip_first").tolist() == [len(every) - 1]
    assert Config.__dataclass_fields__["representation_pooling"].default == "template"


def test_template_pooling_covers_the_question_tokens_only(tiny):
    _, tok, _ = tiny
    question = "Tom has 3 apples and buys 5 more."
    ids, keep = representations._question_positions(tok, question, "template")
    assert tok.decode([ids[k] for k in keep]).strip() == question
    assert len(ids) > len(keep)  # the template's tokens are fed but not pooled
    with pytest.raises(ConfigError, match="representation_pooling"):
        representations._question_positions(tok, question, "last")


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_pooling_diagnostics_by_hand():
    # one layer, 3 questions; English vectors along dimension 0 scaled by 1/length (a sink-like artefact), German
    # equal to English: the energy is all in dimension 0, and the norm falls as the length grows
    lengths = {"en": np.array([2, 4, 8]), "de": np.array([3, 5, 9])}
    en = np.array([[1 / 2, 0, 0], [1 / 4, 0, 0], [1 / 8, 0, 0]])[:, None]
    de = np.array([[1 / 3, 0, 0], [1 / 5, 0, 0], [1 / 9, 0, 0]])[:, None]
    diag = representations.pooling_diagnostics({"en": en, "de": de}, lengths).iloc[0]
    assert diag["maxdim_share"] == pytest.approx(1.0) and diag["maxdim"] == 0
    assert diag["rho_norm"] == pytest.approx(-1.0)
    # centred: en [5/24, -1/24, -4/24], de along the same axis with the same signs: cosines 1, 1, 1 -> rho undefined
    assert np.isnan(diag["rho_cos"])
    # energy spread evenly over two dimensions: share 1/2
    even = {"en": np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=float)[:, None]}
    even["de"] = even["en"].copy()
    spread = representations.pooling_diagnostics(even, {"en": np.arange(4), "de": np.arange(4)}).iloc[0]
    assert spread["maxdim_share"] == pytest.approx(0.5)


def test_read_per_question_checks_every_language_layer_and_id(tmp_path):
    """Issue 21 case 2: even with matching hashes, a table that misses an id of one layer, or a language of the
    settings, is a one-line error naming the file (never a partial result)."""
    import re

    import pandas as pd
    import pytest

    from qalign_lib.analysis import representations as rep
    from qalign_lib.core import files, layout
    from qalign_lib.core.errors import ResultsError

    out = layout.RepresentationDir(tmp_path / "r")
    out.path.mkdir()
    frame = pd.DataFrame([{"lang": lang, "layer": layer, "id": i, **{m: 0.5 for m in rep.MEASURES},
                           "nearest_en": i, "nearest_en_csls": i}
                          for lang in ("de", "fr") for layer in range(3) for i in range(4)])[list(rep.PER_QUESTION)]

    def store(table, langs=("de", "fr")):
        table.to_csv(out.per_question, index=False)
        table.head(1).to_csv(out.similarity, index=False)
        files.write_json(out.settings, {"langs": list(langs), "ids": [0, 1, 2, 3],
                                        "outputs": {p.name: files.file_hash(p) for p in (out.per_question, out.similarity)}})

    store(frame)
    assert len(rep.read_per_question(out)) == 24
    store(frame.drop(index=5))
    with pytest.raises(ResultsError, match=re.escape(f"{out.per_question}: de layer 1: not every id of settings.json "
                                                     "exactly once; delete it to recompute it")):
        rep.read_per_question(out)
    store(frame, langs=("de", "fr", "zh"))
    with pytest.raises(ResultsError, match=re.escape(f"{out.per_question}: languages ['de', 'fr'], settings.json says "
                                                     "['de', 'fr', 'zh']")):
        rep.read_per_question(out)
    store(frame[frame["layer"] != 2].reset_index(drop=True).pipe(lambda f: pd.concat([f, frame[(frame["layer"] == 2) & (frame["lang"] == "de")]])))
    with pytest.raises(ResultsError, match=re.escape(f"{out.per_question}: fr has layers")):
        rep.read_per_question(out)


def test_a_question_longer_than_the_model_is_cut_to_its_positions(tiny, monkeypatch, caplog):
    """Issue 21 case 11: a 1,000,000-character question made the forward pass ask for 62.5 GB; the model is never
    fed more tokens than it has positions (a spy refuses a wider batch before anything is computed)."""
    model, tok, _ = tiny
    limit = representations.max_positions(model, tok)
    assert limit == model.config.max_position_embeddings == 1024  # the tokenizer sets no limit (1e30)
    long = "Tom has 3 apples and buys 5 more. " * 400
    decoder, widths = model.get_decoder(), []

    def spy(input_ids, **kwargs):
        widths.append(input_ids.shape[1])
        assert input_ids.shape[1] <= limit, f"fed {input_ids.shape[1]} tokens to a model of {limit} positions"
        return decoder(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "get_decoder", lambda: spy)
    ids, keep = representations._question_positions(tok, long, "question")
    assert len(ids) > limit
    with caplog.at_level("WARNING", logger="qalign.analysis.representations"):
        pooled = representations.pooled_states(model, tok, [long, "Tom has 3 apples."], batch_size=2,
                                               pooling="question")
    assert widths == [limit]
    assert "1 question(s) longer than the model's 1024 positions are cut to their first 1024 tokens" in caplog.text
    with torch.no_grad():
        states = decoder(input_ids=torch.tensor([ids[:limit]]), output_hidden_states=True).hidden_states
    manual = np.stack([h[0, [k for k in keep if k < limit]].mean(0).numpy() for h in states])
    assert pooled[0] == pytest.approx(manual, abs=1e-5)
    short = representations.pooled_states(model, tok, ["Tom has 3 apples."], pooling="question", max_tokens=4)
    assert widths[-1] == 4 and short.shape[0] == 1  # an explicit limit wins
