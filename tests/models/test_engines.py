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
    assert engines.resolve("auto") == "vllm"                    # vLLM (its CPU build) without a GPU: vllm
    monkeypatch.setattr(hardware, "cuda", lambda: True)
    assert engines.resolve("auto") == "vllm"                    # vLLM and a GPU: vllm
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    assert engines.resolve("auto") == "hf"                      # a GPU without vLLM: hf
    monkeypatch.setattr(hardware, "cuda", lambda: False)
    assert engines.resolve("auto") == "hf"                      # neither: hf
    hf = evaluator.settings(cfg.replace(engine="hf"), "mgsm", "m")
    assert hf["engine"] == "hf" and hf["engine_version"].startswith("transformers ")
    assert evaluator.settings(cfg.replace(engine="vllm"), "mgsm", "m")["engine"] == "vllm"
    assert evaluator.settings(cfg.replace(engine="vllm"), "mgsm", "m") != hf
    monkeypatch.setattr(engines, "version", lambda name: "transformers 0.0.1")  # an upgrade of the engine ...
    assert evaluator.settings(cfg.replace(engine="hf"), "mgsm", "m") != hf       # ... is a settings change
    with pytest.raises(ConfigError, match="engine"):
        cfg.replace(engine="tgi")


def test_kv_cache_size_is_the_declared_parameter(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert config.schema()["vllm_kv_cache_gib"].affects == "speed"
    assert engines.kv_cache_bytes(1.5, cuda=False) == 1610612736      # 1.5 x 2^30, on a CPU ...
    assert engines.kv_cache_bytes(1.5, cuda=True) == 1610612736       # ... and on a GPU
    assert engines.kv_cache_bytes(None, cuda=True) is None            # GPU: vLLM sizes it from gpu_memory_utilization
    assert engines.kv_cache_bytes(None, cuda=False) == 2 ** 30        # CPU: CPU_KV_CACHE_GIB, not 92% of the machine
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert engines.kv_cache_bytes(None, cuda=False) is None           # vLLM reads the variable itself
    assert "VLLM_CPU_KVCACHE_SPACE" not in engines.VLLM_CPU_ENV
    with pytest.raises(ConfigError, match="vllm_kv_cache_gib"):
        config.resolve("tiny", vllm_kv_cache_gib=0)
