"""Training prompts byte-identical to the reference's (NJUNLP/QAlign @ a65ee63, see docs/fidelity.md).

The reference's construction is re-stated here, independently of qalign_lib, from its source:

* finetune.py:24-28   PROMPT_DICT["prompt_no_input"], the Alpaca template without input; finetune.py:125 picks it
                      for every example (the loaders all set ``input`` to "");
* finetune.py:128     the target is ``output`` followed by the EOS token (added at tokenization, not in the text);
* data/gsmtrans/gsmtrans.py:27        the instruction "Translate the following sentences from {source_lang} to
                                      {target_lang}.";
* data/gsmtrans/gsmtrans.py:124-139   instruction + ' ' + source_line.strip() -> ``instruction``, target_line.strip()
                                      -> ``output``, a pair with an empty side after strip() skipped; the two files
                                      of a pair are read line by line (Python text mode: universal newlines);
* data/gsmtrans/gsmtrans.py:197-213   the same for the response (answer) files, each line a JSON string;
* language names: ``iso639.languages.get(alpha2=code).name`` (gsmtrans.py:74, 99, 124, ...) of iso-639 0.4.5
  (requirements.txt:68), written below as literal strings (read from that package's iso639/iso-639-3.tab);
* data/gsm8kinstruct/gsm8kinstruct.py:85-93, data/metamath/metamath.py:73-80: stage-2 rows, question ->
  ``instruction`` and answer -> ``output`` as they are (no strip).

Nothing here imports the reference's code: a change anywhere in our chain (template, instruction, names, the
builders in qalign_lib/data.py) fails a test.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from qalign_lib.core import languages
from qalign_lib.data import prompts, training_data

# finetune.py:24-28
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")
# gsmtrans.py:27
INSTRUCTION = "Translate the following sentences from {source_lang} to {target_lang}."
# iso-639 0.4.5: languages.get(alpha2=code).name
ISO639_NAMES = {"bn": "Bengali", "th": "Thai", "sw": "Swahili (macrolanguage)", "ja": "Japanese", "zh": "Chinese",
                "de": "German", "fr": "French", "ru": "Russian", "es": "Spanish", "en": "English"}
STAGE1_LANGS = ("bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es")  # gsmtrans.py:100 lang_pool minus 'en'

QUESTION_FILE = "data/gsmtrans/gsm8kinstruct_question/{lang}-en/train.{side}"


def reference_pair(source_line: str, target_line: str, source: str, target: str) -> tuple[str, str] | None:
    """(prompt, completion) the reference trains on for one line pair, None for a pair it skips."""
    if not (len(source_line.strip()) > 0 and len(target_line.strip()) > 0):
        return None
    instruction = INSTRUCTION.format_map({"source_lang": ISO639_NAMES[source], "target_lang": ISO639_NAMES[target]})
    instruction += " " + source_line.strip()
    return PROMPT_NO_INPUT.format_map({"instruction": instruction, "input": ""}), target_line.strip()


def reference_pairs(source_lines, target_lines, source: str, target: str) -> list[tuple[str, str]]:
    pairs = (reference_pair(s, t, source, target) for s, t in zip(source_lines, target_lines))
    return [p for p in pairs if p is not None]


def reference_stage2(question: str, answer: str) -> tuple[str, str]:
    return PROMPT_NO_INPUT.format_map({"instruction": question, "input": ""}), answer


def ours(task: str, lang: str, limit: int | None = None) -> list[tuple[str, str]]:
    return [(r["prompt"], r["completion"]) for r in training_data.build(task, lang, limit=limit)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _text_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:  # as gsmtrans.py:127 reads its files
        return list(f)


# ---------------------------------------------------------------------------------------------------------------
# the names and the templates


def test_prompt_names_are_iso639_045_and_tables_keep_plain_names():
    assert {code: languages.prompt_name(code) for code in ISO639_NAMES} == ISO639_NAMES
    assert languages.PROMPT_NAMES["sw"] == "Swahili (macrolanguage)"
    assert languages.name("sw") == "Swahili"  # tables and figures
    assert prompts.translate("x", "sw", "en") == "Translate the following sentences from Swahili (macrolanguage) to English. x"
    assert prompts.translate("x", "en", "sw") == "Translate the following sentences from English to Swahili (macrolanguage). x"


def test_templates_equal_the_reference():
    assert prompts.alpaca("Q?") == PROMPT_NO_INPUT.format_map({"instruction": "Q?"})
    # evaluation (evaluate/scripts/mgsm_test.py:136-142, svamp_test.py:120-125) uses the same template on {query}
    eval_template = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{query}\n\n### Response:")
    assert prompts.alpaca("Wie viele?") == eval_template.format(query="Wie viele?")
    for src, tgt in (("de", "en"), ("en", "bn"), ("sw", "en"), ("th", "en")):
        assert prompts.translate("T", src, tgt) == INSTRUCTION.format_map(
            {"source_lang": ISO639_NAMES[src], "target_lang": ISO639_NAMES[tgt]}) + " T"


def test_one_complete_prompt_literally(synthetic_data):
    """Every byte of one training example (sw, X->En question, the first synthetic row), written out."""
    first = training_data.build("x2en_question", "sw")[0]
    assert first["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nTranslate the following sentences from Swahili (macrolanguage) to English. "
        "Tom ana 3 matofaa na ananunua 2 zaidi. Ana matofaa mangapi sasa?\n\n### Response:")
    assert first["completion"] == "Tom has 3 apples and buys 2 more. How many apples does he have now?"
    back = training_data.build("en2x_question", "sw")[0]
    assert back["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nTranslate the following sentences from English to Swahili (macrolanguage). "
        "Tom has 3 apples and buys 2 more. How many apples does he have now?\n\n### Response:")
    assert back["completion"] == "Tom ana 3 matofaa na ananunua 2 zaidi. Ana matofaa mangapi sasa?"


# ---------------------------------------------------------------------------------------------------------------
# every stage-1 task and language, on the synthetic data


def _question_lines(root: Path, lang: str) -> tuple[list[str], list[str]]:
    """The two sides of one language's question file, line-aligned as the reference's train.{x} / train.en."""
    rows = _jsonl(root / "gsm8kinstruct_question" / f"{lang}.jsonl")
    return [r["question"] for r in rows], [r["question_en"] for r in rows]


def _response_lines(root: Path, lang: str) -> tuple[list[str], list[str]]:
    """GSM8KInstruct chains of thought of ``lang`` and English, paired by id (our layout's parallel key; the
    reference's answer files, never released, were line-aligned)."""
    en = {r["id"]: r["answer"] for r in _jsonl(root / "gsm8kinstruct" / "en.jsonl")}
    rows = [r for r in _jsonl(root / "gsm8kinstruct" / f"{lang}.jsonl") if r["id"] in en]
    return [r["answer"] for r in rows], [en[r["id"]] for r in rows]


def _flores_lines(root: Path, lang: str) -> tuple[list[str], list[str]]:
    return (_text_lines(root / "flores" / "devtest" / f"{lang}.txt"),
            _text_lines(root / "flores" / "devtest" / "en.txt"))


STAGE1 = {  # task -> (the line pairs it reads, direction)
    "x2en_question": (_question_lines, "x2en"),
    "en2x_question": (_question_lines, "en2x"),
    "x2en_response": (_response_lines, "x2en"),
    "en2x_response": (_response_lines, "en2x"),
    "flores_x2en": (_flores_lines, "x2en"),  # no reference code (not released): the gsmtrans.py rule applied
}


def test_the_stage1_tasks_are_all_covered():
    # the shuffled control is ours (no reference): x2en_question's prompts with deranged targets (test_training_data.py)
    assert set(STAGE1) == set(training_data.STAGE1_TASKS) - set(training_data.DERANGED)
    assert training_data.DERANGED == ("x2en_question_shuffled",)
    assert tuple(languages.NON_EN) == STAGE1_LANGS


@pytest.mark.parametrize("lang", STAGE1_LANGS)
@pytest.mark.parametrize("task", list(STAGE1))
def test_stage1_examples_equal_the_reference(synthetic_data, task, lang):
    lines, direction = STAGE1[task]
    x_lines, en_lines = lines(synthetic_data, lang)
    if direction == "x2en":
        expected = reference_pairs(x_lines, en_lines, lang, "en")
    else:
        expected = reference_pairs(en_lines, x_lines, "en", lang)
    got = ours(task, lang)
    assert len(expected) > 10
    assert got == expected


@pytest.mark.parametrize("lang", languages.LANGS)
def test_stage2_gsm8kinstruct_equals_the_reference(synthetic_data, lang):
    rows = _jsonl(synthetic_data / "gsm8kinstruct" / f"{lang}.jsonl")
    assert ours("gsm8kinstruct", lang) == [reference_stage2(r["question"], r["answer"]) for r in rows]


def test_stage2_metamathqa_and_gsm8k_equal_the_reference(synthetic_data):
    rows = _jsonl(synthetic_data / "metamathqa" / "metamathqa.jsonl")
    assert ours("metamathqa", "en") == [reference_stage2(r["query"], r["response"]) for r in rows]
    # OpenAI GSM8K is not a reference dataset (its SFT trains on gsm8kinstruct_en); same template, no strip
    rows = _jsonl(synthetic_data / "gsm8k" / "train.jsonl")
    assert ours("gsm8k", "en") == [reference_stage2(r["question"], r["answer"]) for r in rows]


def test_stage1_strips_and_skips_like_the_reference(synthetic_data, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(synthetic_data, root)
    monkeypatch.setenv("QALIGN_DATA_DIR", str(root))
    padded = ["  Guten Tag. \t", "Zweiter Satz.", "Dritter Satz. "]
    english = ["Good day.", " Second sentence.  ", "Third sentence."]
    (root / "flores/devtest/de.txt").write_text("".join(s + "\n" for s in padded), encoding="utf-8")
    (root / "flores/devtest/en.txt").write_text("".join(s + "\n" for s in english), encoding="utf-8")
    assert ours("flores_x2en", "de") == reference_pairs(padded, english, "de", "en")
    rows = [{"id": 0, "question": " Wie viele? ", "question_en": "How many?\n"},
            {"id": 1, "question": "Leer", "question_en": "   "}]
    (root / "gsm8kinstruct_question/de.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert ours("x2en_question", "de") == reference_pairs(["Wie viele?"], ["How many?"], "de", "en")


# ---------------------------------------------------------------------------------------------------------------
# the real stage-1 files against the reference repository's own (where a read-only mirror of it is named by
# $QALIGN_REFERENCE_MIRROR)


def _mirror_lines(mirror: Path, path: str) -> list[str] | None:
    """A file of the reference repository, split into lines as Python's text mode splits it; None if absent."""
    try:
        blob = subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{path}"], capture_output=True, check=True,
                              timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return list(io.TextIOWrapper(io.BytesIO(blob), encoding="utf-8"))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (it reads the reference's mirror)")
@pytest.mark.parametrize("lang", ["de", "sw", "zh"])
def test_real_x2en_questions_equal_the_reference(real_data, reference_mirror, lang):
    x_lines = _mirror_lines(reference_mirror, QUESTION_FILE.format(lang=lang, side=lang))
    en_lines = _mirror_lines(reference_mirror, QUESTION_FILE.format(lang=lang, side="en"))
    if not x_lines or not en_lines:
        pytest.skip(f"{QUESTION_FILE.format(lang=lang, side='{x,en}')} not readable in the mirror")
    expected = reference_pairs(x_lines, en_lines, lang, "en")
    assert ours("x2en_question", lang, limit=20) == expected[:20]
    # and the whole file, in the reference's order
    assert ours("x2en_question", lang) == expected
