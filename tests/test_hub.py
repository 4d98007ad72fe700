"""qalign_lib.hub: normalizers on tiny rows in each hub schema, and download() failing fast and clearly offline."""
from __future__ import annotations

import json
import time

import pytest

from qalign_lib import benchmarks, hub
from qalign_lib.io import DataError
from qalign_lib.languages import LANGS, NAMES, NON_EN


# --- tiny rows in the hub schemas ---------------------------------------------------------------------------------

def mgsm_rows():
    return [{"question": "Janet has 16 eggs.", "answer": None, "answer_number": 18, "equation_solution": None},
            {"question": "A robe takes 2 bolts.", "answer": None, "answer_number": 2125, "equation_solution": None},
            {"question": "A mirror stores text.", "answer": None, "answer_number": "1,000", "equation_solution": None}]


def msvamp_rows(lang: str):
    rows = [{"query": "julia played tag with 18 kids .", "equation": "- number0 number1", "response": "8.0",
             "m_query": " Julia spielte mit 18 Kindern."},
            {"query": "bobby ate 2 candies .", "equation": "+ number0 number1", "response": "2.0",
             "m_query": "Bobby aß 2 Bonbons."}]
    if lang == "en":  # test_English.json has no `query`: m_query is the English question
        rows = [{"m_query": r["query"], "equation": r["equation"], "response": r["response"]} for r in rows]
    return rows


GSM8K_TRAIN = [{"question": "Natalia sold 48 clips in April.", "answer": "48/2 = <<48/2=24>>24\n#### 72"},
               {"question": "Weng earns $12 an hour.  How much?", "answer": "12/60 = <<12/60=0.2>>0.2\n#### 10"},
               {"question": "Betty needs $1,000 for a wallet.", "answer": "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005"}]

COTS = {0: "April: 48/2 = <<48/2=24>>24.\n#### 72", 1: "Rate: <<12/60=0.2>>0.2.\n#### 10",
        2: "Half: <<100/2=50>>50.\n#### 1,005"}


def instruct_row(lang: str, question: str, answer: str) -> dict:
    name = NAMES[lang]
    prompt = (f"Below is an instruction that describes a task. Write a response that appropriately completes the "
              f"request in {name}. Please answer in {name}. \n### Instruction:\n{question}\n\n### Response:")
    return {"prompt": prompt, "chosen": " " + answer + "\n", "rejected": None}


def instruct_rows():
    """Shuffled across and within languages; English whitespace differs from GSM8K's; translated CoTs keep the
    calculator annotations and the final answer. The es row is an untranslated question that mentions "English"."""
    return [instruct_row("de", "Betty braucht 1.000 $.", "Hälfte: <<100/2=50>>50.\n#### 1,005"),
            instruct_row("en", "Weng earns $12 an hour. How much?", COTS[1]),
            instruct_row("fr", "Weng gagne 12 $ par heure.", "Taux : <<12/60=0.2>>0.2.\n#### 10"),
            instruct_row("en", "Betty needs $1,000 for a wallet.", COTS[2]),
            instruct_row("de", "Natalia verkaufte 48 Clips.", "April: 48/2 = <<48/2=24>>24.\n#### 72"),
            instruct_row("es", "Natalia sold 48 clips in April. Answer in English words.",
                         "Abril: 48/2 = <<48/2=24>>24.\n#### 72"),
            instruct_row("en", " Natalia sold 48 clips\nin April. ", COTS[0]),
            instruct_row("ja", "ベティは1,000ドル必要です。", "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005")]


def flores_rows(lang: str, split: str):
    config = hub.FLORES_CONFIGS[lang]
    iso, script = config.split("_")
    return [{"id": i, "iso_639_3": iso, "iso_15924": script, "glottocode": "x", "text": f"{lang} {split} sentence {i}",
             "url": "u", "domain": "d", "topic": "t", "has_image": False, "has_hyperlink": False} for i in (2, 0, 1)]


def metamathqa_rows():
    return [{"type": "GSM_Rephrased", "query": "What is 1+1?", "original_question": "1+1?",
             "response": "1+1=2. The answer is: 2"}]


