"""The prompt template and instruction formats: one source of truth for training and evaluation.

The Alpaca no-input template is byte-for-byte the one of Stanford Alpaca / QAlign / MathOctopus. The model's
target follows "### Response:" directly (no separator); EOS is appended at tokenization, not here.
"""
from __future__ import annotations

from qalign_lib.core.languages import prompt_name

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# NJUNLP/QAlign@a65ee63 data/gsmtrans/gsmtrans.py:27 ("Translate the following sentences from {source_lang} to
# {target_lang}.") followed by ' ' + the stripped source line (gsmtrans.py:135); the response is the stripped target
# line (gsmtrans.py:137), and the whole instruction goes into the no-input Alpaca template (finetune.py:24-28).
TRANSLATE_INSTRUCTION = "Translate the following sentences from {source} to {target}. {text}"


def alpaca(instruction: str) -> str:
    """The full prompt for one instruction."""
    return ALPACA_TEMPLATE.format(instruction=instruction)


def translate(text: str, source: str, target: str) -> str:
    """Stage-1 instruction, e.g. translate("Hallo", "de", "en") ->
    'Translate the following sentences from German to English. Hallo'. Languages are named as the reference's
    prompts name them (:func:`qalign_lib.core.languages.prompt_name`: Swahili is "Swahili (macrolanguage)")."""
    return TRANSLATE_INSTRUCTION.format(source=prompt_name(source), target=prompt_name(target), text=text)
