"""detops._atomic: a write either replaces the file whole or leaves it and no trace."""

from __future__ import annotations

import os
import stat

import pytest

from detops import _atomic
from detops._atomic import atomic_path, atomic_write_text


def test_a_write_replaces_the_file_with_the_umask_mode(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    seen = []
    with atomic_path(path) as tmp:
        seen.append(stat.S_IMODE(os.stat(tmp).st_mode))
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the rename
    assert path.read_text() == "new" and seen == [0o600]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_ctrl_c_while_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """A KeyboardInterrupt right after the temporary file exists (before the caller has its
    name) removes it; the target is untouched."""
    path = tmp_path / "out.txt"
    path.write_text("old")
    real_close = os.close

    def interrupted_close(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_error_in_the_block_removes_the_temporary_file(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_with_the_drawn_name_is_never_touched(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    taken = tmp_path / ".out.txt.taken.tmp"
    taken.write_text("someone else's")
    names = iter([taken, tmp_path / ".out.txt.fresh.tmp"])
    monkeypatch.setattr(_atomic, "_temporary_name", lambda target: next(names))
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and taken.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.txt.taken.tmp", "out.txt"]
