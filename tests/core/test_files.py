"""Writing files (qalign_lib.core.files): atomic writes never replace what is not a regular file of ours, never
block on a FIFO, write through symbolic links, follow the umask for new files and keep the mode of the files they
replace; figures are saved by the same rules. The device node of the ``/dev/full`` case is a private copy (mknod) so
that a regression can never replace the machine's own ``/dev/full``."""
from __future__ import annotations

import json
import os
import stat

import pytest

from qalign_lib.core import files
from qalign_lib.core.errors import QAlignError
from qalign_lib.train import training
from tests.helpers import device_node, mode, within


def test_atomic_write_refuses_a_directory(tmp_path):
    target = tmp_path / "adir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(QAlignError) as e:
        with files.atomic_write(target) as f:
            f.write("x")
    assert type(e.value).__name__ == "OutputError" and str(target) in str(e.value)
    assert (target / "inside").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name != "adir"]  # no temporary file left behind


def test_atomic_write_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write():
        with files.atomic_write(fifo) as f:
            f.write("x\n")

    with pytest.raises(QAlignError) as e:
        within(20, write, fifo)
    assert type(e.value).__name__ == "OutputError" and str(fifo) in str(e.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_atomic_write_refuses_a_device_node(tmp_path):
    node = device_node(tmp_path)
    with pytest.raises(QAlignError) as e:
        with files.atomic_write(node) as f:
            f.write("x\n")
    assert type(e.value).__name__ == "OutputError" and str(node) in str(e.value)
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_atomic_write_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with files.atomic_write(link) as f:
        f.write("new\n")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new\n"


def test_atomic_write_empty_path_is_an_output_error(tmp_path):
    with pytest.raises(QAlignError) as e:
        with files.atomic_write("") as f:
            f.write("x")
    assert type(e.value).__name__ == "OutputError"
    assert sorted(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_atomic_write_new_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_json(tmp_path / "a.json", {"a": 1})
        os.umask(0o027)
        files.write_jsonl(tmp_path / "b.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == 0o644 and mode(tmp_path / "b.jsonl") == 0o640


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask022):
    path = tmp_path / "metrics.json"
    for m in (0o664, 0o600):
        path.write_text("{}\n")
        path.chmod(m)
        files.write_json(path, {"m": m})
        assert mode(path) == m and json.loads(path.read_text()) == {"m": m}


def test_figures_save_follows_the_same_rules(tmp_path, umask022):
    new = files.save_figure(training.loss_curve([]), tmp_path / "new.png")
    assert mode(new) == 0o644
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    real.chmod(0o664)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    files.save_figure(training.loss_curve([]), link)
    assert link.is_symlink() and real.read_bytes().startswith(b"\x89PNG") and mode(real) == 0o664
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(QAlignError) as e:
        files.save_figure(training.loss_curve([]), folder)
    assert type(e.value).__name__ == "OutputError" and str(folder) in str(e.value) and folder.is_dir()


def test_follow_umask_gives_files_written_0600_the_mode_of_new_files(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "sub/x.json"):
        (folder / name).write_text("x")
        os.chmod(folder / name, 0o600)  # what safetensors leaves
    outside = tmp_path / "outside"
    outside.write_text("x")
    os.chmod(outside, 0o600)
    (folder / "link").symlink_to(outside)
    old = os.umask(0o002)
    try:
        files.follow_umask(folder)
    finally:
        os.umask(old)
    assert mode(folder / "model.safetensors") == 0o664 and mode(folder / "sub" / "x.json") == 0o664
    assert mode(outside) == 0o600  # a link is not followed


def test_is_disk_full_knows_enospc_and_a_library_oserror_that_only_says_so():
    import errno

    assert files.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert files.is_disk_full(OSError("write failed: No space left on device (os error 28)"))
    assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not files.is_disk_full(RuntimeError("No space left on device"))  # not an OSError: the caller decides
