"""The datasets (qalign_lib.data.corpora): loaders of the real and the synthetic data, missing and malformed files
named with the line and field, the data check's table."""
import json
import re

import pytest
from datasets import Dataset

from qalign_lib.core import benchmarks
from qalign_lib.core.errors import ConfigError
from qalign_lib.core.files import DataError
from qalign_lib.data import corpora, training_data
from tests.helpers import write_lines
from tests.synthetic import N_BENCH, N_TRAIN, make_data_dir, numbers


def test_datasets_cover_the_benchmark_registry():
    for b in benchmarks.REGISTRY.values():
        assert corpora.DATASETS[b.name].langs == b.langs and corpora.DATASETS[b.name].path == b.path


def test_real_data_loaders(real_data):
    mgsm = corpora.load_benchmark("mgsm", "te")
    assert isinstance(mgsm, Dataset) and len(mgsm) == 250
    assert mgsm[0]["id"] == 0 and mgsm[0]["answer"] == "18"  # Janet's ducks, in Telugu
    assert len(corpora.load_benchmark("msvamp", "bn")) == 1000
    assert len(corpora.load("gsm8k", split="train")) == 7473 and len(corpora.load("gsm8k", split="test")) == 1319
    assert len(corpora.load("gsm8kinstruct", "en")) == 7473
    q = corpora.load("gsm8kinstruct_question", "ru")
    assert len(q) == 7360 and set(q.column_names) >= {"id", "question", "question_en"}
    assert len(corpora.load("flores", "th", split="devtest")) == 1012
    gold = corpora.gold_answers("mgsm", "en")
    assert len(gold) == 250 and all(isinstance(v, float) for v in gold.values())


def test_synthetic_loaders(synthetic_data):
    mgsm = corpora.load_benchmark("mgsm", "te")
    assert isinstance(mgsm, Dataset) and len(mgsm) == N_BENCH and mgsm.column_names == ["id", "question", "answer"]
    assert corpora.load_benchmark("msvamp", "de", limit=3)["id"] == [0, 1, 2]
    assert corpora.gold_answers("mgsm", "sw") == {i: float(sum(numbers(i))) for i in range(N_BENCH)}
    assert len(corpora.load("gsm8k", split="train")) == N_TRAIN
    assert set(corpora.load("gsm8kinstruct_question", "ru").column_names) >= {"id", "question", "question_en"}


def test_requested_language_absent_is_error(synthetic_data):
    with pytest.raises(DataError, match="has no language 'te'"):
        corpora.load_benchmark("msvamp", "te")
    with pytest.raises(ConfigError, match="langs for x2en_question.*unknown or unsupported language code.*en"):
        training_data.build("x2en_question", "en")
    with pytest.raises(DataError, match="unknown task"):
        training_data.build("x2en_answers", "de")
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm8k'; choose from mgsm, msvamp"):
        corpora.load_benchmark("gsm8k", "en")


def test_malformed_rows_name_file_line_field(tmp_path, monkeypatch):
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    p = tmp_path / "mgsm" / "de.jsonl"
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n", json.dumps({"id": 1, "question": "b"}) + "\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl:2: missing field 'answer'"):
        corpora.load_benchmark("mgsm", "de")
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n", "{not json\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl:2: not valid JSON"):
        corpora.load_benchmark("mgsm", "de")
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "eighteen"}) + "\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl: row 1 \(id 0\): field 'answer' = 'eighteen' is not a finite number"):
        corpora.load_benchmark("mgsm", "de")
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n"] * 2)
    with pytest.raises(DataError, match="duplicate id 0"):
        corpora.load_benchmark("mgsm", "de")
    write_lines(tmp_path / "flores/devtest/de.txt", ["a\n", "\n", "c\n"])
    with pytest.raises(DataError, match=r"flores/devtest/de.txt:2: empty sentence"):
        corpora.read_rows("flores", "de")


def test_check_table(tmp_path):
    root = make_data_dir(tmp_path / "data", drop=["gsm8kinstruct_question/bn.jsonl"])
    table, missing = corpora.check({"mgsm": ["en"], "gsm8kinstruct_question": ["de", "bn"]}, root=root)
    assert "mgsm" in table and f"{N_BENCH}*" in table and f"{N_TRAIN - 1}*" in table
    assert len(missing) == 1 and "gsm8kinstruct_question [bn]" in missing[0] and "qalign data download" in missing[0]
    assert corpora.check(root=root)[1] == []


