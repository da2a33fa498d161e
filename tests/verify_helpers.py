"""What the verify tests share: the shipped implementations' folder, fast options,
picking one function's report, and looking at the processes verify starts."""

import os
from pathlib import Path

import torch

IMPLS = Path(__file__).parent / "impls"
# Few cases and a short shrinking budget: the tests look at verdicts and reasons.
FAST = {
    "examples": 6,
    "shrink_seconds": 1.0,
    "shrink_draws": 150,
    "timeout": 5.0,
    "dtypes": (torch.float32,),
}


def only(report, name):
    """The report of function ``name`` (exactly one)."""
    (result,) = [f for f in report.functions if f.name == name]
    return result


def child_pids() -> set[int]:
    """The pids of this process's children, zombies included (Linux: /proc; elsewhere an
    empty set)."""
    me, found = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)"
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


def gone(pid: int) -> bool:
    """Whether process ``pid`` no longer exists (reaped, not a zombie)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    return False


def box_iou_not_here(boxes1, boxes2):
    """A correct box_iou that a worker loads by reference (pickle), and that raises in the
    process whose pid is in $DETOPS_TEST_CALLER: it proves that it ran in a worker."""
    from detops.boxes import box_iou

    if str(os.getpid()) == os.environ.get("DETOPS_TEST_CALLER"):
        raise RuntimeError("called in the calling process")
    return box_iou(boxes1, boxes2)
