"""``python -m tests.train.rank_probe RUN_DIR``: the worker entry point of the launch tests
(tests/train/test_launch.py): ``fit`` with a callback that writes, per rank, which examples it trained on and a hash
of its final weights to RUN_DIR/rank<k>.json."""
import hashlib
import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from qalign_lib.train import training


def split_examples(input_ids, position_ids=None, attention_mask=None) -> list[list[int]]:
    """The examples of a batch: padding-free rows are cut where the position ids restart, padded rows unpadded."""
    out = []
    for r, row in enumerate(input_ids.tolist()):
        if attention_mask is not None:
            out.append([t for t, m in zip(row, attention_mask[r].tolist()) if m])
        elif position_ids is not None:
            starts = [k for k, p in enumerate(position_ids[r].tolist()) if p == 0] + [len(row)]
            out += [row[a:b] for a, b in zip(starts, starts[1:])]
        else:
            out.append(row)
    return out


def example_hash(ids) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


class RankProbe(TrainerCallback):
    """Records the examples each forward pass of this rank sees and, at the end, a hash of its weights."""

    def __init__(self, out: Path):
        self.out, self.seen = Path(out), []

    def on_train_begin(self, args, state, control, model=None, **kw):
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.seen += [example_hash(ids) for ids in split_examples(kwargs["input_ids"], kwargs.get("position_ids"),
                                                                  kwargs.get("attention_mask"))]

    def on_train_end(self, args, state, control, model=None, **kw):
        weights = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        rank = int(os.environ.get("RANK", "0"))
        (self.out / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "examples": self.seen,
             "weights": weights.hexdigest(), "steps": state.global_step,
             "zero3_partitioned": all(hasattr(p, "ds_id") for p in model.parameters())}))


if __name__ == "__main__":  # worker entry point of the DDP test (see the module docstring)
    training.fit(Path(sys.argv[1]), callbacks=[RankProbe(Path(sys.argv[1]))])
