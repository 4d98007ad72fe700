import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("QALIGN_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()


@pytest.fixture
def real_data(monkeypatch):
    """The real data directory ($QALIGN_DATA_DIR, as CI sets it). Where it is absent the tests using it are skipped,
    except under QALIGN_REQUIRE_DATA=1 (CI), where they fail."""
    if not (REAL_DATA / "mgsm" / "en.jsonl").is_file():
        message = f"real data not found at {REAL_DATA}; set QALIGN_DATA_DIR"
        if os.environ.get("QALIGN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("QALIGN_DATA_DIR", str(REAL_DATA))
    return REAL_DATA


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test writes runs and figures under its own temporary directory."""
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QALIGN_FIGURES_DIR", str(tmp_path / "figures"))
