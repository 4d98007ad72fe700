"""Fixtures of every tier.

* ``synthetic_data``: a small generated data directory (tests/synthetic.py), set as QALIGN_DATA_DIR. Unit tests use it.
* ``real_data``: the real data directory ($QALIGN_DATA_DIR, as CI sets it); tests that check the real files use it.
  Where it is absent they are skipped, except under QALIGN_REQUIRE_DATA=1 (CI), where they fail.
* every test writes runs, figures and caches under its own temporary directory, and the session checks at the end
  that the repository's working tree was not changed by the tests.
"""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test writes runs and figures under its own temporary directory."""
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
