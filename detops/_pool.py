"""Work kept under ATen's parallel grain, and shared among Python threads where that pays.

An ATen op on more than ``at::internal::GRAIN_SIZE`` (32768) elements forks and joins
torch's OpenMP threads (VML functions such as exp, log and sqrt from 2048 on). On an idle
machine that is cheap; on a loaded one, the join waits for a thread the OS has descheduled,
and a loop of such ops (NMS tiles, focal-loss chunks) ran 3-5x slower than torchvision's
serial kernels. So those loops cut their work into pieces whose ops stay under the grain
(each runs serially in the calling thread; see :mod:`detops._serial`). :func:`run_tasks`
shares such pieces among Python threads (ATen releases the GIL inside every op, and a
descheduled thread only delays the pieces it holds); it pays for the focal loss's chunks
of ~20 ops of 5-50 µs, not for NMS tiles, whose ops of 2-6 µs each hand the GIL over too
often (1.4x slower at 20k boxes).

No thread setting of torch is read-modified-written: ``torch.get_num_threads()`` is only
read, to size the group of threads.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["Worker", "run_tasks"]

# A worker processes task ``i``; ``make_worker()`` builds one (with its own buffers) per thread.
Worker = Callable[[int], None]

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    """One pool for the whole process, created on first use and reused: ``os.cpu_count()``
    worker threads at most, named ``detops-chunks``."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="detops-chunks")
        return _POOL


def run_tasks(
    device: torch.device, n_tasks: int, make_worker: Callable[[], Worker], min_per_thread: int = 8
) -> None:
    """Run ``worker(i)`` for ``i < n_tasks``; ``make_worker()`` builds one worker (with its
    own buffers) per thread.

    On CPU, when every thread gets at least ``min_per_thread`` tasks, up to
    ``torch.get_num_threads()`` (read, never set) threads share them: the calling thread and
    helpers from :func:`_shared_pool`. Tasks are pulled from a shared counter (``next`` is
    atomic under the GIL), so the caller finishes the work alone if the pool is busy (with
    other callers' tasks), and a descheduled thread does not hold back a fixed share.
    Elsewhere (CUDA) the calling thread runs every task.
    """
    threads = torch.get_num_threads()
    workers = 1 if device.type != "cpu" else max(1, min(threads, n_tasks // min_per_thread))
    counter = itertools.count()

    def loop() -> None:
        worker = make_worker()
        with torch.no_grad():  # pool threads do not inherit the caller's grad mode
            while (i := next(counter)) < n_tasks:
                worker(i)

    if workers == 1:
        loop()
        return
    helpers = [_shared_pool().submit(loop) for _ in range(workers - 1)]
    try:
        loop()
    finally:
        for helper in helpers:
            helper.result()
