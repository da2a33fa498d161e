"""Prefaulting a large, fresh CPU output in one system call.

A tensor of several megabytes is a new memory map from the C library's allocator, and
each of its 4 KiB pages costs a page fault when it is first written. The focal loss's
gradient at COCO size (16 x 20267 x 80 float32, 104 MB) took 25,334 faults a call, about
63 ms of system time in a 300 ms call on a 2-core AMD EPYC VM. ``madvise`` with
``MADV_POPULATE_WRITE`` (Linux 5.14 and later) maps all of them in one call: measured there
on fresh tensors written chunk by chunk, 104 MB 83 -> 67 ms, 16 MB 9.5 -> 8.2 ms, 4 MB
3.2 -> 2.5 ms, and slower below 4 MB (1.3 MB: 138 -> 212 µs), where the allocator reuses
pages already mapped.

The call is advice: it never changes a value, touches only whole pages inside the
tensor's own memory, opens no thread, and changes no process or thread setting. Where it
is unavailable (another OS, an older kernel, no C library through ctypes) or refused, the
pages fault in as before.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

from torch import Tensor

__all__ = ["POPULATE_MIN_BYTES", "populate_pages"]

POPULATE_MIN_BYTES = 4 << 20
_MADV_POPULATE_WRITE = 23  # linux/mman.h (Linux 5.14)
_PAGE = mmap.PAGESIZE


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def populate_pages(values: Tensor) -> None:
    """Map the pages of ``values`` (a fresh CPU tensor about to be written whole) in one
    system call, where it holds at least POPULATE_MIN_BYTES; otherwise, or where the OS
    refuses, nothing happens. The return code is not an error to report: a refused call
    only leaves the pages to fault in one by one when written."""
    if _madvise is None or values.device.type != "cpu" or not values.is_contiguous():
        return
    size = values.numel() * values.element_size()
    if size < POPULATE_MIN_BYTES:
        return
    address = values.data_ptr()
    start = -(-address // _PAGE) * _PAGE
    stop = (address + size) // _PAGE * _PAGE
    if stop > start:
        _madvise(start, stop - start, _MADV_POPULATE_WRITE)