# --- normalizers --------------------------------------------------------------------------------------------------

def test_mgsm_ids_and_answers():
    assert hub.normalize_mgsm(mgsm_rows()) == [
        {"id": 0, "question": "Janet has 16 eggs.", "answer": "18", "answer_raw": "18"},
        {"id": 1, "question": "A robe takes 2 bolts.", "answer": "2125", "answer_raw": "2125"},
        {"id": 2, "question": "A mirror stores text.", "answer": "1000", "answer_raw": "1,000"}]


@pytest.mark.parametrize("value,expected", [("2,125", "2125"), ("8.0", "8"), (18, "18"), (18.0, "18"),
                                            ("2.50", "2.5"), ("-3", "-3"), (" 114,200 ", "114200")])
def test_number(value, expected):
    assert hub.number(value) == expected


def test_number_rejects_text():
    with pytest.raises(DataError, match="answer_number"):
        hub.normalize_mgsm([{"question": "q", "answer_number": "seven"}], "mgsm en")


def test_mgsm_missing_field_is_named():
    with pytest.raises(DataError, match=r"mgsm en row 1: field 'answer_number' is missing"):
        hub.normalize_mgsm([mgsm_rows()[0], {"question": "q"}], "mgsm en")
    with pytest.raises(DataError, match=r"field 'question' is a int"):
        hub.normalize_mgsm([{"question": 3, "answer_number": 1}])


def test_msvamp():
    assert hub.normalize_msvamp(msvamp_rows("de")) == [
        {"id": 0, "question": " Julia spielte mit 18 Kindern.", "answer": "8", "answer_raw": "8.0",
         "equation": "- number0 number1", "question_en": "julia played tag with 18 kids ."},
        {"id": 1, "question": "Bobby aß 2 Bonbons.", "answer": "2", "answer_raw": "2.0",
         "equation": "+ number0 number1", "question_en": "bobby ate 2 candies ."}]
    en = hub.normalize_msvamp(msvamp_rows("en"))
    assert [r["question_en"] for r in en] == [r["question"] for r in en] == [
        "julia played tag with 18 kids .", "bobby ate 2 candies ."]


def test_msvamp_missing_field_is_named():
    with pytest.raises(DataError, match=r"field 'response' is missing"):
        hub.normalize_msvamp([{"m_query": "q", "equation": "x"}])


def test_gsm8k():
    assert hub.normalize_gsm8k(GSM8K_TRAIN)[2] == {
        "id": 2, "question": "Betty needs $1,000 for a wallet.", "answer": "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005",
        "final": "1005"}
    with pytest.raises(DataError, match=r"gsm8k row 0: field 'answer' has no '####"):
        hub.normalize_gsm8k([{"question": "q", "answer": "no final line"}])


def test_gsm8kinstruct_aligns_by_content_not_position():
    train = hub.normalize_gsm8k(GSM8K_TRAIN)
    inst = hub.normalize_gsm8kinstruct(instruct_rows(), train)
    assert inst["en"] == [
        {"id": 0, "gsm8k_idx": 0, "question": "Natalia sold 48 clips\nin April.", "answer": COTS[0]},
        {"id": 1, "gsm8k_idx": 1, "question": "Weng earns $12 an hour. How much?", "answer": COTS[1]},
        {"id": 2, "gsm8k_idx": 2, "question": "Betty needs $1,000 for a wallet.", "answer": COTS[2]}]
    assert [(r["id"], r["question"]) for r in inst["de"]] == [(0, "Natalia verkaufte 48 Clips."),
                                                             (2, "Betty braucht 1.000 $.")]
    assert [(r["id"], r["answer"]) for r in inst["fr"]] == [(1, "Taux : <<12/60=0.2>>0.2.\n#### 10")]
    # filed by the template's language, not by the first language name in the question
    assert [r["id"] for r in inst["es"]] == [0]
    assert inst["bn"] == []
    # a translation of GSM8K's original chain of thought (not MathOctopus's English one) aligns too
    assert [(r["id"], r["question"]) for r in inst["ja"]] == [(2, "ベティは1,000ドル必要です。")]
    q = hub.derive_questions(inst)
    assert set(q) == set(NON_EN)
    assert q["de"] == [
        {"id": 0, "question_en": "Natalia sold 48 clips\nin April.", "question": "Natalia verkaufte 48 Clips."},
        {"id": 2, "question_en": "Betty needs $1,000 for a wallet.", "question": "Betty braucht 1.000 $."}]


