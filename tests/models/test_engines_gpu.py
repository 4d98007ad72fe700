"""The engines on a GPU node, checked on a CPU by faking only what the code asks of CUDA: the hf model is gone (and
PyTorch's cache emptied) when released, and the hf engine's batches of LLaMA-2 7B/13B fit the memory left after the
weights (the analyses' order of engines: tests/analysis/test_pipeline.py; a cache root per vLLM engine:
tests/evaluation/test_sharding.py)."""
import logging
import weakref

import pytest
import torch

from qalign_lib.core import config
from qalign_lib.models import engines, generation
from tests.helpers import GIB, fake_reserved

CUDA0 = torch.device("cuda", 0)


# ----------------------------------------------------------------------------------------------------------------
# Finding 3: Transformers (hidden states) then vLLM (translations) in one process: the hf model released


def test_release_warns_when_something_still_holds_the_model(tiny_model, monkeypatch, caplog):
    monkeypatch.setattr(engines, "model_device", lambda model: CUDA0)
    engine = engines.HF.load(tiny_model, "float32")
    held = engine.model  # e.g. a notebook variable
    calls, reserved = [], [14 * GIB]
    fake_reserved(monkeypatch, reserved, calls, alive=lambda: True)
    with caplog.at_level(logging.INFO, logger="qalign.models.engines"):
        engines.release(engine)
    assert engine.model is None and calls == ["empty_cache"] and held is not None
    assert "still reserves 14.0 GiB" in caplog.text
    del held
    engine, calls[:], reserved[0] = engines.HF.load(tiny_model, "float32"), [], 14 * GIB
    ref = weakref.ref(engine.model)
    fake_reserved(monkeypatch, reserved, calls, alive=lambda: ref() is not None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qalign.models.engines"):
        engines.release(engine)
    assert ref() is None and "PyTorch reserves 0.0 GiB (14.0 GiB before)" in caplog.text
    engines.release(None)  # nothing loaded: nothing to do
    engines.release(engine)  # twice: a no-op


# ----------------------------------------------------------------------------------------------------------------
# Finding 4: the hf engine's batches of LLaMA-2 7B / 13B on one GPU


LLAMA2 = {"7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
          "13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824)}
KV_PER_TOKEN = {"7b": 2 * 32 * 32 * 128 * 2, "13b": 2 * 40 * 40 * 128 * 2}  # K and V x layers x heads x head_dim x bf16
MLP_PER_TOKEN = {"7b": 3 * 11008 * 2, "13b": 3 * 13824 * 2}  # gate, up and act(gate) of a prompt token at prefill
MAX_NEW = 600                                   # mGSM, as the reference generates
LENGTHS = [1000 - (i * 400) // 250 for i in range(250)]  # one mGSM language in Bengali: ~600-1000 LLaMA tokens a prompt
CONTEXT = GIB                                   # the CUDA context and libraries, outside PyTorch's allocator


@pytest.fixture(scope="module")
def llama2():
    from transformers import LlamaConfig, LlamaForCausalLM

    out = {}
    for size, dims in LLAMA2.items():
        with torch.device("meta"):
            out[size] = LlamaForCausalLM(LlamaConfig(vocab_size=32000, **dims)).to(torch.bfloat16)
    return out


def batch_bytes(size: str, batch: list[int]) -> int:
    """What one hf batch takes at its peak: the KV cache of every row at full length, and the prefill's MLP."""
    longest = max(LENGTHS[i] for i in batch)
    return len(batch) * ((longest + MAX_NEW) * KV_PER_TOKEN[size] + longest * MLP_PER_TOKEN[size])


def fake_card(monkeypatch, model, card_gib: int) -> int:
    """A card of ``card_gib`` GiB holding the model's weights; returns the bytes left free."""
    weights = sum(p.numel() for p in model.parameters()) * 2
    free = card_gib * GIB - weights - CONTEXT
    monkeypatch.setattr(engines, "model_device", lambda m: CUDA0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, card_gib * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: weights)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: weights)
    return free


@pytest.mark.parametrize("size,card_gib,old_fits", [("7b", 40, False), ("7b", 80, True), ("13b", 40, False),
                                                    ("13b", 80, False)])
def test_hf_batches_of_llama2_fit_the_memory_left_after_the_weights(llama2, monkeypatch, size, card_gib, old_fits):
    """Bengali mGSM through engines.HF with the sizes' defaults (batch 64, eval_token_budget null): the batches it
    forms fit the card; today's batches (no budget: 64 rows of 1600 tokens) need ~50 GiB (7B) / ~78 GiB (13B) of
    KV cache alone, more than a 40 GiB card (7B) or an 80 GiB card beside the 13B weights leaves."""
    model, cfg = llama2[size], config.resolve(size)
    assert cfg.eval_batch_size == 64 and cfg.eval_token_budget is None and cfg.max_new("mgsm") == MAX_NEW
    assert engines.kv_bytes_per_token(model.config, model.dtype) == KV_PER_TOKEN[size]
    free = fake_card(monkeypatch, model, card_gib)
    asked = []
    monkeypatch.setattr(generation, "generate", lambda *args, **kwargs: asked.append(args[5]) or iter(()))
    list(engines.HF(model, None).generate(["q"] * len(LENGTHS), MAX_NEW, cfg.eval_batch_size, cfg.eval_token_budget))
    budget = asked[0]
    assert budget is not None
    groups = generation.batches(LENGTHS, cfg.eval_batch_size, MAX_NEW, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(LENGTHS)))
    assert max(batch_bytes(size, g) for g in groups) <= 0.85 * free  # headroom left for fragmentation and logits
    assert len(groups[0]) >= 4  # and still batches, not one row at a time
    old = generation.batches(LENGTHS, cfg.eval_batch_size, MAX_NEW, None)
    assert (batch_bytes(size, old[0]) <= free) == old_fits


def test_the_budget_is_derived_only_on_a_gpu_and_only_when_none_is_given(llama2, monkeypatch):
    model = llama2["7b"]
    assert engines.auto_token_budget(model) is None  # meta (as cpu): no cap, as before
    fake_card(monkeypatch, model, 80)
    asked = []
    monkeypatch.setattr(generation, "generate", lambda *args, **kwargs: asked.append(args[5]) or iter(()))
    list(engines.HF(model, None).generate(["q"], MAX_NEW, 64, 4096))
    assert asked == [4096]  # a given eval_token_budget is kept
    # PyTorch's unused cached blocks count as free: they are reused before the driver is asked
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 20 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 15 * GIB)
    assert engines.free_gpu_bytes(CUDA0) == torch.cuda.mem_get_info()[0] + 5 * GIB
