"""``python -m tests.train.load_probe RUN_DIR``: the worker entry point of the ZeRO-3 loading test
(tests/train/test_training_gpu.py): ``fit`` with model loading and the pad-token initialisation observed from inside,
written to RUN_DIR/load-rank<k>.json."""
import json
import os
import sys
from pathlib import Path

from qalign_lib.models import modeling
from qalign_lib.train import training


class LoadProbe:
    """Wraps modeling.load_model and modeling.ensure_pad_token in a worker and records what they saw."""

    def __init__(self, out: Path):
        self.out, self.record = Path(out), {}
        self.load, self.pad = modeling.load_model, modeling.ensure_pad_token
        modeling.load_model, modeling.ensure_pad_token = self._load, self._pad

    def _load(self, *args, **kwargs):
        from transformers.integrations import is_deepspeed_zero3_enabled

        self.record["zero3_inside_loading"] = is_deepspeed_zero3_enabled()
        model = self.load(*args, **kwargs)
        self.record["partitioned_after_loading"] = all(hasattr(p, "ds_id") for p in model.parameters())
        self.record["embedding_numel_after_loading"] = model.get_input_embeddings().weight.numel()
        return model

    def _pad(self, tokenizer, model=None):
        import deepspeed

        old = model.get_input_embeddings().num_embeddings
        grew = self.pad(tokenizer, model)
        embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
        with deepspeed.zero.GatheredParameters(embeddings, modifier_rank=None):
            self.record["pad_rows"] = [[e.shape[0] - old, (e[old:] - e[:old].mean(0)).abs().max().item()] for e in embeddings]
        rank = int(os.environ.get("RANK", "0"))
        (self.out / f"load-rank{rank}.json").write_text(json.dumps({**self.record, "grew": grew, "old": old}))
        return grew


if __name__ == "__main__":  # worker entry point of the ZeRO-3 loading test (see the module docstring)
    LoadProbe(Path(sys.argv[1]))
    training.fit(Path(sys.argv[1]))
