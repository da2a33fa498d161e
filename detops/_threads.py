"""The "one intra-op thread" scope shared by ops made of many small tensor ops."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["one_intraop_thread"]

_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def one_intraop_thread(device: torch.device) -> Iterator[None]:
    """Run the many small CPU ops of one call on one intra-op thread, then restore.

    The op is a sequence of many small tensor ops (sorts, searches, gathers of a few
    thousand elements). Threads pay off little at those sizes, and on a loaded machine
    each OpenMP hand-off can stall for milliseconds (measured: 12x slower at 1000 boxes
    with 2 threads on a busy 2-core machine; torchvision's CPU kernel is single-threaded
    too). ``torch.set_num_threads`` is process-wide: it is set to 1 while any call is
    inside, and restored when the last one leaves.
    """
    global _threads_users, _threads_saved
    if device.type != "cpu":
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved > 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved > 1:
                torch.set_num_threads(_threads_saved)
