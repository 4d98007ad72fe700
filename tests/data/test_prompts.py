"""Exact prompt strings (qalign_lib.data.prompts): the suite fails if the template or the translation instruction
changes by one byte (every task's prompt: tests/data/test_training_data.py)."""
from qalign_lib.data import prompts
from tests.helpers import ALPACA_HEADER


def test_alpaca_template_is_byte_exact():
    assert prompts.ALPACA_TEMPLATE == ALPACA_HEADER + "{instruction}\n\n### Response:"
    assert prompts.alpaca("Q?") == ALPACA_HEADER + "Q?\n\n### Response:"


def test_translate_instruction():
    assert prompts.translate("Hallo Welt", "de", "en") == "Translate the following sentences from German to English. Hallo Welt"
    assert prompts.translate("Hi", "en", "zh") == "Translate the following sentences from English to Chinese. Hi"
