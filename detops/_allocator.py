"""The C allocator of a benchmark program: glibc malloc with fixed thresholds.

glibc's malloc gives memory back to the system when the free space at the top of its heap
passes a trim threshold, and it moves that threshold and its mmap threshold as a program
runs (each freed mmap chunk raises them). Which of a call's buffers come back as fresh
pages, each first touch a page fault, then depends on the history of the whole process:
three runs of the same ``detops bench --quick --op box_iou`` read torchvision's
``box_iou`` at 1000 x 1000 at 61.3, 15.3 and 5.4 ms, with 9,262, 9,734 and 0 faults a
call (2 CPUs, AMD EPYC, idle). With both thresholds fixed (:func:`steady_allocator`),
freed memory stays in the process and buffers up to 32 MiB come from the heap, so a
call's cost no longer depends on what ran before it; larger buffers are mapped, and
faulted, at every call, as they are in any process.

Only a program may do this (it changes the process's allocator for the rest of its life):
``detops bench`` run as a program (``python -m detops bench`` or the ``detops`` script)
calls :func:`steady_allocator` before it imports torch; :func:`detops.cli.main` called
from Python does not, and its report says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

__all__ = ["allocator_description", "steady_allocator"]

# mallopt's parameter numbers (glibc's malloc.h) and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
# Where a user sets the thresholds themselves (their choice is kept): these variables, or
# a glibc.malloc. tunable in GLIBC_TUNABLES.
_THRESHOLD_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_done: str | None = None  # what steady_allocator did, once it ran


@functools.cache
def _glibc() -> str | None:
    """glibc's version, or None where the C library is another (platform reads it from the
    interpreter's binary: once)."""
    name, version = platform.libc_ver()
    return version if name == "glibc" and version else None


def _user_settings() -> list[str]:
    """The environment variables through which the user set malloc's thresholds: a
    non-empty ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_``, or a
    ``glibc.malloc.`` tunable in ``GLIBC_TUNABLES`` (other tunables leave malloc alone)."""
    named = [name for name in _THRESHOLD_VARIABLES if os.environ.get(name)]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        named.append("GLIBC_TUNABLES")
    return named


def steady_allocator() -> str:
    """Fix glibc malloc's trim and mmap thresholds for the rest of the process (see the
    module docstring); returns :func:`allocator_description`. For a benchmark program
    only: it changes process-wide state. Does nothing where the C library is not glibc,
    where the user set malloc's tunables in the environment, or where mallopt refuses."""
    global _done
    if _done is not None:
        return allocator_description()
    version = _glibc()
    user = _user_settings()
    if version is None:
        _done = "not glibc: the C allocator's defaults"
    elif user:
        _done = f"glibc {version}, as set in the environment ({', '.join(user)})"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(
            _M_MMAP_THRESHOLD, MMAP_THRESHOLD
        ):
            _done = (
                f"glibc {version}, trim threshold {TRIM_THRESHOLD >> 30} GiB and mmap "
                f"threshold {MMAP_THRESHOLD >> 20} MiB fixed for this run"
            )
        else:
            _done = f"glibc {version}, defaults (mallopt refused the fixed thresholds)"
    return allocator_description()


def allocator_description() -> str:
    """The allocator this process benchmarks with, for the report's header and JSON."""
    if _done is not None:
        return _done
    version = _glibc()
    if version is None:
        return "the C allocator's defaults"
    return (
        f"glibc {version}, defaults (moving thresholds: run detops bench as a program to fix them)"
    )
