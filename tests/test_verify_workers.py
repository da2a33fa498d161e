"""Where verify runs a function: in worker processes forked from a fresh server process
(``detops.verify._forkserver``), at torch's default thread count, even after the caller
used OpenMP; nothing is left behind (after a normal run, a hang or Ctrl-C); a function
that cannot be sent to a worker runs in a thread, and a server that fails makes no hang."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import types
import warnings

import pytest
import torch
from verify_helpers import FAST, IMPLS, box_iou_not_here, child_pids, gone, only

from detops.boxes import box_iou as detops_box_iou
from detops.verify import Progress, Target, harness, load_target, verify
from detops.verify.harness import ForkedRunner, ForkServer

pytestmark = pytest.mark.skipif(not ForkedRunner.available(), reason="no fork on this platform")

IOU = "from detops.boxes import box_iou as _iou\n"


def _impl(tmp_path, body: str, top: str = "") -> str:
    """A .py target whose box_iou runs ``body`` (indented code) and returns the right IoU."""
    path = tmp_path / "impl_under_test.py"
    path.write_text(
        f"import os\nimport torch\n{IOU}{top}\n\ndef box_iou(boxes1, boxes2):\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + "    return _iou(boxes1, boxes2)\n"
    )
    return str(path)


def _workers(monkeypatch) -> list[int]:
    """The pids of the workers verify forks from now on."""
    pids: list[int] = []
    start = ForkedRunner._start

    def record_start(self):
        start(self)
        pids.append(self.pid)

    monkeypatch.setattr(ForkedRunner, "_start", record_start)
    return pids


def test_the_worker_runs_at_torchs_default_thread_count(tmp_path):
    record = tmp_path / "threads.txt"
    impl = _impl(
        tmp_path,
        f"with open({str(record)!r}, 'a') as out:\n"
        "    out.write(f'{os.getpid()} {torch.get_num_threads()}\\n')",
    )
    report = verify(load_target(impl), names=["box_iou"], **FAST)
    assert only(report, "box_iou").verdict == "PASS"
    seen = {tuple(map(int, line.split())) for line in record.read_text().splitlines()}
    assert seen
    assert {pid for pid, _ in seen}.isdisjoint({os.getpid()})  # never in this process
    assert {threads for _, threads in seen} == {torch.get_num_threads()}


@pytest.mark.parametrize("at_import", [False, True], ids=["in the call", "at import too"])
def test_a_parallel_op_after_the_caller_used_openmp_does_not_deadlock(tmp_path, at_import):
    # The caller's OpenMP pool runs from here on: a process forked from this one would
    # deadlock in its first parallel region. A target whose import runs one (the server
    # would have its pool then) is loaded in each worker instead.
    torch.ones(2_000_000).exp().sum()
    work = "torch.ones(2_000_000).exp().sum()"
    impl = _impl(tmp_path, work, top=f"{work}\n" if at_import else "")
    report = verify(load_target(impl), names=["box_iou"], **{**FAST, "timeout": 20.0})
    result = only(report, "box_iou")
    assert result.verdict == "PASS", result.summary


def test_nothing_is_left_behind_after_a_run_and_after_a_hang(monkeypatch):
    before = child_pids()
    pids = _workers(monkeypatch)
    report = verify(load_target(str(IMPLS / "correct.py")), names=["box_iou", "nms"], **FAST)
    assert all(f.verdict == "PASS" for f in report.functions)
    assert len(pids) == 2 and all(gone(pid) for pid in pids)
    assert child_pids() <= before
    # A hang: the worker killed at each time limit, a fresh one for the next call.
    pids.clear()
    hangs = load_target(str(IMPLS / "wrong_hanging.py"))
    report = verify(hangs, names=["clip_boxes_to_image"], **{**FAST, "timeout": 0.5})
    assert any(f.kind == "timeout" for f in only(report, "clip_boxes_to_image").failures)
    assert len(pids) > 1 and all(gone(pid) for pid in pids)
    assert child_pids() <= before


@pytest.mark.usefixtures("python_sigint_handler")  # a real SIGINT
def test_nothing_is_left_behind_after_ctrl_c_in_a_hanging_call(tmp_path, monkeypatch):
    marker = tmp_path / "hanging"
    impl = _impl(tmp_path, f"open({str(marker)!r}, 'w').close()\nwhile True:\n    pass")
    before = child_pids()
    pids = _workers(monkeypatch)
    caller = os.getpid()

    def press_ctrl_c():  # a real SIGINT, once the worker is inside the hanging call
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(caller, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    report = verify(load_target(impl), names=["box_iou"], **{**FAST, "timeout": 60.0})
    presser.join()
    assert report.interrupted and report.functions == []
    assert len(pids) == 1 and gone(pids[0])
    assert child_pids() <= before


def test_ctrl_c_while_the_server_starts_leaves_nothing(monkeypatch):
    before = child_pids()
    servers: list[ForkServer] = []
    reply = ForkServer._reply

    def interrupted_start(self, seconds, what):
        servers.append(self)
        if what == "start":
            raise KeyboardInterrupt
        return reply(self, seconds, what)

    monkeypatch.setattr(ForkServer, "_reply", interrupted_start)
    report = verify(load_target(str(IMPLS / "correct.py")), names=["box_iou"], **FAST)
    assert report.interrupted and servers
    assert servers[0].process is not None and servers[0].process.returncode is not None
    assert child_pids() <= before


def test_a_function_that_cannot_be_pickled_runs_in_a_thread_and_still_verifies():
    pids: list[int] = []
    target = Target(
        "by hand", {"box_iou": lambda a, b: (pids.append(os.getpid()), detops_box_iou(a, b))[1]}
    )
    with pytest.warns(RuntimeWarning, match="box_iou runs in a thread of this process"):
        report = verify(target, names=["box_iou"], **FAST)
    assert only(report, "box_iou").verdict == "PASS"
    assert pids and set(pids) == {os.getpid()}


def test_the_thread_warning_points_at_the_code_that_called_verify():
    target = Target("by hand", {"box_iou": lambda a, b: detops_box_iou(a, b)})
    with pytest.warns(RuntimeWarning, match="box_iou runs in a thread of this process") as seen:
        line = sys._getframe().f_lineno + 1
        verify(target, names=["box_iou"], **FAST)
    assert [(w.filename, w.lineno) for w in seen] == [(__file__, line)]


def test_a_module_level_function_goes_to_a_worker_by_reference(monkeypatch, recwarn):
    monkeypatch.setenv("DETOPS_TEST_CALLER", str(os.getpid()))
    pids = _workers(monkeypatch)
    report = verify(Target("by hand", {"box_iou": box_iou_not_here}), names=["box_iou"], **FAST)
    result = only(report, "box_iou")
    assert result.verdict == "PASS", result.summary
    assert pids and not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_function_no_worker_can_load_runs_in_a_thread(monkeypatch):
    module = types.ModuleType("detops_test_only_in_the_caller")

    def box_iou(boxes1, boxes2):
        return detops_box_iou(boxes1, boxes2)

    box_iou.__module__, box_iou.__qualname__ = module.__name__, "box_iou"
    module.box_iou = box_iou  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)  # it pickles, by reference
    with pytest.warns(RuntimeWarning, match="a worker process could not load it") as seen:
        report = verify(Target("by hand", {"box_iou": box_iou}), names=["box_iou"], **FAST)
    assert only(report, "box_iou").verdict == "PASS"
    # Warned from inside the search (hypothesis' frames between): still points here.
    assert [w.filename for w in seen] == [__file__]


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("import sys; sys.exit(3)", "the worker process server ended (exit status 3)"),
        ("import time; time.sleep(60)", "the worker process server did not start within 1 s"),
    ],
    ids=["it exits", "it never answers"],
)
def test_a_server_that_fails_to_start_makes_a_thread_not_a_hang(monkeypatch, program, reason):
    before = child_pids()
    monkeypatch.setattr(harness, "_SERVER_PROGRAM", program)
    monkeypatch.setattr(harness, "_SERVER_START_SECONDS", 1.0)
    with pytest.warns(RuntimeWarning, match=re.escape(reason)):
        report = verify(load_target(str(IMPLS / "correct.py")), names=["box_iou"], **FAST)
    assert only(report, "box_iou").verdict == "PASS"
    assert child_pids() <= before


def test_the_servers_own_start_does_not_count_against_the_target_import_limit(monkeypatch):
    """The server imports torch and detops (seconds, more on a loaded machine) before the
    target; only the target's import has ``_TARGET_IMPORT_SECONDS``. With one limit for
    both, the 4 s limit of the hang-at-import CLI test ran out during torch's import under
    load, and `detops verify` then imported the hanging file in its own process. Here the
    limit (1 s) is shorter than the server's own start, and the server still serves."""
    monkeypatch.setattr(harness, "_TARGET_IMPORT_SECONDS", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a thread fallback would warn
        report = verify(load_target(str(IMPLS / "correct.py")), names=["box_iou"], **FAST)
    assert only(report, "box_iou").verdict == "PASS"


def test_a_server_that_dies_mid_run_makes_a_thread_not_a_hang(monkeypatch):
    before = child_pids()
    servers: list[ForkServer] = []
    start = ForkServer.start

    def record_start(self):
        servers.append(self)
        start(self)

    class KillTheServerAtBoxIou(Progress):  # after nms (the course's order)
        def start(self, name):
            if name == "box_iou":
                process = servers[0].process
                assert process is not None
                process.kill()
                process.wait()  # dead before box_iou asks it for a worker

    monkeypatch.setattr(ForkServer, "start", record_start)
    target = load_target(str(IMPLS / "correct.py"))
    with pytest.warns(RuntimeWarning, match=r"box_iou runs in a thread .* server ended") as seen:
        report = verify(target, names=["nms", "box_iou"], progress=KillTheServerAtBoxIou(), **FAST)
    assert [f.name for f in report.functions] == ["nms", "box_iou"]
    assert [f.verdict for f in report.functions] == ["PASS", "PASS"]
    assert len(seen) == 1  # nms ran in a worker
    assert child_pids() <= before


def test_a_server_that_dies_in_a_function_makes_a_thread_not_a_failure(monkeypatch):
    servers: list[ForkServer] = []
    start, exchange = ForkServer.start, ForkedRunner._exchange
    calls = {"n": 0}

    def record_start(self):
        servers.append(self)
        start(self)

    def kill_the_server_at_the_third_call(self, case, dtype):
        calls["n"] += 1
        if calls["n"] == 3:
            process = servers[0].process
            assert process is not None
            process.kill()  # its worker dies with it
            process.wait()
        return exchange(self, case, dtype)

    monkeypatch.setattr(ForkServer, "start", record_start)
    monkeypatch.setattr(ForkedRunner, "_exchange", kill_the_server_at_the_third_call)
    target = load_target(str(IMPLS / "correct.py"))
    with pytest.warns(RuntimeWarning, match=r"box_iou runs in a thread .* server ended"):
        report = verify(target, names=["box_iou"], **FAST)
    result = only(report, "box_iou")
    assert result.verdict == "PASS", result.summary  # not "ended the process that ran it"
    assert calls["n"] >= 3
