"""verify's fork server: the program of :class:`~detops.verify.harness.ForkServer`.

One fresh Python process per :func:`~detops.verify.verify` run (functions mode, CPU). It
imports torch and detops but never runs a torch op, so that its OpenMP thread pool is never
started: a worker forked from it runs the user's function at torch's default thread count
(a process forked after its parent used OpenMP deadlocks in its first parallel region, and
the caller's process has usually used it).

It also imports a few modules that torch imports on first use (each worker would import
them again), and the target (``source``: a :attr:`~detops.verify.harness.Target.source`), so
that a worker has the functions at once, unless that import starts a thread (a torch op
large enough to start OpenMP's pool, a thread of the user's): forking would not be safe
then, and the server runs itself afresh without it (each worker imports the target then).

It reads requests from its control socket (a Unix socket pair with the caller), one at a
time, as length-prefixed pickles, and answers each:

* ``("fork", job)``, followed by one byte that carries (``socket.send_fds``) the worker's
  end of a fresh socket pair: it forks a worker, which closes the control socket and runs
  :func:`~detops.verify.harness._worker_main` on that socket; the server closes its copy
  and replies ``("forked", pid)``. The job is pickled bytes that only the worker unpickles
  (it may hold the user's function; the server never unpickles it).
* ``("wait", pid)``: it reaps that worker (the caller kills it first, or lets it exit)
  and replies ``("status", status)``, the raw wait status (None for a pid it does not know).

Its first message is ``("ready", pid)``. It ignores SIGINT (Ctrl-C is the caller's to
handle; the program that imports this module sets that before importing anything). At the
end of the control socket (the caller closed it, or died) it kills and reaps any worker
left, and exits.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import sys
import warnings
from typing import Any

# Modules torch imports on first use, that workers would otherwise import each time: the
# course adapters' torch.broadcast_shapes imports sympy through this one (0.3 s).
_WARM = ("torch.fx.experimental.symbolic_shapes",)


def _threads() -> int | None:
    """How many threads this process has (None where the platform does not say)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _preload(source: str, stderr_fd: int) -> Any:  # pragma: no cover - in the server
    """The target loaded from ``source``, or None where that failed or where the platform
    cannot count threads. Runs this program afresh, without it, where the import started a
    thread (stderr restored first: the fresh program silences it again)."""
    from .harness import load_target

    before = _threads()
    if before is None:
        return None
    try:
        target = load_target(source)
    except BaseException:  # the worker will try again, and say why
        target = None
    if _threads() != before:
        # argv: -c, the control socket's fd, the caller's sys.path, the source
        from .harness import _SERVER_PROGRAM

        os.dup2(stderr_fd, 2)
        os.execv(sys.executable, [sys.executable, "-c", _SERVER_PROGRAM, *sys.argv[1:3], ""])
    return target


def main(control_fd: int, source: str | None, stderr_fd: int) -> None:  # pragma: no cover
    """Serve the caller on the socket ``control_fd`` until its end, then exit. File
    descriptor 2 is silenced until then; ``stderr_fd`` is the real one, restored for the
    workers (the user's function may write to stderr)."""
    from .harness import _read_message, _worker_main, _write_message

    for name in _WARM:
        try:
            importlib.import_module(name)
        except Exception:  # another torch version: the workers import what they need
            pass
    if source:  # the caller can tell an import that ends or hangs this process
        _write_message(control_fd, pickle.dumps(("importing", source)))
    preloaded = _preload(source, stderr_fd) if source else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # again: the target's import may set it
    sys.stderr.flush()
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    control = socket.socket(fileno=control_fd)
    server = os.getpid()
    children: set[int] = set()
    _write_message(control_fd, pickle.dumps(("ready", server)))
    try:
        while True:
            try:
                message = _read_message(control_fd, None)
            except OSError:  # the caller closed its end with a reply unread
                message = None
            if message is None:
                break
            request = pickle.loads(message)
            if request[0] == "fork":
                _, fds, _, _ = socket.recv_fds(control, 1, 1)
                (worker_fd,) = fds
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                    pid = os.fork()
                if pid == 0:  # the worker
                    code = 0
                    try:
                        control.close()
                        _worker_main(request[1], worker_fd, server, preloaded)
                    except BaseException:
                        code = 1
                    finally:
                        os._exit(code)
                os.close(worker_fd)
                children.add(pid)
                reply: tuple = ("forked", pid)
            elif request[0] == "wait":
                pid = request[1]
                status = None
                if pid in children:
                    children.discard(pid)
                    try:
                        status = os.waitpid(pid, 0)[1]
                    except ChildProcessError:
                        pass
                reply = ("status", status)
            else:
                reply = ("error", f"unknown request {request[0]!r}")
            try:
                _write_message(control_fd, pickle.dumps(reply))
            except OSError:  # the caller is gone
                break
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    os._exit(0)