def test_check_table_on_the_real_snapshot(real_data):
    table, missing = corpora.check({"mgsm": ["en"], "gsm8kinstruct_question": ["de", "bn"]})
    assert "mgsm" in table and "250*" in table
    assert len(missing) == 1 and "gsm8kinstruct_question [bn]" in missing[0]


def test_benchmark_ids_and_questions_are_checked_when_read(tmp_path, monkeypatch):
    """Issue 21 case 10: an id [3], an id "5" among integer ids or a numeric question is a one-line DataError naming
    the file and row (score and analyze read through here), not a TypeError or pyarrow's ArrowInvalid."""
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    p = tmp_path / "mgsm" / "de.jsonl"
    good = json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n"
    for row, message in (({"id": [3], "question": "b", "answer": "2"}, "row 2: id [3] must be an integer or a string, "
                                                                        "all of one type (row 1's is int)"),
                         ({"id": "5", "question": "b", "answer": "2"}, "row 2: id '5' must be an integer or a string, "
                                                                       "all of one type (row 1's is int)"),
                         ({"id": 1, "question": 12345, "answer": "2"}, "row 2 (id 1): field 'question' must be a "
                                                                       "string, got int")):
        write_lines(p, [good, json.dumps(row) + "\n"])
        with pytest.raises(DataError, match=re.escape(f"{p}: {message}; correct the file or restore it")):
            corpora.load_benchmark("mgsm", "de")


@pytest.mark.parametrize("answer", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "1,0e999"])
def test_a_gold_answer_that_is_not_a_finite_number_is_refused(tmp_path, monkeypatch, answer):
    """Issue 21 case 12: gold "nan"/"inf" parse as floats but no response can ever match them (nan != nan): a one-line
    DataError naming the file and row, for every reader (score, evaluate, report read through read_rows)."""
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    p = tmp_path / "msvamp" / "fr.jsonl"
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "1,234"}) + "\n",
                    json.dumps({"id": 1, "question": "b", "answer": answer}) + "\n"])
    message = f"{p}: row 2 (id 1): field 'answer' = {answer!r} is not a finite number; correct the file or restore it"
    for read in (lambda: corpora.load_benchmark("msvamp", "fr"), lambda: corpora.gold_answers("msvamp", "fr")):
        with pytest.raises(DataError, match="^" + re.escape(message)):
            read()
    write_lines(p, [json.dumps({"id": 0, "question": "a", "answer": "1,234"}) + "\n"])
    assert corpora.gold_answers("msvamp", "fr") == {0: 1234.0}


def test_a_question_over_the_length_limit_is_refused(tmp_path, monkeypatch):
    """Issue 21 case 11: a 1,000,000-character question made `analyze representations --limit 2` try to allocate
    62.5 GB; the reader refuses any question over MAX_QUESTION_CHARS, naming the file, row and length."""
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    assert corpora.MAX_QUESTION_CHARS == 20_000
    p = tmp_path / "mgsm" / "de.jsonl"
    good = json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n"
    write_lines(p, [good, json.dumps({"id": 1, "question": "x" * 1_000_000, "answer": "2"}) + "\n"])
    with pytest.raises(DataError, match="^" + re.escape(
            f"{p}: row 2 (id 1): field 'question' is 1,000,000 characters, over the limit of 20,000 (a benchmark "
            f"question is a few hundred); correct the file or restore it")):
        corpora.read_rows("mgsm", "de")
    write_lines(p, [good, json.dumps({"id": 1, "question": "x" * 20_000, "answer": "2"}) + "\n"])  # at the limit: kept
    assert len(corpora.read_rows("mgsm", "de")[1]["question"]) == 20_000


def test_the_question_limit_is_far_above_every_real_question(real_data):
    """The limit's reason, measured on the snapshot: the longest mGSM question is 693 characters (de), mSVAMP's 404."""
    longest = {b.name: max(len(r[b.question_field]) for lang in b.langs for r in corpora.read_rows(b.name, lang))
               for b in benchmarks.REGISTRY.values()}
    assert longest == {"mgsm": 693, "msvamp": 404}
    assert corpora.MAX_QUESTION_CHARS >= 20 * max(longest.values())
