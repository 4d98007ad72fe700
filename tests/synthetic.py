"""A synthetic data directory in the normalized layout (shared/data/MANIFEST.md), for tests that need no real data.

Every dataset the project reads, in every language it is defined for, small and deterministic: question i of a
benchmark has the same gold answer in every language (parallel by id, like mGSM), question texts differ per
language, and GSM8K-style answers end in "#### N". ``make_data_dir(path, drop=[...])`` leaves out files to test
missing-data paths.
"""
from __future__ import annotations

import json
from pathlib import Path

from qalign_lib.core import benchmarks
from qalign_lib.core.languages import LANGS, NON_EN

WORDS = {"en": ("Tom has", "apples and buys", "more. How many apples does he have now?"),
         "de": ("Tom hat", "Äpfel und kauft", "dazu. Wie viele Äpfel hat er jetzt?"),
         "fr": ("Tom a", "pommes et en achète", "de plus. Combien de pommes a-t-il ?"),
         "es": ("Tom tiene", "manzanas y compra", "más. ¿Cuántas manzanas tiene ahora?"),
         "ru": ("У Тома", "яблок, он покупает ещё", ". Сколько у него яблок?"),
         "zh": ("汤姆有", "个苹果，又买了", "个。他现在有多少个苹果？"),
         "ja": ("トムはりんごを", "個持っていて、", "個買いました。今いくつ持っていますか？"),
         "sw": ("Tom ana", "matofaa na ananunua", "zaidi. Ana matofaa mangapi sasa?"),
         "th": ("ทอมมี", "แอปเปิล และซื้ออีก", "ผล ตอนนี้เขามีแอปเปิลกี่ผล?"),
         "bn": ("টমের", "টি আপেল আছে এবং সে আরও", "টি কেনে। এখন তার কতটি আপেল?"),
         "te": ("టామ్ వద్ద", "ఆపిల్స్ ఉన్నాయి, అతను", "కొన్నాడు. ఇప్పుడు ఎన్ని?")}
N_BENCH = 12     # questions per benchmark language
N_TRAIN = 40     # GSM8K train rows (ids 0..39)


def numbers(i: int) -> tuple[int, int]:
    return 3 + (7 * i) % 20, 2 + (5 * i) % 11


def question(lang: str, i: int) -> str:
    a, b = numbers(i)
    w = WORDS[lang]
    return f"{w[0]} {a} {w[1]} {b} {w[2]}"


def cot(lang: str, i: int) -> str:
    a, b = numbers(i)
    return f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b} ({lang}).\n#### {a + b}"


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_data_dir(root: Path, drop=()) -> Path:
    root = Path(root)
    for b in benchmarks.REGISTRY.values():
        for lang in b.langs:
            _jsonl(root / b.path.format(lang=lang),
                   [{"id": i, b.question_field: question(lang, i), b.answer_field: str(sum(numbers(i))),
                     "answer_raw": str(sum(numbers(i)))} for i in range(N_BENCH)])
    for split, n in (("train", N_TRAIN), ("test", 10)):
        _jsonl(root / "gsm8k" / f"{split}.jsonl",
               [{"id": i, "question": question("en", i), "answer": cot("en", i), "final": str(sum(numbers(i)))} for i in range(n)])
    for lang in LANGS:
        _jsonl(root / "gsm8kinstruct" / f"{lang}.jsonl",
               [{"id": i, "question": question(lang, i), "answer": cot(lang, i)} for i in range(N_TRAIN)])
    for lang in NON_EN:  # like QAlign's filtered files, each language misses a different id
        _jsonl(root / "gsm8kinstruct_question" / f"{lang}.jsonl",
               [{"id": i, "question_en": question("en", i), "question": question(lang, i)}
                for i in range(N_TRAIN) if i != NON_EN.index(lang)])
    for split in ("devtest", "dev"):
        for lang in LANGS:
            path = root / "flores" / split / f"{lang}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(question(lang, 100 + i) + "\n" for i in range(20)), encoding="utf-8")
    _jsonl(root / "metamathqa" / "metamathqa.jsonl",
           [{"query": question("en", 200 + i), "response": f"The answer is: {sum(numbers(200 + i))}", "type": "GSM_Rephrased"}
            for i in range(30)])
    for rel in drop:
        for path in root.glob(rel):
            path.unlink()
    return root
