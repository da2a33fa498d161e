"""Path checks and listings shared by the dataset readers of :mod:`detops.data`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["bracketed_listing", "checked_relative_path", "is_inside"]

_LIST_LIMIT = 20


def bracketed_listing(items: Iterable[str]) -> str:
    """``[a, b, c]`` for an error message; past 20 items ``[a, ..., t, ... (N in all)]``."""
    items = list(items)
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items)} in all)" if len(items) > _LIST_LIMIT else ""
    return f"[{shown}{more}]"


def is_inside(root_real: str, path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, links resolved, lies in the resolved folder ``root_real``."""
    real = os.path.realpath(path)
    return os.path.commonpath([root_real, real]) == root_real


def checked_relative_path(op: str, root: Path, name: str, where: str) -> str:
    """``name`` as a POSIX path relative to ``root``; raises if it escapes ``root``."""
    posix = name.replace("\\", "/")
    pure = PurePosixPath(posix)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", posix) or ".." in pure.parts:
        raise ValueError(
            f"{op}: {where}: image path must stay inside the image directory {str(root)!r} "
            f"(no absolute path, no '..'), got {name!r}"
        )
    if not is_inside(os.path.realpath(root), root / pure):
        raise ValueError(
            f"{op}: {where}: image path must stay inside the image directory {str(root)!r}, "
            f"got {name!r}, which resolves outside it (symlink)"
        )
    return str(pure)
