"""The prompt template and instruction formats: one source of truth for training and evaluation.

The Alpaca no-input template is byte-for-byte the one of Stanford Alpaca / QAlign / MathOctopus. The model's
target follows "### Response:" directly (no separator); EOS is appended at tokenization, not here.
"""
from __future__ import annotations

from .languages import name

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

TRANSLATE_INSTRUCTION = "Translate the following sentences from {source} to {target}. {text}"


def alpaca(instruction: str) -> str:
    """The full prompt for one instruction."""
    return ALPACA_TEMPLATE.format(instruction=instruction)


def translate(text: str, source: str, target: str) -> str:
    """Stage-1 instruction, e.g. translate("Hallo", "de", "en") ->
    'Translate the following sentences from German to English. Hallo'."""
    return TRANSLATE_INSTRUCTION.format(source=name(source), target=name(target), text=text)
