"""Training examples (qalign_lib.data.training_data): pairs aligned by id, never by line; limits per language;
mixtures shuffled with the seed; missing files named with what to do; and the exact prompt of every task (the suite
fails if a template or an instruction format changes by one byte; against the reference's own code:
tests/data/test_training_data_fidelity.py)."""
import json

import pytest

from qalign_lib.core.files import DataError
from qalign_lib.data import corpora, training_data
from tests.helpers import ALPACA_HEADER, write_lines
from tests.synthetic import N_TRAIN


# ----------------------------------------------------------------------------------------------------------------
# Pairs, limits, mixtures and missing files


def test_real_question_pairs_aligned_by_id(real_data):
    # zh and de cover different GSM8K rows: the same example id must carry the same English question
    en_by_id = {r["id"]: r["question"] for r in corpora.read_rows("gsm8k", split="train")}
    rows = training_data.build("x2en_question", "zh", limit=50)
    for row in rows:
        ident = int(row["id"].split("-")[1])
        assert " ".join(row["completion"].split()) == " ".join(en_by_id[ident].split())


def test_real_missing_datasets_are_errors(real_data):
    with pytest.raises(DataError, match=r"missing file .*gsm8kinstruct_question/bn.jsonl: the bn and th translations"):
        training_data.build("x2en_question", "bn")
    with pytest.raises(DataError, match=r"missing file .*metamathqa.jsonl: MetaMathQA is not in the offline snapshot.*qalign data download"):
        training_data.build("metamathqa")
    with pytest.raises(DataError, match=r"missing file .*gsm8kinstruct/de.jsonl: multilingual GSM8KInstruct answers"):
        training_data.build("x2en_response", "de")


def test_parallel_files_share_no_id_is_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    write_lines(tmp_path / "gsm8kinstruct/en.jsonl", [json.dumps({"id": 1, "question": "q", "answer": "a"}) + "\n"])
    write_lines(tmp_path / "gsm8kinstruct/de.jsonl", [json.dumps({"id": 2, "question": "q", "answer": "a"}) + "\n"])
    with pytest.raises(DataError, match="share no id"):
        training_data.build("x2en_response", "de")
    write_lines(tmp_path / "flores/devtest/en.txt", ["a\n", "b\n"])
    write_lines(tmp_path / "flores/devtest/de.txt", ["a\n"])
    with pytest.raises(DataError, match="must be line-aligned"):
        training_data.build("flores_x2en", "de")


def test_limit_is_per_language(synthetic_data):
    rows = training_data.build("x2en_question", "de,zh", limit=3)
    assert [r["lang"] for r in rows] == ["de"] * 3 + ["zh"] * 3


def test_question_pairs_aligned_by_id(synthetic_data):
    # each language's question file misses a different id: pairs are matched by id, never by line
    en_by_id = {r["id"]: r["question"] for r in corpora.read_rows("gsm8k", split="train")}
    for lang in ("bn", "de"):
        rows = training_data.build("x2en_question", lang)
        assert len(rows) == N_TRAIN - 1
        for row in rows:
            assert row["completion"] == en_by_id[int(row["id"].split("-")[1])]


def test_mixture_shuffles_with_the_seed(synthetic_data):
    a = training_data.build_mixture(["x2en_question", "gsm8kinstruct"], "de,fr", limit=4, seed=1)
    assert a == training_data.build_mixture(["x2en_question", "gsm8kinstruct"], "de,fr", limit=4, seed=1)
    b = training_data.build_mixture(["x2en_question", "gsm8kinstruct"], "de,fr", limit=4, seed=2)
    assert a != b and sorted(map(str, a)) == sorted(map(str, b)) and len(a) == 16


# ----------------------------------------------------------------------------------------------------------------
# The exact prompt of every task