def test_gsm8kinstruct_ambiguous_and_unmatched_rows_are_left_out():
    train = hub.normalize_gsm8k(GSM8K_TRAIN)
    rows = instruct_rows() + [instruct_row("en", "A question that is not in GSM8K.", "<<1+1=2>>2\n#### 2"),
                              instruct_row("de", "Unbekannt.", "<<9*9=81>>81\n#### 81"),
                              instruct_row("fr", "Weng, encore.", "Taux : <<12/60=0.2>>0.2.\n#### 10")]
    inst = hub.normalize_gsm8kinstruct(rows, train, min_aligned=0.0)
    assert [r["id"] for r in inst["en"]] == [0, 1, 2]
    assert [r["id"] for r in inst["de"]] == [0, 2]
    assert inst["fr"] == []  # two French rows claim GSM8K row 1: ambiguous, both left out
    with pytest.raises(DataError, match=r"only 2 of 3 German rows could be aligned"):
        hub.normalize_gsm8kinstruct(rows, train)


def test_gsm8kinstruct_malformed_rows():
    train = hub.normalize_gsm8k(GSM8K_TRAIN)
    with pytest.raises(DataError, match=r"row 0: field 'chosen' is missing"):
        hub.normalize_gsm8kinstruct([{"prompt": instruct_row("en", "q", "a")["prompt"]}], train)
    with pytest.raises(DataError, match=r"row 0: field 'prompt' names no known language"):
        hub.normalize_gsm8kinstruct([{"prompt": "### Instruction:\nq\n\n### Response:", "chosen": "a"}], train)
    with pytest.raises(DataError, match=r"row 0: field 'prompt' has no '### Instruction:'"):
        hub.normalize_gsm8kinstruct([{"prompt": "Solve q", "chosen": "a"}], train)


def test_flores_orders_by_id_and_checks_alignment():
    out = hub.normalize_flores({lang: flores_rows(lang, "dev") for lang in ("en", "zh")})
    assert out == {"en": ["en dev sentence 0", "en dev sentence 1", "en dev sentence 2"],
                   "zh": ["zh dev sentence 0", "zh dev sentence 1", "zh dev sentence 2"]}
    with pytest.raises(DataError, match=r"flores de: field 'id' values differ"):
        hub.normalize_flores({"en": flores_rows("en", "dev"), "de": flores_rows("de", "dev")[:2]})
    wrong = [dict(r, iso_639_3="zho") for r in flores_rows("zh", "dev")]
    with pytest.raises(DataError, match=r"'iso_639_3'/'iso_15924' say zho_Hans, expected cmn_Hans"):
        hub.normalize_flores({"zh": wrong})
    broken = [dict(r, text="two\nlines") for r in flores_rows("en", "dev")]
    with pytest.raises(DataError, match=r"field 'text' contains a line break"):
        hub.normalize_flores({"en": broken})
    with pytest.raises(DataError, match=r"field 'id' is missing"):
        hub.normalize_flores({"en": [{"text": "x"}]})


def test_metamathqa():
    assert hub.normalize_metamathqa(metamathqa_rows()) == [
        {"id": 0, "query": "What is 1+1?", "response": "1+1=2. The answer is: 2", "type": "GSM_Rephrased"}]
    with pytest.raises(DataError, match=r"field 'type' is missing"):
        hub.normalize_metamathqa([{"query": "q", "response": "r"}])


def test_sources_cover_the_language_registry():
    assert list(hub.SOURCES["mgsm"].configs) == list(benchmarks.get("mgsm").langs)
    assert list(hub.SOURCES["msvamp"].configs) == list(benchmarks.get("msvamp").langs) == list(LANGS)
    assert set(hub.FLORES_CONFIGS) == set(LANGS)


