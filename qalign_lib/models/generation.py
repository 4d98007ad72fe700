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

from qalign_lib.core.errors import DataError, ResultsError
from qalign_lib.core.files import (
    append_jsonl,
    atomic_write,
    check_input,
    read_lines,
    valid_id,
)


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


LOOPS = ("greedy", "transformers")  # our decoding loop (engine hf) and Transformers' generate (the speed reference)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32,
             token_budget: int | None = None, sort: bool = True, desc: str = "generating",
             loop: str = "greedy") -> Iterator[list[tuple[int, str, int]]]:
    """Yield, per batch, [(prompt index, response text, number of new tokens)]. ``loop="greedy"`` decodes with
    :func:`greedy` (rows leave the batch at their EOS; what engine ``hf`` runs); ``loop="transformers"`` with
    Transformers' ``generate`` (the reference's: every row is computed until the last one stops)."""
    if loop not in LOOPS:
        raise ValueError(f"loop {loop!r}: choose one of {', '.join(LOOPS)}")
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
            if loop == "transformers":
                new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device))[:, width:].tolist()
            else:
                new = greedy(model, ids.to(device), mask.to(device), max_new_tokens, tokenizer.eos_token_id)
            results = []
            for row, i in enumerate(group):
                tokens = new[row]
                n = next((k + 1 for k, t in enumerate(tokens) if t == tokenizer.eos_token_id), len(tokens))
                results.append((i, tokenizer.decode(tokens[:n], skip_special_tokens=True), n))
            bar.update(len(group))
            yield results


def greedy(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
    """Greedy decoding of a left-padded batch, as Transformers' ``generate`` does it (positions from the attention
    mask, logits of the last position only, argmax in float32, a DynamicCache), except that a row leaves the batch
    (and its cache) at its EOS: the rows still running no longer pay for the finished ones, where ``generate``
    computes every row until the last one stops. Returns each row's new tokens, up to and including EOS."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache_position = torch.arange(ids.shape[1], device=ids.device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   cache_position=cache_position, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    rows = list(range(ids.shape[0]))  # the original row of each row still in the batch
    last = positions[:, -1]
    out: list[list[int]] = [[] for _ in rows]
    for step in range(max_new_tokens):
        token = logits.to(dtype=torch.float32).argmax(dim=-1)
        listed = token.tolist()
        for r, t in zip(rows, listed):
            out[r].append(t)
        running = [k for k, t in enumerate(listed) if t != eos_token_id]
        if step == max_new_tokens - 1 or not running:
            break
        if len(running) < len(rows):
            keep = torch.tensor(running, device=ids.device)
            cache.batch_select_indices(keep)
            rows, mask, token, last = [rows[k] for k in running], mask[keep], token[keep], last[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        cache_position = cache_position[-1:] + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last[:, None],
                       past_key_values=cache, cache_position=cache_position, use_cache=True).logits[:, -1, :]
    return out


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
        if not isinstance(row, dict) or not valid_id(row.get("id")):
            raise ResultsError(f"{path}:{k + 1}: expected a JSON object with an integer or string 'id'; delete the file to regenerate it")
        good.append(line if line.endswith("\n") else line + "\n")
        ids.add(row["id"])
    if len(good) != len(lines) or (lines and not lines[-1].endswith("\n")):
        with atomic_write(path) as f:  # a crash during the repair must not lose the rows kept
            f.write("".join(good))
    return ids


def generate_to_files(engine, items: list[dict], folder, max_new_tokens: int, batch_size: int,
                      token_budget: int | None = None, desc: str = "") -> int:
    """Generate for ``items`` ({"id", "lang", "prompt"}) with ``engine`` (see :mod:`qalign_lib.models.engines`) and append
    each batch's rows, as they are produced, to ``folder/<lang>.jsonl`` (``folder`` may also be a function of the
    language giving the file, as for a data-parallel shard). Ids already in a file are never appended again (the
    caller passes what is missing, see ``done_ids``; this guards against a second writer). Returns the number of rows
    appended."""
    path = folder if callable(folder) else (lambda lang: Path(folder) / f"{lang}.jsonl")
    present = {lang: done_ids(path(lang)) for lang in {it["lang"] for it in items}}
    items = [it for it in items if it["id"] not in present[it["lang"]]]
    written = 0
    for results in engine.generate([it["prompt"] for it in items], max_new_tokens, batch_size, token_budget,
                                   desc=desc or str(folder)):
        by_lang: dict[str, list[dict]] = {}
        for i, text, n in sorted(results):
            lang, ident = items[i]["lang"], items[i]["id"]
            if ident in present[lang]:
                continue
            present[lang].add(ident)
            by_lang.setdefault(lang, []).append({"lang": lang, "id": ident, "response": text, "new_tokens": n})
        for lang, rows in by_lang.items():
            append_jsonl(path(lang), rows)
            written += len(rows)
    return written
