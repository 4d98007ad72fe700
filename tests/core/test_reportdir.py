"""A report folder written whole or marked incomplete (qalign_lib.core.reportdir), on a synthetic report folder: the
marker while it is written and after an error, the old index removed first, one writer at a time naming the
holder, the manifest of what was written (the killed report: tests/report/test_document.py)."""
from __future__ import annotations

import os
import socket

import pytest

from qalign_lib.core import reportdir
from qalign_lib.core.errors import RunError
from tests.helpers import held_lock


def _old_report(out):
    out.mkdir(parents=True)
    (out / "table2_mgsm.csv").write_text("old\n")
    (out / "README.md").write_text("# the old index\n")
    (out / "offline").mkdir()  # another study's report: a subfolder, not part of this one
    (out / "offline" / "README.md").write_text("other\n")


def test_a_report_is_marked_incomplete_until_its_index_is_written(tmp_path):
    out = tmp_path / "figures" / "tiny"
    _old_report(out)
    assert reportdir.incomplete(out) is None
    with reportdir.writing(out, "`qalign study --study tiny`"):
        marker = (out / "INCOMPLETE.md").read_text()
        assert f"by PID {os.getpid()} on " in marker and "Rerun `qalign study --study tiny` to write it whole" in marker
        assert not (out / "README.md").exists()  # the old index described the old files: gone before the first file
        why = reportdir.incomplete(out)
        assert why.startswith(f"the report in {out} is being written or was interrupted ({out / 'INCOMPLETE.md'}: "
                              "since 20"), why
        assert why.endswith(f" UTC by PID {os.getpid()} on {socket.gethostname()}); its files may mix two versions")
        (out / "table2_mgsm.csv").write_text("new\n")
        (out / "README.md").write_text("# the new index\n")
    assert not (out / "INCOMPLETE.md").exists() and reportdir.incomplete(out) is None
    files = reportdir.manifest(out)
    assert sorted(files) == ["README.md", "table2_mgsm.csv"]  # no lock, no subfolder
    assert reportdir.changed(out, files) is None
    (out / "table2_mgsm.csv").write_text("edited\n")
    assert reportdir.changed(out, files) == f"{out / 'table2_mgsm.csv'} changed since the report was written"
    (out / "table2_mgsm.csv").unlink()
    assert reportdir.changed(out, files) == f"{out / 'table2_mgsm.csv'} is missing"


def test_an_error_leaves_the_marker_and_no_index(tmp_path):
    out = tmp_path / "report"
    _old_report(out)
    with pytest.raises(ZeroDivisionError), reportdir.writing(out, "it"):
        (out / "table2_mgsm.csv").write_text("new\n")
        1 / 0
    assert (out / "INCOMPLETE.md").is_file() and not (out / "README.md").exists()
    assert "is being written or was interrupted" in reportdir.incomplete(out)
    with reportdir.writing(out, "it"):  # the rerun writes it whole
        (out / "README.md").write_text("# index\n")
    assert reportdir.incomplete(out) is None


def test_a_folder_without_index_is_incomplete(tmp_path):
    (tmp_path / "x.csv").write_text("1\n")
    assert reportdir.incomplete(tmp_path) == f"the report in {tmp_path} has no index README.md"


def test_two_reports_of_one_folder_at_once_the_second_fails_naming_the_first(tmp_path):
    out = tmp_path / "report"
    _old_report(out)
    with held_lock(reportdir.lock_file(out)) as holder:
        with pytest.raises(RunError) as e, reportdir.writing(out, "it"):
            pass
    assert str(e.value).startswith(f"the report in {out} is in use by another process (PID {holder.pid} on ")
    assert (out / "README.md").read_text() == "# the old index\n" and not (out / "INCOMPLETE.md").exists()