@pytest.fixture
def fixture_data(tmp_path, monkeypatch):
    import json

    def write(rel, rows):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    write("gsm8kinstruct_question/de.jsonl", [{"id": 5, "question_en": "How many?", "question": "Wie viele?"}])
    write("gsm8kinstruct/en.jsonl", [{"id": 5, "question": "How many?", "answer": "Two.\n#### 2"},
                                     {"id": 6, "question": "Q6", "answer": "#### 6"}])
    write("gsm8kinstruct/de.jsonl", [{"id": 6, "question": "F6", "answer": "#### 6 (de)"},
                                     {"id": 5, "question": "Wie viele?", "answer": "Zwei.\n#### 2"}])
    write("gsm8k/train.jsonl", [{"id": 0, "question": "Natalia?", "answer": "48/2 = <<48/2=24>>24\n#### 72", "final": "72"}])
    write("metamathqa/metamathqa.jsonl", [{"query": "What is 1+1?", "response": "1+1=2. The answer is: 2", "type": "GSM_AnsAug"}])
    (tmp_path / "flores/devtest").mkdir(parents=True)
    (tmp_path / "flores/devtest/de.txt").write_text("Guten Tag.\nZweiter Satz.\n", encoding="utf-8")
    (tmp_path / "flores/devtest/en.txt").write_text("Good day.\nSecond sentence.\n", encoding="utf-8")
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    return tmp_path


def test_every_task_prompt_exact(fixture_data):
    t = "Translate the following sentences from "
    expected = {
        "x2en_question": (ALPACA_HEADER + t + "German to English. Wie viele?\n\n### Response:", "How many?", "de-5"),
        "en2x_question": (ALPACA_HEADER + t + "English to German. How many?\n\n### Response:", "Wie viele?", "de-5"),
        "x2en_response": (ALPACA_HEADER + t + "German to English. #### 6 (de)\n\n### Response:", "#### 6", "de-6"),
        "en2x_response": (ALPACA_HEADER + t + "English to German. #### 6\n\n### Response:", "#### 6 (de)", "de-6"),
        "flores_x2en": (ALPACA_HEADER + t + "German to English. Guten Tag.\n\n### Response:", "Good day.", "de-0"),
    }
    for task, (prompt, completion, ident) in expected.items():
        rows = training_data.build(task, "de")
        assert rows[0] == {"prompt": prompt, "completion": completion, "lang": "de", "id": ident}, task
    # responses are aligned by id, not by line: de.jsonl lists id 6 first, en.jsonl id 5 first
    assert [r["id"] for r in training_data.build("x2en_response", "de")] == ["de-6", "de-5"]
    assert training_data.build("x2en_response", "de")[1]["completion"] == "Two.\n#### 2"


def test_stage2_prompts_exact(fixture_data):
    assert training_data.build("gsm8k") == [{"prompt": ALPACA_HEADER + "Natalia?\n\n### Response:", "completion": "48/2 = <<48/2=24>>24\n#### 72",
                                    "lang": "en", "id": "gsm8k-0"}]
    assert training_data.build("metamathqa") == [{"prompt": ALPACA_HEADER + "What is 1+1?\n\n### Response:",
                                         "completion": "1+1=2. The answer is: 2", "lang": "en", "id": "metamathqa-0"}]
    rows = training_data.build("gsm8kinstruct", "de,en")
    assert rows[0]["prompt"] == ALPACA_HEADER + "F6\n\n### Response:" and rows[0]["id"] == "gsm8kinstruct-de-6"


def test_mixture_is_shuffled_with_seed(fixture_data):
    a = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=1)
    b = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=1)
    c = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=2)
    assert a == b and sorted(r["id"] for r in a) == sorted(r["id"] for r in c) and len(a) == 5


# ----------------------------------------------------------------------------------------------------------------
# Seeded subsets, the shuffled control and token matching


def _words(text: str) -> int:
    return len(text.split())


