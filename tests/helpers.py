"""Shared test helpers: a random tiny LLaMA built from a config (no download)."""
from pathlib import Path

from qalign_lib.models import modeling

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:", "### Response:", "Translate the following sentences from German to English.",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast. How much does she make? The answer is 18.",
    "Wie viele Clips hat Natalia insgesamt im April und Mai verkauft? 48 + 24 = 72 #### 72",
    "Natalia sold clips to 48 of her friends in April. 0123456789 + - * / = $ % . , ? !",
    "Combien de poules ? ¿Cuántos huevos? Сколько яиц? 多少个鸡蛋? 卵はいくつ? Mayai mangapi? ไข่กี่ฟอง? কয়টি ডিম?",
]


def tiny_llama(path: Path) -> Path:
    return modeling.tiny_random_llama(path, CORPUS * 20, vocab_size=400, hidden=64, layers=2, heads=4)
