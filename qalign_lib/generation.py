"""Greedy batched generation with left padding, KV cache and a per-sequence stop at EOS.

Prompts are sorted by length (longest first, so memory trouble shows at once) and cut into batches of at most
``batch_size`` prompts and, if given, at most ``token_budget`` tokens (batch rows x (longest prompt +
max_new_tokens)). Results come back per batch with the caller's indices, so the caller can append them to disk
as they are produced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .errors import DataError, ResultsError
from .io import append_jsonl, atomic_write, check_input, read_lines


def batches(lengths: list[int], batch_size: int, max_new_tokens: int, token_budget: int | None = None) -> list[list[int]]:
    """Index batches over prompts sorted by decreasing length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        too_many = len(current) >= batch_size
        too_big = token_budget is not None and current and (len(current) + 1) * (longest + max_new_tokens) > token_budget
        if current and (too_many or too_big):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32,
             token_budget: int | None = None, sort: bool = True, desc: str = "generating") -> Iterator[list[tuple[int, str, int]]]:
    """Yield, per batch, [(prompt index, response text, number of new tokens)]."""
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    lengths = [len(e) for e in encoded]
    groups = batches(lengths, batch_size, max_new_tokens, token_budget) if sort else \
        [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    device = next(model.parameters()).device
    model.generation_config = decoding(max_new_tokens, pad_id, tokenizer.eos_token_id)
    with tqdm(total=len(prompts), desc=desc, unit="q", leave=False) as bar:
        for group in groups:
            width = max(lengths[i] for i in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, width - lengths[i]:] = torch.tensor(encoded[i])
                mask[row, width - lengths[i]:] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device))
            new = out[:, width:].tolist()
            results = []
            for row, i in enumerate(group):
                tokens = new[row]
                n = next((k + 1 for k, t in enumerate(tokens) if t == tokenizer.eos_token_id), len(tokens))
                results.append((i, tokenizer.decode(tokens[:n], skip_special_tokens=True), n))
            bar.update(len(group))
            yield results


def decoding(max_new_tokens: int, pad_token_id: int, eos_token_id: int):
    """The reference's decoding (NJUNLP/QAlign evaluate/scripts/mgsm_test.py: a fresh ``GenerationConfig(max_new_tokens,
    do_sample=False)``, greedy, stopping at the model's EOS) as a complete config of its own. It replaces the loaded
    model's ``generation_config``, because transformers 5 fills every unset value of a passed config from the
    checkpoint's: a repetition penalty, sampling or extra stop ids in a checkpoint's generation_config.json would leak
    into the evaluation."""
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_token_id,
                            eos_token_id=eos_token_id, bos_token_id=None)


def done_ids(path: Path) -> set:
    """Ids already generated in a JSONL file; a torn last line (a kill mid-write) is dropped from the file."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return set()
    try:
        check_input(path)
        lines = read_lines(path)
    except DataError as e:
        raise ResultsError(str(e)) from None
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    lines = [line + "\n" for line in lines[:-1]] + [lines[-1]] if lines else []
    good, ids = [], set()
    for k, line in enumerate(lines):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if k == len(lines) - 1:
                break
            raise ResultsError(f"{path}:{k + 1}: corrupt line in the middle of a generations file; delete the file to regenerate it") from None
        if not isinstance(row, dict) or not _valid_id(row.get("id")):
            raise ResultsError(f"{path}:{k + 1}: expected a JSON object with an integer or string 'id'; delete the file to regenerate it")
        good.append(line if line.endswith("\n") else line + "\n")
        ids.add(row["id"])
    if len(good) != len(lines) or (lines and not lines[-1].endswith("\n")):
        with atomic_write(path) as f:  # a crash during the repair must not lose the rows kept
            f.write("".join(good))
    return ids


def _valid_id(ident) -> bool:
    return isinstance(ident, (int, str)) and not isinstance(ident, bool)


def generate_to_files(model, tokenizer, items: list[dict], folder: Path, max_new_tokens: int, batch_size: int,
                      token_budget: int | None = None, desc: str = "") -> int:
    """Generate for ``items`` ({"id", "lang", "prompt"}) and append each batch's rows, as they are produced, to
    ``folder/<lang>.jsonl``. Ids already in a file are never appended again (the caller passes what is missing, see
    ``done_ids``; this guards against a second writer). Returns the number of rows appended."""
    present = {lang: done_ids(Path(folder) / f"{lang}.jsonl") for lang in {it["lang"] for it in items}}
    items = [it for it in items if it["id"] not in present[it["lang"]]]
    written = 0
    for results in generate(model, tokenizer, [it["prompt"] for it in items], max_new_tokens, batch_size,
                            token_budget, desc=desc or str(folder)):
        by_lang: dict[str, list[dict]] = {}
        for i, text, n in sorted(results):
            lang, ident = items[i]["lang"], items[i]["id"]
            if ident in present[lang]:
                continue
            present[lang].add(ident)
            by_lang.setdefault(lang, []).append({"lang": lang, "id": ident, "response": text, "new_tokens": n})
        for lang, rows in by_lang.items():
            append_jsonl(Path(folder) / f"{lang}.jsonl", rows)
            written += len(rows)
    return written