def test_seeded_subset_is_a_fixed_sample_shared_by_languages_and_nested(synthetic_data):
    first = training_data.build("x2en_question", "de", limit=4)
    assert [r["id"] for r in first] == ["de-0", "de-1", "de-2", "de-3"]  # no seed: the first N in file order, as before
    assert training_data.build("x2en_question", "de", limit=4, subset_seed=None) == first
    a = training_data.build("x2en_question", "de,fr", limit=4, subset_seed=1)
    assert a == training_data.build("x2en_question", "de,fr", limit=4, subset_seed=1)  # fixed
    de, fr = ([r["id"].split("-")[1] for r in a if r["lang"] == lang] for lang in ("de", "fr"))
    assert len(de) == 4 and de != ["0", "1", "2", "3"]
    pool = {"de": set(range(40)) - {5}, "fr": set(range(40)) - {6}}  # each language misses one id (tests/synthetic.py)
    expected = sorted(pool["de"] & pool["fr"], key=lambda i: training_data._key(1, {"id": f"x-{i}", "lang": "x"}))[:4]
    assert de == fr == [str(i) for i in expected]  # the same source questions in both languages
    b = training_data.build("x2en_question", "de,fr", limit=4, subset_seed=2)
    assert [r["id"] for r in a] != [r["id"] for r in b]
    big = training_data.build("x2en_question", "de", limit=12, subset_seed=1)
    assert big[:4] == [r for r in a if r["lang"] == "de"]  # a smaller sample is a prefix of a larger one
    en2x = training_data.build("en2x_question", "de,fr", limit=4, subset_seed=1)
    assert [r["id"] for r in en2x] == [r["id"] for r in a]  # the same questions across the variants of one seed


def test_shuffled_control_is_an_exact_derangement_of_the_same_targets(synthetic_data):
    for seed in (None, 1, 2):
        real = training_data.build("x2en_question", "de,fr", limit=6, subset_seed=seed)
        shuffled = training_data.build("x2en_question_shuffled", "de,fr", limit=6, subset_seed=seed)
        assert [(r["prompt"], r["lang"], r["id"]) for r in shuffled] == [(r["prompt"], r["lang"], r["id"]) for r in real]
        for lang in ("de", "fr"):
            mine = [r["completion"] for r in real if r["lang"] == lang]
            theirs = [r["completion"] for r in shuffled if r["lang"] == lang]
            assert sorted(theirs) == sorted(mine)  # the same English outputs, within the language
            assert all(x != y for x, y in zip(mine, theirs))  # no question keeps its own translation
    again = training_data.build("x2en_question_shuffled", "de", limit=6, subset_seed=1)
    assert again == [r for r in training_data.build("x2en_question_shuffled", "de,fr", limit=6, subset_seed=1)
                     if r["lang"] == "de"]  # fixed, whatever else is built
    assert set(training_data.STAGE1_TASKS) >= {"x2en_question_shuffled"}
    assert training_data.NEEDS["x2en_question_shuffled"](["de"]) == {"gsm8kinstruct_question": ["de"]}


def test_derange_exact_and_its_limits():
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "lang": "de", "id": f"de-{i}"} for i in range(2)]
    assert [r["completion"] for r in training_data.derange(rows, 1, "de")] == ["c1", "c0"]  # the only derangement of 2
    dup = [{**rows[0], "completion": "same"}, {**rows[1], "completion": "same"}]
    with pytest.raises(DataError, match=r"cannot be deranged; select at least 2 per language"):
        training_data.derange(dup, 1, "de")
    with pytest.raises(DataError, match=r"1 example\(s\) with 1 distinct target"):
        training_data.derange(rows[:1], 1, "de")


def test_token_matching_cuts_each_language_to_the_reference_tokens(synthetic_data):
    ref = training_data.build("x2en_question", "de,fr", limit=4, subset_seed=1)
    matched = training_data.build("flores_x2en", "de,fr", limit=4, subset_seed=1, match="x2en_question", count_tokens=len)
    for lang in ("de", "fr"):
        budget = training_data.target_tokens([r for r in ref if r["lang"] == lang], len)  # characters here
        mine = [r for r in matched if r["lang"] == lang]
        flores = training_data.ordered(training_data.TASKS["flores_x2en"](lang), 1)
        assert mine == flores[:len(mine)]  # a prefix of the seeded order, the limit ignored
        sums = [training_data.target_tokens(flores[:k], len) for k in range(len(flores) + 1)]
        best = min(range(len(sums)), key=lambda k: (abs(sums[k] - budget), k))
        assert len(mine) == best > 0
    with pytest.raises(DataError, match=r"fewer than the .* to match"):
        training_data.build("flores_x2en", "de", limit=30, match="x2en_question", count_tokens=_words)
    with pytest.raises(DataError, match="needs a token counter"):
        training_data.build("flores_x2en", "de", limit=4, match="x2en_question")
    with pytest.raises(DataError, match="must be stage-1 tasks"):
        training_data.build("flores_x2en", "de", limit=4, match="gsm8k", count_tokens=_words)
