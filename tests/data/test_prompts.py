"""Exact prompt strings: the suite fails if the template or any instruction format changes by one byte."""
import pytest

from qalign_lib.data import prompts, training_data

HEADER = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n")


def test_alpaca_template_is_byte_exact():
    assert prompts.ALPACA_TEMPLATE == HEADER + "{instruction}\n\n### Response:"
    assert prompts.alpaca("Q?") == HEADER + "Q?\n\n### Response:"


def test_translate_instruction():
    assert prompts.translate("Hallo Welt", "de", "en") == "Translate the following sentences from German to English. Hallo Welt"
    assert prompts.translate("Hi", "en", "zh") == "Translate the following sentences from English to Chinese. Hi"


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
        "x2en_question": (HEADER + t + "German to English. Wie viele?\n\n### Response:", "How many?", "de-5"),
        "en2x_question": (HEADER + t + "English to German. How many?\n\n### Response:", "Wie viele?", "de-5"),
        "x2en_response": (HEADER + t + "German to English. #### 6 (de)\n\n### Response:", "#### 6", "de-6"),
        "en2x_response": (HEADER + t + "English to German. #### 6\n\n### Response:", "#### 6 (de)", "de-6"),
        "flores_x2en": (HEADER + t + "German to English. Guten Tag.\n\n### Response:", "Good day.", "de-0"),
    }
    for task, (prompt, completion, ident) in expected.items():
        rows = training_data.build(task, "de")
        assert rows[0] == {"prompt": prompt, "completion": completion, "lang": "de", "id": ident}, task
    # responses are aligned by id, not by line: de.jsonl lists id 6 first, en.jsonl id 5 first
    assert [r["id"] for r in training_data.build("x2en_response", "de")] == ["de-6", "de-5"]
    assert training_data.build("x2en_response", "de")[1]["completion"] == "Two.\n#### 2"


def test_stage2_prompts_exact(fixture_data):
    assert training_data.build("gsm8k") == [{"prompt": HEADER + "Natalia?\n\n### Response:", "completion": "48/2 = <<48/2=24>>24\n#### 72",
                                    "lang": "en", "id": "gsm8k-0"}]
    assert training_data.build("metamathqa") == [{"prompt": HEADER + "What is 1+1?\n\n### Response:",
                                         "completion": "1+1=2. The answer is: 2", "lang": "en", "id": "metamathqa-0"}]
    rows = training_data.build("gsm8kinstruct", "de,en")
    assert rows[0]["prompt"] == HEADER + "F6\n\n### Response:" and rows[0]["id"] == "gsm8kinstruct-de-6"


def test_mixture_is_shuffled_with_seed(fixture_data):
    a = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=1)
    b = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=1)
    c = training_data.build_mixture(["gsm8kinstruct", "gsm8k"], "de,en", seed=2)
    assert a == b and sorted(r["id"] for r in a) == sorted(r["id"] for r in c) and len(a) == 5
