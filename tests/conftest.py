"""Fixtures of every tier (the shared helper functions: tests/helpers.py; the synthetic data: tests/synthetic.py).

* ``synthetic_data``: a small generated data directory (tests/synthetic.py), set as QALIGN_DATA_DIR. Unit tests use it.
* ``real_data``: the real data directory ($QALIGN_DATA_DIR, as CI sets it); tests that check the real files use it.
  Where it is absent they are skipped, except under QALIGN_REQUIRE_DATA=1 (CI), where they fail.
* ``tiny_model``: a random tiny LLaMA (tests/helpers.py), built once per session; tests read it, never write into it.
* ``params_copy``: a writable copy of params/ as QALIGN_PARAMS_DIR; ``tiny_params``: that copy with the tiny size made
  minute (the tiny LLaMA, subsets of a few examples) for whole stages, studies and notebooks.
* ``reference_mirror``: a read-only git mirror of the reference repository NJUNLP/QAlign, named by
  $QALIGN_REFERENCE_MIRROR; tests that compare with it are skipped where it is unset or absent.
* ``workers_env``: what the processes of ``accelerate launch`` need here; ``umask022``: a umask of 022.
* every test runs in its own temporary directory and writes runs, figures and caches under it, and the session
  checks at the end that the repository's working tree was not changed by the tests.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import ROOT, tiny_llama  # noqa: E402 (after the assertion rewriting is registered)

REAL_DATA = Path(os.environ.get("QALIGN_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()


@pytest.fixture
def real_data(monkeypatch):
    if not (REAL_DATA / "mgsm" / "en.jsonl").is_file():
        message = f"real data not found at {REAL_DATA}; set QALIGN_DATA_DIR"
        if os.environ.get("QALIGN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("QALIGN_DATA_DIR", str(REAL_DATA))
    return REAL_DATA


@pytest.fixture(scope="session")
def _synthetic_root(tmp_path_factory):
    from tests.synthetic import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("synthetic-data"))


@pytest.fixture
def synthetic_data(_synthetic_root, monkeypatch):
    """The synthetic data directory (read-only by convention: copy it to change files)."""
    monkeypatch.setenv("QALIGN_DATA_DIR", str(_synthetic_root))
    return _synthetic_root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The path of a random tiny LLaMA (tests/helpers.py): read-only by convention (copy it to change files)."""
    return str(tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def params_copy(tmp_path, monkeypatch):
    """A writable copy of params/ used as QALIGN_PARAMS_DIR."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    monkeypatch.setenv("QALIGN_PARAMS_DIR", str(params))
    return params


# the tiny size of ``tiny_params``: minute subsets, few new tokens, three evaluation and two stage-1 languages
TINY_SIZE = dict(stage1_limit=2, stage2_limit=4, batch_size=4, per_device_batch_size=4, max_length=512, eval_limit=2,
                 max_new_tokens={"mgsm": 8, "msvamp": 8}, eval_langs=["sw", "de", "en"], stage1_langs=["sw", "de"],
                 report_to=["none"], analysis_langs=["sw", "de"], translation_limit=2, translation_max_new_tokens=6,
                 representation_limit=3, engine="hf")  # notebook kernels are other processes: hf as in-process tests


@pytest.fixture
def tiny_params(params_copy, monkeypatch, synthetic_data, tiny_model):
    """A params/ copy whose tiny size is the random tiny LLaMA with minute subsets (TINY_SIZE); notebook kernels
    import this checkout's qalign_lib (PYTHONPATH) and see the test's data, runs and params directories
    (environment)."""
    path = params_copy / "sizes" / "tiny.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.update(model=tiny_model, **TINY_SIZE)
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return params_copy


@pytest.fixture
def reference_mirror():
    """The read-only git mirror of NJUNLP/QAlign named by $QALIGN_REFERENCE_MIRROR; skips where it is unset or absent."""
    value = os.environ.get("QALIGN_REFERENCE_MIRROR")
    if not value:
        pytest.skip("QALIGN_REFERENCE_MIRROR is not set: set it to a read-only git mirror of NJUNLP/QAlign "
                    "(git clone --mirror https://github.com/NJUNLP/QAlign; e.g. /work/.mirror/NJUNLP+QAlign/repo)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"QALIGN_REFERENCE_MIRROR={value} is not a directory (a git mirror of NJUNLP/QAlign)")
    return path


@pytest.fixture
def workers_env(monkeypatch):
    """What `accelerate launch` workers need here: the project importable (tests.*), few threads, quiet warnings."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MAIN_PROCESS_PORT", str(29500 + os.getpid() % 1000))  # no clash with a parallel run


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def _hf_engine_outside_the_vllm_tier(request, monkeypatch):
    """engine auto means vLLM wherever it is installed, and .venv has its CPU build: tests outside the vllm tier
    generate as on a machine without vLLM (the hf engine: no engine start-up, the random tiny models), unless they
    fake vLLM themselves; the vllm tier (tests/models/test_engines_vllm.py) runs the real one."""
    if request.node.get_closest_marker("vllm") is None:
        from qalign_lib.models import engines

        monkeypatch.setattr(engines, "vllm_installed", lambda: False)


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test runs in its own temporary directory (CLI calls with odd --out values must never create anything
    in the repository) and writes runs and figures under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QALIGN_FIGURES_DIR", str(tmp_path / "figures"))


# where a test that forgot its temporary directories would write: the outputs (ignored by git, so listed with
# --ignored), the notebooks it executes and the parameter files it configures
WATCHED = ("runs", "figures", "notebooks", "params", "data")


def _tree_state() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *WATCHED],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout


@pytest.fixture(scope="session", autouse=True)
def _repository_untouched():
    """Tests never write into the repository: the git status of the watched folders (ignored files included) is the
    same after the session as before."""
    before = _tree_state()
    yield
    after = _tree_state()
    if before is not None and after != before:
        changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
        pytest.fail(f"the tests changed the repository's working tree: {changed[:10]}", pytrace=False)
