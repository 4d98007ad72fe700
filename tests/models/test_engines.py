"""Generation engines (qalign_lib.models.engines): the engine parameter and how it resolves (the engines on a
faked GPU: tests/models/test_engines_gpu.py; vLLM's CPU build against hf: tests/models/test_engines_vllm.py)."""
import pytest

from qalign_lib.core import config, hardware
from qalign_lib.core.errors import ConfigError
from qalign_lib.evaluation import evaluator
from qalign_lib.models import engines


def test_engine_resolves_and_is_part_of_the_generation_settings(monkeypatch):
    cfg = config.resolve("tiny")
    assert cfg.engine == "auto" and config.schema()["engine"].affects == "generated"
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    monkeypatch.setattr(hardware, "cuda", lambda: False)
    assert engines.resolve("auto") == "hf"                      # vLLM without a GPU: hf
    monkeypatch.setattr(hardware, "cuda", lambda: True)
    assert engines.resolve("auto") == "vllm"                    # vLLM and a GPU: vllm
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    assert engines.resolve("auto") == "hf"                      # a GPU without vLLM: hf
    hf = evaluator.settings(cfg.replace(engine="hf"), "mgsm", "m")
    assert hf["engine"] == "hf" and hf["engine_version"].startswith("transformers ")
    assert evaluator.settings(cfg.replace(engine="vllm"), "mgsm", "m")["engine"] == "vllm"
    assert evaluator.settings(cfg.replace(engine="vllm"), "mgsm", "m") != hf
    monkeypatch.setattr(engines, "version", lambda name: "transformers 0.0.1")  # an upgrade of the engine ...
    assert evaluator.settings(cfg.replace(engine="hf"), "mgsm", "m") != hf       # ... is a settings change
    with pytest.raises(ConfigError, match="engine"):
        cfg.replace(engine="tgi")
