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