# --- same fields as the real normalized files ---------------------------------------------------------------------

def _real_fields(root, rel: str) -> list[str]:
    with (root / rel).open(encoding="utf-8") as f:
        return list(json.loads(f.readline()))


def test_fields_match_real_files(real_data):
    inst = hub.normalize_gsm8kinstruct(instruct_rows(), hub.normalize_gsm8k(GSM8K_TRAIN))
    produced = {"mgsm/en.jsonl": hub.normalize_mgsm(mgsm_rows()),
                "msvamp/en.jsonl": hub.normalize_msvamp(msvamp_rows("en")),
                "msvamp/de.jsonl": hub.normalize_msvamp(msvamp_rows("de")),
                "gsm8k/train.jsonl": hub.normalize_gsm8k(GSM8K_TRAIN),
                "gsm8kinstruct/en.jsonl": inst["en"],
                "gsm8kinstruct_question/de.jsonl": hub.derive_questions(inst)["de"]}
    for rel, rows in produced.items():
        assert all(list(r) == _real_fields(real_data, rel) for r in rows), rel


# --- download -----------------------------------------------------------------------------------------------------

def test_download_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DataError) as e:
        hub.download(tmp_path / "data", datasets=["mgsm"])
    msg = str(e.value)
    assert time.time() - t0 < 30
    assert "juletxara/mgsm" in msg and "offline" in msg and "QALIGN_DATA_DIR" in msg and "internet" in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert not (tmp_path / "data" / "mgsm").exists()


def test_download_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    t0 = time.time()
    with pytest.raises(DataError, match=r"cannot download openai/gsm8k .*unreachable.*QALIGN_DATA_DIR"):
        hub.download(tmp_path, datasets=["gsm8k"])
    assert time.time() - t0 < 15


def test_download_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset\(s\) mmlu; known: mgsm, msvamp"):
        hub.download(tmp_path, datasets=["mmlu"])


def test_download_writes_the_layout(tmp_path, monkeypatch):
    """download() with the hub replaced by the fixtures above: paths, contents, and one load per split."""
    calls = []

    def fake_load(src, config, split):
        calls.append((src.hub_id, config, split))
        key = next(k for k, s in hub.SOURCES.items() if s is src)
        if key == "mgsm":
            return mgsm_rows()
        if key == "msvamp":
            return msvamp_rows(next(lang for lang in LANGS if NAMES[lang] == config))
        if key == "gsm8k":
            return GSM8K_TRAIN
        if key == "gsm8kinstruct":
            return instruct_rows() + [instruct_row(lang, f"{lang} q", COTS[0])
                                      for lang in ("bn", "th", "sw", "ja", "zh", "ru")]
        if key == "flores":
            return flores_rows(next(lang for lang, c in hub.FLORES_CONFIGS.items() if c == config), split)
        return metamathqa_rows()

    monkeypatch.setattr(hub, "load_rows", fake_load)
    monkeypatch.setattr(hub, "check_reachable", lambda hub_id: None)
    written = hub.download(tmp_path, datasets=["mgsm", "gsm8kinstruct", "flores", "metamathqa"])
    assert written["mgsm/te.jsonl"] == 3 and written["gsm8kinstruct/en.jsonl"] == 3
    assert written["gsm8kinstruct_question/fr.jsonl"] == 1 and "gsm8k/train.jsonl" not in written
    assert ("openai/gsm8k", "main", "train") in calls and ("openai/gsm8k", "main", "test") not in calls
    assert len(calls) == len(set(calls)) == 11 + 2 + 20 + 1
    lines = (tmp_path / "flores/devtest/zh.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["zh devtest sentence 0", "zh devtest sentence 1", "zh devtest sentence 2"]
    first = json.loads((tmp_path / "mgsm/en.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert first == {"id": 1, "question": "A robe takes 2 bolts.", "answer": "2125", "answer_raw": "2125"}
    assert not list(tmp_path.rglob("*.tmp"))
