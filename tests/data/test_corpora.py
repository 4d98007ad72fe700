import json

import pytest
from datasets import Dataset

from qalign_lib.core import benchmarks, languages
from qalign_lib.core.errors import ConfigError
from qalign_lib.core.files import DataError
from qalign_lib.data import corpora, training_data
from tests.synthetic import N_BENCH, N_TRAIN, make_data_dir, numbers


def test_language_registry():
    assert languages.LANGS == ("bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en")
    assert [languages.name(c) for c in languages.LANGS] == [
        "Bengali", "Thai", "Swahili", "Japanese", "Chinese", "German", "French", "Russian", "Spanish", "English"]
    assert benchmarks.get("mgsm").langs[-1] == "te" and "en" not in languages.NON_EN
    assert benchmarks.get("mgsm").extra == ("te",) and benchmarks.get("msvamp").langs == languages.LANGS
    assert languages.parse_langs("de, zh,de") == ["de", "zh"]
    assert languages.parse_langs("non_en") == list(languages.NON_EN)
    with pytest.raises(ConfigError, match="unknown or unsupported language code.*xx"):
        languages.parse_langs("de,xx")
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        languages.name("xx")


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


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def test_malformed_rows_name_file_line_field(tmp_path, monkeypatch):
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    p = tmp_path / "mgsm" / "de.jsonl"
    _write(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n", json.dumps({"id": 1, "question": "b"}) + "\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl:2: missing field 'answer'"):
        corpora.load_benchmark("mgsm", "de")
    _write(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n", "{not json\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl:2: not valid JSON"):
        corpora.load_benchmark("mgsm", "de")
    _write(p, [json.dumps({"id": 0, "question": "a", "answer": "eighteen"}) + "\n"])
    with pytest.raises(DataError, match=r"mgsm/de.jsonl: row 1 \(id 0\): field 'answer' = 'eighteen' is not a number"):
        corpora.load_benchmark("mgsm", "de")
    _write(p, [json.dumps({"id": 0, "question": "a", "answer": "1"}) + "\n"] * 2)
    with pytest.raises(DataError, match="duplicate id 0"):
        corpora.load_benchmark("mgsm", "de")
    _write(tmp_path / "flores/devtest/de.txt", ["a\n", "\n", "c\n"])
    with pytest.raises(DataError, match=r"flores/devtest/de.txt:2: empty sentence"):
        corpora.read_rows("flores", "de")


def test_parallel_files_share_no_id_is_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    _write(tmp_path / "gsm8kinstruct/en.jsonl", [json.dumps({"id": 1, "question": "q", "answer": "a"}) + "\n"])
    _write(tmp_path / "gsm8kinstruct/de.jsonl", [json.dumps({"id": 2, "question": "q", "answer": "a"}) + "\n"])
    with pytest.raises(DataError, match="share no id"):
        training_data.build("x2en_response", "de")
    _write(tmp_path / "flores/devtest/en.txt", ["a\n", "b\n"])
    _write(tmp_path / "flores/devtest/de.txt", ["a\n"])
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
