"""Ctrl-C that is not lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread is. If
that is inside a weakref callback or a ``__del__`` method (garbage collection runs them
at any allocation), Python prints "Exception ignored in ..." and drops it: a long run
goes on as if no key had been pressed (seen in verify, 2 of ~25 Ctrl-Cs). The commands
(not the library: a signal handler is process-wide state, which is the application's)
run inside :func:`catching`, whose handler also records the request; the long loops of
verify and bench call :func:`check`, which raises it again where it was dropped. While
they start (checking options, importing torch), Ctrl-C is :func:`held` until the imports
are done.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["catching", "check", "held", "interrupts_ignored", "raised_during_interrupt"]

_requested = False


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was recorded (by :func:`catching`'s handler)
    and dropped on its way; nothing otherwise."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """While inside, SIGINT raises KeyboardInterrupt as usual and is also recorded for
    :func:`check`; a KeyboardInterrupt that Python drops is not printed as "Exception
    ignored in ..." (check raises it again). The previous handler and unraisable hook are
    restored on exit. Only the main thread can set a handler; elsewhere this does
    nothing."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook

    def hook(unraisable) -> None:
        if not (_requested and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            previous_hook(unraisable)

    _requested = False
    signal.signal(signal.SIGINT, _handler)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _requested = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within: Ctrl-C waits, and is raised where the block ends (not when it ends with an
    error). A KeyboardInterrupt that cuts an import short leaves its module half imported:
    numpy then refuses to load again, and Python may end the process by SIGINT even after
    the interrupt was handled. Only the main thread can set a handler, and an ignored
    SIGINT stays ignored; there this does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(
        signal.SIGINT
    ) in (signal.SIG_IGN, None):
        yield
        return
    pressed = False

    def hold(signum, frame) -> None:
        nonlocal pressed
        pressed = True

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:  # to the handler that was there: catching's records it too
        signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Within: Ctrl-C does nothing, for a command that is already stopping on one and
    prints how to resume (a second Ctrl-C there cut the line short). Main thread only,
    as :func:`held`; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def raised_during_interrupt(error: BaseException) -> bool:
    """Whether a ``KeyboardInterrupt`` is among the exceptions ``error`` was raised while
    handling (its ``__context__`` and ``__cause__`` chain)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error.__context__, error.__cause__]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        pending += [current.__context__, current.__cause__]
    return False
