"""Atomic file writes: write to a temporary file in the target's folder, then ``os.replace``.

A reader never sees a half-written file: it sees the old file or the new one. The
temporary file lives in the same folder so the final rename stays on one filesystem. It
is created as ``tempfile.mkstemp`` creates one (mode 0600, never over an existing file);
before the rename it gets the mode a plain ``open(path, "w")`` would give
(``0o666 & ~umask``), so results are readable as usual.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _current_umask() -> int:
    # Linux reports it without changing it; elsewhere set and restore it (os.umask is the
    # only portable reader).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the umask's mode and
    rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    Parent folders are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen before the file is created, inside the block that removes it: a
    # Ctrl-C that lands while it is being created (inside tempfile.mkstemp, it would leave
    # a file nobody knows the name of) still removes it.
    tmp = _temporary_name(target)
    try:
        while True:
            try:  # mkstemp's creation: the caller's own file, mode 0600, never an existing one
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:  # another file's name: leave it, draw another
                tmp = _temporary_name(target)
        yield tmp
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _temporary_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it replaces ``path`` atomically.

    ``fsync=True`` also flushes the data to disk before the rename (survives a power cut);
    the rename alone already guarantees that readers never see a partial file.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns ``path`` as a
    :class:`Path`."""
    with atomic_open(path, fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path`` as a :class:`Path`."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
