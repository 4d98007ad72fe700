"""The analyses of a model (qalign_lib.analysis.pipeline): what decides a stored analysis, and on a faked GPU the
hf model freed before vLLM starts in the same process."""
import weakref

import torch

from qalign_lib.analysis import pipeline
from qalign_lib.core import config
from qalign_lib.models import engines
from tests.helpers import GIB, fake_reserved


def test_analysis_settings_follow_their_parameters(synthetic_data):
    """What decides a stored analysis: the generated parameters of group analysis (and the model); speed,
    training and evaluation parameters do not; the representation limit picks the ids compared."""
    cfg = config.resolve("tiny")
    ref = pipeline.settings(cfg, "mgsm", "m")
    assert pipeline.settings(cfg.replace(translation_max_new_tokens=7), "mgsm", "m")["translation"] != ref["translation"]
    other = "question" if cfg.representation_pooling != "question" else "template"
    assert pipeline.settings(cfg.replace(representation_pooling=other), "mgsm", "m")["representations"] != \
        ref["representations"]
    assert pipeline.settings(cfg, "mgsm", "other") != ref
    for name, value in (("analysis_batch_size", 3), ("translation_limit", 2), ("eval_batch_size", 1), ("lr", 1e-5),
                        ("max_new_tokens", {"mgsm": 3})):
        assert pipeline.settings(cfg.replace(**{name: value}), "mgsm", "m") == ref, name
    assert pipeline.settings(cfg.replace(representation_limit=3), "mgsm", "m")["representations"]["ids"] == [0, 1, 2]


CUDA0 = torch.device("cuda", 0)


def test_analysis_frees_the_hf_model_and_the_cuda_cache_before_vllm_starts(synthetic_data, tiny_model, monkeypatch):
    """The analyze notebook's sequence (analysis.analyze): representations with the hf model, then translations
    with vLLM. When vLLM is constructed, the hf model must be collected and PyTorch's cache emptied (vLLM refuses
    to start unless 0.92 of the card is free)."""
    cfg = config.resolve("tiny", model=tiny_model, engine="vllm", analysis_langs=["de"], representation_limit=2,
                         translation_limit=2, translation_max_new_tokens=2)
    models, calls, started = [], [], []
    real_load = engines.HF.load.__func__

    def load(cls, *args, **kwargs):
        engine = real_load(cls, *args, **kwargs)
        models.append(weakref.ref(engine.model))
        return engine

    class FakeVLLM:
        name = "vllm"

        def __init__(self, *args, **kwargs):
            assert models and models[0]() is None, "the hf model is still alive when vLLM starts"
            assert calls == ["empty_cache"], "PyTorch's CUDA cache was not emptied before vLLM starts"
            started.append(args)

        def generate(self, prompts, max_new_tokens, batch_size=0, token_budget=None, desc=""):
            yield [(i, "a translation", 2) for i in range(len(prompts))]

    monkeypatch.setattr(engines.HF, "load", classmethod(load))
    monkeypatch.setattr(engines, "VLLM", FakeVLLM)
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    monkeypatch.setattr(engines, "model_device", lambda model: CUDA0)  # the hf model "lives on the GPU"
    fake_reserved(monkeypatch, [14 * GIB], calls, alive=lambda: models[0]() is not None)
    out = pipeline.analyze(cfg, model=tiny_model)
    assert len(models) == 1 and len(started) == 1
    assert set(out["mgsm"]) == {"representations", "translation"}
    assert pipeline.is_complete(cfg, model=tiny_model)
    capped = cfg.replace(translation_length_cap=0.5)  # another scoring: incomplete, rescored without generating
    assert not pipeline.is_complete(capped, model=tiny_model)
    again = pipeline.analyze(capped, model=tiny_model)
    assert len(models) == 1 and len(started) == 1 and again["mgsm"]["translation"]["scoring"]["length_cap"] == 0.5
    assert pipeline.is_complete(capped, model=tiny_model)
