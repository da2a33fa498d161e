"""A Ctrl-C that Python drops (raised inside a weakref callback or ``__del__``, where it is
printed as "Exception ignored" and lost) still stops verify and bench when they run as
commands (detops._interrupt), and the library outside a command is left alone."""

import gc
import os
import signal
import sys
import weakref

import pytest
from verify_helpers import FAST, IMPLS

import detops.verify
from detops import _interrupt
from detops.bench.cases._case import BenchCase, BenchFunctions
from detops.bench.runner import BenchSettings, run_benchmarks
from detops.verify import load_target, verify

# Real SIGINTs need Python's handler, whatever the test process started with.
pytestmark = pytest.mark.usefixtures("python_sigint_handler")

TINY = BenchSettings(warmup=1, repeats=3, max_seconds=0.2, reference_repeats=1, sample_seconds=0)


class _Thing:
    pass


def _swallowed_ctrl_c(dropped: list) -> None:
    """A real SIGINT whose KeyboardInterrupt Python drops: the handler runs inside a
    weakref callback. Outside a command the unraisable hook (replaced by the test)
    receives it, to print it; inside, the command's hook keeps it quiet."""
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGINT))
    del thing
    gc.collect()
    assert ref() is None
    if _interrupt._requested:  # inside catching(): recorded, and not printed
        assert dropped == []
    else:
        assert dropped and dropped[-1].exc_type is KeyboardInterrupt


@pytest.fixture
def dropped(monkeypatch):
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    return unraisable


def test_a_dropped_ctrl_c_is_raised_again_at_the_next_check(dropped):
    before, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with _interrupt.catching():
        _swallowed_ctrl_c(dropped)
        assert _interrupt._requested and dropped == []  # no "Exception ignored" printed
        with pytest.raises(KeyboardInterrupt):
            _interrupt.check()
    assert signal.getsignal(signal.SIGINT) is before and sys.unraisablehook is hook
    _interrupt.check()  # outside: nothing recorded any more


def test_other_unraisable_exceptions_still_reach_the_previous_hook(dropped):
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: 1 / 0)
    with _interrupt.catching():
        del thing
        gc.collect()
    assert ref() is None and [u.exc_type for u in dropped] == [ZeroDivisionError]


def test_outside_a_command_nothing_is_installed_or_recorded(dropped):
    before = signal.getsignal(signal.SIGINT)
    _swallowed_ctrl_c(dropped)  # Python's own handler: dropped, and nothing remembers it
    _interrupt.check()
    assert signal.getsignal(signal.SIGINT) is before


def test_verify_stops_after_a_dropped_ctrl_c(dropped):
    class DroppedAfterFirst(detops.verify.Progress):
        def done(self, report):
            _swallowed_ctrl_c(dropped)

    target = load_target(str(IMPLS / "partial.py"))
    names = ["get_fpn_location_coords", "box_iou"]
    with _interrupt.catching():
        report = verify(target, names=names, progress=DroppedAfterFirst(), **FAST)
    assert report.interrupted and [f.name for f in report.functions] == names[:1]


def test_bench_stops_after_a_dropped_ctrl_c(dropped):
    calls: list[str] = []

    def setup(device):
        def detops_call():
            calls.append("detops")
            if len(calls) == 1:
                _swallowed_ctrl_c(dropped)

        return BenchFunctions(detops=detops_call, peer=lambda: None)

    cases = [BenchCase(op, "tiny", "a peer", setup) for op in ("first", "second")]
    with _interrupt.catching():
        report = run_benchmarks(cases, "cpu", settings=TINY)
    assert report.interrupted and len(report.results) < 2


_CTRL_C_WHILE_EXITING = """
import atexit, os, signal, sys, time

def ctrl_c_while_exiting():  # runs after the exit handlers of torch and co., as the shell's
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    print("exit handlers done", flush=True)

atexit.register(ctrl_c_while_exiting)
sys.argv = ["detops", *sys.argv[1:]]
from detops.cli import entry
entry()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to itself")
@pytest.mark.usefixtures("python_sigint_handler")  # the child must not inherit SIGINT ignored
def test_a_ctrl_c_after_the_command_returned_is_ignored_and_the_status_stands():
    import subprocess

    from sigint_helpers import ROOT

    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_EXITING, "bench", "--op", "no_such_op"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2, (done.returncode, done.stderr)  # the command's own status
    assert "--op: no benchmark for op no_such_op" in done.stderr
    assert "KeyboardInterrupt" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.splitlines() == ["exit handlers done"]
