"""Shared test helpers (imported by tests and by tests/conftest.py): a random tiny LLaMA built from a config (no
download), the configurations the training tests start from, fakes of engines, systems, analyses and GPU memory, and
the helpers of the reliability checks (one-line CLI errors, file modes, blocking calls, device nodes, a lock held by
another process)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from qalign_lib.models import modeling

ROOT = Path(__file__).resolve().parent.parent  # the repository
GIB = 2 ** 30
IS_ROOT = os.geteuid() == 0

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


# ----------------------------------------------------------------------------------------------------------------
# Fixed texts: the Alpaca prompt header of the reference, byte for byte; hypotheses and references for the MT metrics

ALPACA_HEADER = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n")
HYPS = ["Janet's ducks lay 16 eggs per day.", "She sells the rest at the market.", "", "How much does she make?",
        "The the the the the"]
REFS = ["Janet’s ducks lay 16 eggs per day.", "She sells the remainder at the farmers' market daily.",
        "How many eggs?", "How much in dollars does she make every day?", "A robe takes 2 bolts of blue fiber."]


# ----------------------------------------------------------------------------------------------------------------
# Training configurations of the tiny size (the paper's full fine-tuning and random batches: the tiny size's LoRA and
# length grouping are tested apart)


def _tiny(model, base: dict, kw: dict):
    from qalign_lib.core import config

    cfg = config.resolve("tiny", **{**base, "model": model, **kw})
    return cfg.replace(**{k: v for k, v in (("lora_r", None), ("group_by_length", False)) if k not in kw})


def train_cfg(model, **kw):
    """Training in this process: 4 examples a language, batch 4 in one micro-batch, max_length 512, a checkpoint
    every 2 steps."""
    return _tiny(model, dict(stage1_limit=4, epochs=1, batch_size=4, per_device_batch_size=4, lr=1e-3, max_length=512,
                             save_steps=2, report_to="none"), kw)


def launch_cfg(model, **kw):
    """Training through ``launch()`` (several processes): batch 8 of micro-batches of 4, max_length 1024, no
    checkpoint before step 100."""
    return _tiny(model, dict(stage1_limit=4, epochs=1, batch_size=8, per_device_batch_size=4, lr=1e-3, max_length=1024,
                             save_steps=100, report_to="none"), kw)


# ----------------------------------------------------------------------------------------------------------------
# The command line and the reliability checks


def one_line_error(err: str) -> str:
    """The ``qalign: error: ...`` message of stderr: a single line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qalign: error: ") and "Traceback" not in err, err
    return lines[0]


def cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``qalign ARGV``; argparse's usage errors (exit 2) included."""
    from qalign_lib.tools.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_lines(path: Path, lines) -> None:
    """A text file of ``lines`` (each with its line end), its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def nothing_under(path: Path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


def within(seconds: float, fn, fifo: Path | None = None):
    """``fn()``'s result or exception, failing (not hanging) if it blocks, e.g. opening a FIFO for writing."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:  # unblock the writer so that the thread ends
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            t.join(5)
            os.close(fd)
        pytest.fail(f"blocked for more than {seconds}s (writing into the FIFO {fifo}?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def device_node(tmp_path) -> Path:
    """A character device that behaves like /dev/full: a private copy where mknod is allowed (as root it is), so
    that a regression replaces the copy, never the machine's /dev/full."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    node = tmp_path / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        return node
    except OSError:
        if IS_ROOT:
            pytest.skip("cannot create a device node, and as root a regression would replace the real /dev/full")
        return Path("/dev/full")


HOLDER = """
import sys, time
from pathlib import Path
from qalign_lib.core import locks
with locks.lock(Path(sys.argv[1]), "a test holder"):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextmanager
def held_lock(path: Path):
    """Another process holding ``layout.lock(path)`` (``path``: the lock file); yields its Popen."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        if line.strip() != "locked":
            proc.kill()
            pytest.fail(f"the holder could not take the lock: {proc.stderr.read()[-2000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------------------------------
# Fakes: an engine, finished systems, analyses, a study file, GPU memory


class FakeEngine:
    """Answers prompt i with its text reversed, one batch per ``batch_size`` prompts; records what it was given."""
    name = "fake"

    def __init__(self):
        self.seen = []

    def generate(self, prompts, max_new_tokens, batch_size, token_budget=None, desc=""):
        self.seen += prompts
        for start in range(0, len(prompts), batch_size):
            yield [(i, prompts[i][::-1], 1) for i in range(start, min(start + batch_size, len(prompts)))]


def fake_system(cfg, ref: str, accuracy: dict):
    """A finished, evaluated system whose generations answer the first k questions of each language correctly
    (``accuracy``: benchmark -> lang -> k); ``ref`` is a run name, ``base`` or ``model:<id>``."""
    import json

    from qalign_lib.core import layout
    from qalign_lib.core.files import write_json
    from qalign_lib.data import corpora

    if ref == "base":
        root = layout.eval_root(cfg.size, cfg.model, "base")
    elif ref.startswith("model:"):
        root = layout.eval_root(cfg.size, "", model=ref.split(":", 1)[1])
    else:
        run = layout.run(cfg.size, ref)
        run.model.mkdir(parents=True, exist_ok=True)
        (run.model / "config.json").write_text("{}")
        run.done_marker.write_text("x\n")
        assert run.is_done()
        root = run.eval
    for benchmark, per_lang in accuracy.items():
        for lang, k in per_lang.items():
            gold = corpora.load_benchmark(benchmark, lang, limit=cfg.eval_limit)
            rows = [{"lang": lang, "id": q["id"], "response": f"The answer is {q['answer'] if i < k else 'unknown'}."}
                    for i, q in enumerate(gold)]
            path = root.generations(benchmark, lang)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(root.metrics, {})
    return root


def fake_analysis(hyp_quality: float, cosine: float, n: int = 6) -> dict:
    """What the analyses found for one system on mGSM (de, fr): translations right for a ``hyp_quality`` share of
    the questions, every cosine ``cosine``."""
    import pandas as pd

    refs = [f"Tom has {i} apples and buys {i + 1} more." for i in range(n)]
    hyps = [r if k < hyp_quality * n else "nothing" for k, r in enumerate(refs)]
    translation = {lang: [{"id": i, "hypothesis": h, "reference": r} for i, (h, r) in enumerate(zip(hyps, refs))]
                   for lang in ("de", "fr")}
    pq = pd.DataFrame([{"lang": lang, "layer": layer, "id": i, "cosine": cosine, "centred_cosine": cosine / 2,
                        "retrieval_top1": float(cosine > 0.5), "retrieval_top1_centred": 0.0}
                       for lang in ("de", "fr") for layer in range(3) for i in range(n)])
    from qalign_lib.analysis.representations import PER_QUESTION

    for column in PER_QUESTION:  # the other measures: the centred cosine; nearest English question: its own
        if column not in pq:
            pq[column] = pq["id"] if column.startswith("nearest_en") else pq["centred_cosine"]
    return {"mgsm": {"translation": translation, "representations": pq}}


BASE_STUDY = """size: tiny
benchmarks: [mgsm]
runs:
  s1: {stage: 1, task: x2en_question, langs: [de, fr]}
  final: {stage: 2, init: s1, stage2_data: [gsm8k]}
systems: {Base: base, Final: final}
"""


def write_study(params_dir, body: str):
    """params/study-x.yaml of a params/ copy (study ``x``)."""
    (params_dir / "study-x.yaml").write_text(body)


def fake_reserved(monkeypatch, reserved: list, calls: list, alive=lambda: False):
    """torch.cuda's memory_reserved reads reserved[0]; empty_cache is recorded and gives back the cache unless the
    model is still ``alive``."""
    import torch

    def empty_cache():
        calls.append("empty_cache")
        if not alive():
            reserved[0] = 0

    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved[0])
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
