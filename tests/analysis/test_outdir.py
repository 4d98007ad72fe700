"""``--out`` folders are the project's own: new, empty or marked; anything else is refused untouched."""
from __future__ import annotations

import json

import pytest

from qalign_lib.analysis import outdir
from qalign_lib.core import layout
from qalign_lib.core.errors import OutputError


def test_a_new_folder_is_created_and_marked(tmp_path):
    out = outdir.claim(tmp_path / "a" / "b", "translation")
    assert out == tmp_path / "a" / "b" and sorted(p.name for p in out.iterdir()) == [layout.OUT_MARKER]
    assert json.loads((out / layout.OUT_MARKER).read_text()) == {"written_by": "qalign analyze translation"}
    assert outdir.is_marked(out) and outdir.check(out, "translation") == out  # marked: taken again


def test_an_empty_folder_is_marked(tmp_path):
    assert outdir.claim(tmp_path, "representations") == tmp_path
    assert json.loads((tmp_path / layout.OUT_MARKER).read_text()) == {"written_by": "qalign analyze representations"}


def test_another_tools_folder_is_refused_untouched(tmp_path):
    (tmp_path / "settings.json").write_text('{"theirs": 1}\n')
    (tmp_path / "metrics.json").write_text("theirs\n")
    with pytest.raises(OutputError) as e:
        outdir.claim(tmp_path, "translation")
    assert str(e.value) == (f"--out {tmp_path}: is not empty and was not written by qalign (it holds metrics.json, "
                            f"settings.json); choose a new or empty folder (nothing in it was changed)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "settings.json"]
    assert (tmp_path / "settings.json").read_text() == '{"theirs": 1}\n'


def test_the_other_analysis_folder_is_refused(tmp_path):
    outdir.claim(tmp_path, "translation")
    with pytest.raises(OutputError) as e:
        outdir.claim(tmp_path, "representations")
    assert "holds the output of qalign analyze translation" in str(e.value)
    (tmp_path / layout.OUT_MARKER).write_text("not json")
    with pytest.raises(OutputError) as e:
        outdir.check(tmp_path, "translation")
    assert "holds the output of another tool" in str(e.value)


@pytest.mark.parametrize("given", ["", " ", None])
def test_an_empty_out_is_refused(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError) as e:
        outdir.claim(given, "translation")
    assert "give a folder to write the analysis into" in str(e.value) and list(tmp_path.iterdir()) == []


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        outdir.check(tmp_path / "f", "translation")


def test_only_own_files_are_moved_aside(tmp_path):
    outdir.claim(tmp_path, "translation")
    (tmp_path / "settings.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    moved = outdir.move_own_aside([tmp_path / "settings.json", tmp_path / "de.jsonl"], "settings changed")
    assert len(moved) == 1 and moved[0].name.startswith("settings.json.replaced-") and moved[0].read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([layout.OUT_MARKER, "notes.txt", moved[0].name])


def test_a_folder_with_only_a_lock_is_taken(tmp_path):
    """Another `qalign analyze` may hold the folder's lock (the lock then decides, naming its holder)."""
    (tmp_path / ".lock").write_text("")
    assert outdir.claim(tmp_path, "translation") == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", layout.OUT_MARKER]
