"""The verify harness: check detops' ops, or anyone's implementation, against the references.

Two modes:

* **registry** (``python -m detops verify``): every registry entry's fast op against its NumPy
  reference on hypothesis-generated cases, for every dtype in its tolerances, plus the
  hand-made probes of :mod:`detops.verify.probes` where an entry has a course spec.
* **functions** (``--impl path/to/file.py``, ``--impl some.module``, ``--impl torchvision``):
  the target's functions, found by the course code's names, each called with the course's
  per-image signature (probes first, then float32 and float64 generated cases, shrunk to the
  smallest failing input).

Each function gets one of three verdicts:

* **FAIL**: a wrong answer on an input inside the *shared contract* (the inputs the course's
  pipeline produces, where the course code and torchvision agree on the answer), or a crash,
  hang, input mutation, or wrong type, shape, dtype or device there. Generated cases stay
  inside the shared contract.
* **DEPARTS**: right on the shared contract, but different where detops deliberately goes
  further (NaN refusal, empty inputs, zero GT rows, float16, the class-offset trick with
  negative coordinates, area ties below float32 resolution, rows the pipeline never
  produces). Only probes outside the shared contract can give it; each departure is listed
  with one line on what detops does and why.
* **PASS**.

Tolerances follow the conditioning: where a spec has an error model
(:attr:`~detops.verify.course_api.SeedSpec.error_bound`), the allowed error of each output
element is the entry's tolerance plus the rounding error a correct formula evaluated in the
tested dtype can make there.

The harness never crashes on a bad function. In functions mode on the CPU each function
runs in a worker process (where the platform can fork): one fresh server process per
:func:`verify` run (:class:`ForkServer`, :mod:`detops.verify._forkserver`) imports torch but
never runs a torch op, and forks the workers, so that a worker runs the function at torch's
default thread count (a process forked after it used OpenMP would deadlock in its first
parallel region; the caller's process is never forked and never changed). A call that runs
past the time limit is killed with its worker and the next call gets a fresh one, so a hang
can be shrunk like any other failure. A failure that the re-run of a known mistake (a
mistake reference in :mod:`detops.verify.probes`) reproduces gets a one-line hint.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TextIO

import hypothesis
import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from .._checks import check_int, check_number, check_positive_number
from .._interrupt import check as check_interrupt
from ..environment import device_problem as _device_problem
from ..environment import environment_info
from ..testing.compare import Comparison, Tolerance, compare_trees, to_numpy_tree
from ..testing.entry import OpEntry, case_to_torch
from ..testing.registry import REGISTRY
from ..testing.strategies import Case
from .course_api import (
    SEED_NAMES,
    SEED_SPECS,
    CallFailure,
    Problem,
    SeedSpec,
    collect_problems,
    report_problem,
    spec_by_name,
)
from .probes import Hint, HintContext, Probe

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_TIMEOUT",
    "Failure",
    "ForkServer",
    "ForkedRunner",
    "FunctionReport",
    "GuardedCall",
    "InProcessRunner",
    "Progress",
    "Target",
    "TargetError",
    "VerifyReport",
    "compare_bounded",
    "format_report",
    "load_target",
    "progress_line",
    "report_to_dict",
    "report_to_json",
    "stderr_progress",
    "verify",
]

DEFAULT_EXAMPLES = 100
DEFAULT_TIMEOUT = 10.0
# A day: a per-call limit beyond it is no limit, and from about 1e10 s the worker's wait
# overflows the platform's time_t.
MAX_TIMEOUT = 86400.0
# Generated cases for user functions run in these dtypes (the course works in float32);
# other dtypes (float16) are covered by probes.
USER_DTYPES = (torch.float32, torch.float64)
# After the first failure, shrinking stops after this many drawn candidates or seconds,
# whichever comes first (the smallest failing input found so far is reported).
SHRINK_SECONDS = 10.0
SHRINK_DRAWS = 1000
# The shrink note of a failure found with shrinking switched off (a budget of 0 s).
_NOT_SHRUNK = "shrinking is off (a shrink budget of 0 s); this is the first failing input found"
# Searches per function: after a failure is found, the search runs again with failures of
# that kind set aside, so that independent failures (wrong values *and* a wrong dtype) are
# all reported.
MAX_ROUNDS = 3


_KIND_WORDS = {
    "timeout": "hangs (time limit)",
    "mutated": "mutates its input",
    "accepted": "accepts an input detops refuses",
    "mismatch": "",
}


class TargetError(Exception):
    """The target could not be loaded (bad path, import error, nothing to check)."""


# ----------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """What to verify. ``functions`` is None in registry mode.

    ``source`` says where :func:`load_target` found the functions (``"torchvision"``, a
    module name, or the absolute path of a ``.py`` file), so that a worker process can load
    them again (it checks that each has the caller's module and qualified name). A target
    built by hand leaves it None: a worker then unpickles each function (a module-level
    function pickles by reference). A function no worker can load runs in a thread of the
    calling process instead (:class:`GuardedCall`, with a RuntimeWarning), where a hang
    cannot be killed: every later call of that function fails at once."""

    label: str
    functions: dict[str, Callable[..., Any]] | None = None
    origins: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = SEED_NAMES
    source: str | None = None


def _torchvision_target() -> Target:
    import torchvision
    from torchvision import ops

    def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
        return ops.batched_nms(boxes, scores, class_ids, iou_threshold)

    functions = {
        "nms": ops.nms,
        "class_spec_nms": class_spec_nms,
        "sigmoid_focal_loss": ops.sigmoid_focal_loss,
        "box_iou": ops.box_iou,
        "clip_boxes_to_image": ops.clip_boxes_to_image,
    }
    origins = {name: f"torchvision.ops.{name} {torchvision.__version__}" for name in functions}
    origins["class_spec_nms"] = f"torchvision.ops.batched_nms {torchvision.__version__}"
    names = tuple(n for n in SEED_NAMES if n in functions)
    label = f"torchvision {torchvision.__version__}"
    return Target(label, functions, origins, names, source="torchvision")


def _origin(fn: Callable[..., Any]) -> str:
    """``file:line`` of a function: the file relative to the working directory when it
    lies inside it, else absolute (never a path climbing out with ``..``)."""
    try:
        source = inspect.getsourcefile(fn) or "?"
        line = inspect.getsourcelines(fn)[1]
    except (TypeError, OSError):
        return getattr(fn, "__module__", "") or repr(fn)
    return f"{_shown_path(source)}:{line}"


def _shown_path(source: str) -> str:
    if source == "?":
        return source
    absolute = os.path.abspath(source)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    climbs_out = relative == os.pardir or relative.startswith(os.pardir + os.sep)
    return absolute if climbs_out else relative


def _folder_error(spec: str, path: Path) -> TargetError:
    scripts = sorted(p.name for p in path.glob("*.py"))
    found = ""
    if scripts:
        more = f" and {len(scripts) - 5} more" if len(scripts) > 5 else ""
        found = f" (the .py files in it: {', '.join(scripts[:5])}{more})"
    return TargetError(
        f"--impl {spec}: is a folder; --impl takes a .py file, a module name or "
        f"'torchvision'{found}"
    )


def _names_a_file(spec: str) -> bool:
    """Whether ``--impl spec`` names a file (``.py``, or any existing file), not a module."""
    return spec.endswith(".py") or Path(spec).is_file()


def check_target_spec(spec: str) -> None:
    """Raise :class:`TargetError` where ``--impl spec`` cannot name a target (empty, a plain
    folder, a file that does not exist): what can be told without importing anything."""
    if not spec.strip():
        raise TargetError("--impl: empty; it takes a .py file, a module name or 'torchvision'")
    path = Path(spec)
    # A folder is a target only as an importable package named like a module (``--impl
    # mypkg`` with mypkg/__init__.py); a path such as /some/folder is never a module name.
    # A plain folder named like an installed package (a checkout of detops, run from its
    # parent) does not hide the package: the import decides.
    is_module_name = all(part.isidentifier() for part in spec.split("."))
    if path.is_dir() and not is_module_name:
        raise _folder_error(spec, path)
    if _names_a_file(spec) and not path.is_file():
        raise TargetError(f"--impl {spec}: no such file")


def check_course_names(names: Sequence[str] | None) -> None:
    """Raise :class:`TargetError` where ``names`` (``--op``) holds a name that is not a
    course function."""
    unknown = [n for n in names or () if n not in SEED_NAMES]
    if unknown:
        raise TargetError(
            f"--op: {', '.join(unknown)} "
            f"{'is not a course function' if len(unknown) == 1 else 'are not course functions'}; "
            f"known: {', '.join(SEED_NAMES)}"
        )


def _import_module(spec: str):
    check_target_spec(spec)
    path = Path(spec)
    if _names_a_file(spec):
        name = "detops_verify_target_" + "".join(c if c.isalnum() else "_" for c in path.stem)
        module_spec = importlib.util.spec_from_file_location(name, path.resolve())
        if module_spec is None or module_spec.loader is None:
            raise TargetError(f"--impl {spec}: cannot load a Python module from this file")
        module = importlib.util.module_from_spec(module_spec)
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # so the file can import its neighbours
        try:
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        except KeyboardInterrupt:
            sys.modules.pop(name, None)
            raise
        except BaseException as exc:  # a user's module may even call sys.exit
            sys.modules.pop(name, None)
            raise TargetError(f"--impl {spec}: importing it raised {_exception_line(exc)}") from exc
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
        return module
    here = os.getcwd()
    added = here not in sys.path  # for the import only, as the file's folder above
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(spec)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise TargetError(f"--impl {spec}: importing it raised {_exception_line(exc)}") from exc
    finally:
        if added and here in sys.path:
            sys.path.remove(here)
    if path.is_dir() and getattr(module, "__file__", None) is None:  # a namespace package
        raise _folder_error(spec, path)
    return module


def load_target(spec: str | None) -> Target:
    """``None``: detops' registry. ``"torchvision"``: torchvision.ops under the course
    code's names. Otherwise a ``.py`` path or a module name whose functions carry the course
    code's names."""
    if spec is None:
        return Target("detops registry (fast ops vs NumPy references)")
    if spec == "torchvision":
        return _torchvision_target()
    module = _import_module(spec)
    functions, origins = {}, {}
    for name in SEED_NAMES:
        fn = getattr(module, name, None)
        if fn is None:  # not defined, or a placeholder ``nms = None``: MISSING
            continue
        if not callable(fn):  # ``nms = 5``, or a submodule named nms: say so, not MISSING
            where = spec
            source = getattr(module, "__file__", None)
            if source and not spec.endswith(".py"):
                where = f"{spec} ({source})"
            if inspect.ismodule(fn):
                found = f"the module {fn.__name__}"
            else:
                found = f"{type(fn).__name__} {_shorten(repr(fn), 40)}"
            raise TargetError(
                f"--impl {where}: `{name}` is not callable: it is {found}; verify calls each "
                "course name it finds as a function"
            )
        functions[name] = fn
        origins[name] = _origin(fn)
    return Target(spec, functions, origins, source=target_source(spec))


def target_source(spec: str) -> str:
    """How a worker process loads the module ``--impl spec`` names: a file by its absolute
    path (a later change of the working directory changes nothing), else the module
    name (:attr:`Target.source`)."""
    return str(Path(spec).resolve()) if _names_a_file(spec) else spec


# ----------------------------------------------------------------------------------------
# Calling a function under guard: time limit, exceptions, input mutation
# ----------------------------------------------------------------------------------------


class _Abandoned(BaseException):
    """Raised asynchronously into a worker thread that ran past its time limit."""


def _abandon(thread: threading.Thread) -> None:
    # Best effort: a pure-Python loop stops at its next bytecode; a call stuck inside C keeps
    # its (daemon) thread until it returns or the process ends.
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
        )


_DETOPS_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _exception_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if len(line) > 300:
        line = line[:300] + "..."
    # The innermost frame of the user's code, not of the import machinery or of detops
    # (a SyntaxError names its file and line in its message already).
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<frozen ", _DETOPS_ROOT))
        and os.path.basename(os.path.dirname(frame.filename)) != "importlib"
    ]
    if frames and not isinstance(exc, SyntaxError):
        last = frames[-1]
        line += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return line


def _layout(tensor: torch.Tensor) -> tuple:
    return (
        tuple(tensor.shape),
        tensor.stride(),
        tensor.storage_offset(),
        tensor.dtype,
        tensor.device,
    )


def _snapshot(value):
    # Values and layout, not the version counter: a write that leaves every value as it was
    # (``boxes.mul_(1.0)``, a clamp that clamps nothing) changes nothing the caller can see.
    if isinstance(value, torch.Tensor):
        return ("tensor", value, value.detach().clone(), _layout(value))
    if isinstance(value, Mapping):
        return ("map", value, {k: _snapshot(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return ("seq", value, [_snapshot(v) for v in value])
    return ("other", value, None)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, except that any NaN equals any NaN (whatever its payload); -0.0 and 0.0
    differ."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        return _same_values(torch.view_as_real(a), torch.view_as_real(b))
    if a.is_floating_point():
        # Two floats that compare equal are the same bits, but for the sign of zero.
        equal = (a == b) & (torch.signbit(a) == torch.signbit(b))
        return bool((equal | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _changed(snapshot, path: str) -> str | None:
    kind, obj, saved = snapshot[0], snapshot[1], snapshot[2]
    if kind == "tensor":
        if _layout(obj) != snapshot[3] or not _same_values(obj.detach(), saved):
            return path
        return None
    if kind == "map":
        if list(obj.keys()) != list(saved.keys()):
            return f"{path} (keys changed)"
        for key, sub in saved.items():
            found = _changed(sub, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if kind == "seq":
        if len(obj) != len(saved):
            return f"{path} (length changed)"
        for i, sub in enumerate(saved):
            found = _changed(sub, f"{path}[{i}]")
            if found:
                return found
    return None


class GuardedCall:
    """Calls ``fn`` in a worker thread with a time limit; turns exceptions and hangs into
    :class:`CallFailure`. An input modified in place is a soft problem
    (:func:`~detops.verify.course_api.report_problem`): collected inside
    ``collect_problems()``, raised outside. After one hang every later call fails at once
    (a thread cannot be killed): functions mode runs user code in a worker process instead
    (:class:`ForkedRunner`)."""

    def __init__(self, fn: Callable[..., Any], name: str, timeout: float):
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self.hung: str | None = None
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None

    def _argument_names(self, args, kwargs) -> list[tuple[str, Any]]:
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
                return list(bound.arguments.items())
            except TypeError:
                pass
        return [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())

    def _check_inputs(self, before) -> None:
        for name, snap in before:
            where = _changed(snap, name)
            if where:
                report_problem(
                    "mutated",
                    "mutated",
                    f"{self.name} modified its input `{where}` in place "
                    "(inputs must never be mutated; work on a copy or use out-of-place ops)",
                )

    def __call__(self, *args, **kwargs):
        if self.hung is not None:
            raise CallFailure("timeout", self.hung)
        named = self._argument_names(args, kwargs)
        before = [(name, _snapshot(value)) for name, value in named]
        box: dict[str, Any] = {}
        done = threading.Event()

        def work():
            try:
                box["value"] = self.fn(*args, **kwargs)
            except _Abandoned:
                pass
            except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the user
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=work, name=f"detops-verify {self.name}", daemon=True)
        thread.start()
        if not done.wait(self.timeout):
            _abandon(thread)
            self.hung = _timeout_message(self.name, self.timeout)
            raise CallFailure("timeout", self.hung)
        if "error" in box:
            raise CallFailure("raised", f"{self.name} raised {_exception_line(box['error'])}")
        self._check_inputs(before)
        return box["value"]


class _DirectCall(GuardedCall):
    """The same checks without a thread or time limit: inside a worker process, which the
    parent kills when it runs past the limit."""

    def __call__(self, *args, **kwargs):
        named = self._argument_names(args, kwargs)
        before = [(name, _snapshot(value)) for name, value in named]
        try:
            value = self.fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the user
            raise CallFailure("raised", f"{self.name} raised {_exception_line(exc)}") from None
        self._check_inputs(before)
        return value


def _timeout_message(name: str, timeout: float) -> str:
    return (
        f"{name} did not return within {timeout:g} s (it hangs, or is far too slow for this input)"
    )


def _output_tree(value):
    """Tensors to NumPy with their dtype kept (bfloat16 as float32), for the parent."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _output_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_output_tree(v) for v in value)
    return value


# Runners: ``runner(case, dtype) -> (output, problems)``; ``output`` is a NumPy tree,
# ``problems`` the soft problems ``(kind, key, message)``. Hard failures raise CallFailure
# with the problems found so far in ``failure.problems``.
Runner = Callable[[Case, torch.dtype], tuple[Any, list[Problem]]]


def _run_collecting(
    run: Callable[[Case, torch.dtype], Any], case: Case, dtype: torch.dtype
) -> tuple[Any, list[Problem]]:
    with collect_problems() as problems:
        try:
            output = run(case, dtype)
        except CallFailure as failure:
            failure.problems = list(problems)
            raise
        except Exception as exc:  # the adapter could not assemble the result
            message = f"the result could not be used: {_exception_line(exc)}"
            raise CallFailure("output", message, "output", problems) from None
        return _output_tree(output), list(problems)


class InProcessRunner:
    """Runs in this process: registry mode; and, through a :class:`GuardedCall` thread,
    functions on CUDA, on platforms without ``fork``, and those no worker process can load
    (:class:`ForkedRunner`)."""

    def __init__(self, run: Callable[[Case, torch.dtype], Any]):
        self.run = run

    def __call__(self, case: Case, dtype: torch.dtype):
        return _run_collecting(self.run, case, dtype)

    def close(self) -> None:
        pass


_HEADER = struct.Struct("<Q")


def _write_message(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, count: int, deadline: float | None) -> bytes | None:
    """``count`` bytes, None at end of file; raises TimeoutError past ``deadline``."""
    chunks, left = [], count
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: float | None) -> bytes | None:
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    return _read_exact(fd, _HEADER.unpack(header)[0], deadline)


# How long the parent waits for the fork server and its workers, at most (none of these
# waits is for the user's code, which has the per-call limit): the server's own start
# (importing torch and detops takes seconds, far more on a loaded machine), then its import
# of the target (each phase its own limit: a slow start must not count as a target whose
# import hangs), each of its replies, a fresh worker's loading of the function (where the
# server could not load the target), a worker's exit once its socket is closed, and the
# server's exit once its own is.
_SERVER_START_SECONDS = 120.0
_TARGET_IMPORT_SECONDS = 120.0
_SERVER_REPLY_SECONDS = 30.0
_LOAD_SECONDS = 60.0
_CLOSE_SECONDS = 2.0

# The server's program (``python -c``; arguments: the control socket's fd, the caller's
# sys.path as JSON, the target's source or ""): SIGINT ignored before anything is imported
# (Ctrl-C is the caller's to handle), stderr silenced while it imports what the caller has
# imported already (its warnings were shown there), the caller's sys.path, so that it imports
# the same detops and torch; then :func:`detops.verify._forkserver.main`.
_SERVER_PROGRAM = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
control, stderr = int(sys.argv[1]), os.dup(2)
quiet = os.open(os.devnull, os.O_WRONLY)
os.dup2(quiet, 2)
os.close(quiet)
import json
sys.path[:] = json.loads(sys.argv[2])
try:
    from detops.verify._forkserver import main
except BaseException as exc:
    import pickle, struct
    data = pickle.dumps(("failed", f"importing detops raised {type(exc).__name__}: {exc}"))
    os.write(control, struct.pack("<Q", len(data)) + data)
    sys.exit(1)
main(control, sys.argv[3] or None, stderr)
"""


class _NoWorker(Exception):
    """No worker process can run the function: the fork server could not start or is gone,
    or a fresh worker could not load the function. Its message says which."""


def _ended_how(status: int | None) -> str:
    """`` (signal 11)``, `` (exit status 3)``, or nothing, from a wait status."""
    if status is not None and os.WIFSIGNALED(status):
        return f" (signal {os.WTERMSIG(status)})"
    if status is not None and os.WIFEXITED(status):
        return f" (exit status {os.WEXITSTATUS(status)})"
    return ""


class ForkServer:
    """The process that forks verify's workers: a fresh Python process, one per
    :func:`verify` run, that imports torch and detops but never runs a torch op itself. Its
    OpenMP thread pool is never started, so that a worker forked from it runs the function at
    torch's default thread count (a process forked after its parent used OpenMP deadlocks in
    its first parallel region). The caller's process is never forked and never changed.

    ``source`` (a :attr:`Target.source`): the server also imports the target, so that each
    worker has its functions at once (as a process forked from the caller would), unless
    that import starts a thread (a torch op large enough to start OpenMP's pool, say): the
    server then starts afresh without it, and each worker imports the target itself.

    :meth:`start` starts it (it imports torch while the caller goes on); :meth:`fork` asks it
    for a worker, :meth:`wait` for a worker's exit status (after :meth:`ForkedRunner` killed
    it, or let it exit); :meth:`close` ends it. Requests go one at a time over a Unix socket
    pair, as length-prefixed pickles; the server ignores SIGINT, and at the end of its
    socket (:meth:`close`, or the caller's death) it kills and reaps any worker left and
    exits. The program it runs: :mod:`detops.verify._forkserver`.

    When the server cannot start or dies, :attr:`problem` says why and every later request
    raises :class:`_NoWorker` (the runners then fall back to a thread); no wait is
    unbounded."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None
        self.problem: str | None = None
        self._control: socket.socket | None = None
        self._ready = False
        self._busy = False  # a request is in flight (an interrupted one: out of step)
        # "ended" or "hung": the server was importing the target when it ended or ran past
        # its start limit, so that import ends or hangs a process (see wait_started).
        self.import_failure: str | None = None

    @staticmethod
    def available() -> bool:
        """Whether the platform can fork (not Windows)."""
        return (
            hasattr(os, "fork")
            and hasattr(socket, "AF_UNIX")
            and hasattr(socket, "send_fds")
            and sys.platform != "win32"
        )

    def start(self) -> None:
        """Start the server process, without waiting for it (nothing if it was started)."""
        if self.process is not None or self.problem is not None:
            return
        if not sys.executable:
            self.problem = "no Python executable to start the worker process server with"
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SERVER_PROGRAM,
                    str(theirs.fileno()),
                    json.dumps(sys.path),
                    self.source or "",
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the workers' prints are discarded
                cwd=os.getcwd(),
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            ours.close()
            self.problem = f"the worker process server could not start: {_exception_line(exc)}"
        else:
            self._control = ours
        finally:
            theirs.close()

    def fork(self, job: bytes) -> tuple[int, socket.socket]:
        """A fresh worker for ``job`` (from :func:`_worker_job`): its pid, and this side of
        the socket pair it reads requests from and writes replies to. Raises
        :class:`_NoWorker` when the server cannot fork it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            reply = self._request(("fork", job), theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return reply[1], ours

    def wait(self, pid: int) -> int | None:
        """The raw wait status of worker ``pid``, once it has ended (the caller kills it or
        closes its socket first); None where the server cannot tell."""
        try:
            return self._request(("wait", pid))[1]
        except _NoWorker:
            return None

    def _request(self, message: tuple, fd: int | None = None) -> tuple:
        if self.process is None and self.problem is None:
            self.start()
        if self.problem is not None:
            raise _NoWorker(self.problem)
        if self._busy:
            raise self._fail("the worker process server was interrupted in a request")
        assert self._control is not None
        self._busy = True
        self._await_ready()
        try:
            _write_message(self._control.fileno(), pickle.dumps(message))
            if fd is not None:  # the worker's end of its socket pair
                socket.send_fds(self._control, [b"\0"], [fd])
        except OSError as exc:
            raise self._fail(self._gone(exc)) from None
        reply = self._reply(_SERVER_REPLY_SECONDS, "reply")
        self._busy = False
        return reply

    def _await_ready(self) -> None:
        if self._ready:
            return
        ready = self._reply(_SERVER_START_SECONDS, "start")
        if ready[0] == "importing":  # then "ready", unless the target's import goes wrong
            try:
                ready = self._reply(_TARGET_IMPORT_SECONDS, "start")
            except _NoWorker as error:
                self.import_failure = "hung" if " did not start within " in str(error) else "ended"
                raise
        if ready[0] != "ready":
            raise self._fail(f"the worker process server could not start: {ready[1]}")
        self._ready = True

    def wait_started(self) -> str | None:
        """Start the server and wait until it is ready (it has imported the target, when
        it has one): None, or why it is not (then :attr:`import_failure` says whether the
        target's import ended the server or ran past the start limit)."""
        if self.process is None and self.problem is None:
            self.start()
        if self.problem is not None:
            return self.problem
        try:
            self._await_ready()
        except _NoWorker as error:
            return str(error)
        return None

    def _reply(self, seconds: float, what: str) -> tuple:
        """The next message, within ``seconds``."""
        assert self._control is not None
        try:
            data = _read_message(self._control.fileno(), time.monotonic() + seconds)
        except TimeoutError:
            raise self._fail(
                f"the worker process server did not {what} within {seconds:g} s"
            ) from None
        except OSError as exc:
            raise self._fail(self._gone(exc)) from None
        if data is None:
            raise self._fail(self._gone(None))
        return pickle.loads(data)

    def _gone(self, error: OSError | None) -> str:
        """Why the control socket broke: the server's exit status, where it has ended."""
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        if code is None:
            return f"the worker process server cannot be reached ({error or 'end of file'})"
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return f"the worker process server ended ({how})"

    def _fail(self, problem: str) -> _NoWorker:
        """Give the server up (killed if it still runs): every later request fails."""
        if self.problem is None:
            self.problem = problem
        self._end(kill=True)
        return _NoWorker(self.problem)

    def close(self) -> None:
        """End the server: at the end of its socket it kills and reaps any worker left and
        exits (killed if it has not within a few seconds; at once while it still starts,
        when it has forked nothing)."""
        self._end(kill=not self._ready or self._busy)

    def _end(self, kill: bool) -> None:
        process, control = self.process, self._control
        self._control = None
        if control is not None:
            control.close()
        if process is None or process.returncode is not None:
            return
        try:
            if kill:
                process.kill()
            try:
                process.wait(timeout=_CLOSE_SECONDS + 3.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        except BaseException:  # Ctrl-C while waiting: never leave the server behind
            process.kill()
            process.wait()
            raise


def _identity(fn: Callable[..., Any]) -> tuple[str | None, str | None]:
    """What a worker checks that it loaded the same function as the caller."""
    return getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)


def _worker_job(
    fn: Callable[..., Any], name: str, source: str | None, timeout: float, device: str
) -> bytes | str:
    """What a worker needs to run course function ``name`` (pickled): where to load ``fn``
    from (the target's ``source``, else ``fn`` pickled), the caller's sys.path and the call's
    options. A string says why ``fn`` cannot be sent to a worker (it does not pickle)."""
    function = None
    if source is None:
        try:
            function = pickle.dumps(fn)
        except Exception as exc:
            return f"it cannot be pickled: {_exception_line(exc)}"
    job = {
        "sys_path": list(sys.path),
        "source": source,
        "name": name,
        "identity": _identity(fn),
        "function": function,
        "timeout": timeout,
        "device": device,
    }
    return pickle.dumps(job)


def _load_job(data: bytes, preloaded: Target | None) -> Callable[[Case, torch.dtype], Any]:
    """In a worker: the function of a :func:`_worker_job`, as ``run(case, dtype)``; from
    ``preloaded`` (the target as the fork server loaded it) where it is the job's source."""
    job = pickle.loads(data)
    sys.path[:] = job["sys_path"]
    name, source = job["name"], job["source"]
    if source is not None:
        if preloaded is None or preloaded.source != source:
            with _quiet_stderr():  # what its import prints, the caller's import printed
                preloaded = load_target(source)
        fn = (preloaded.functions or {}).get(name)
        if fn is None or _identity(fn) != tuple(job["identity"]):
            raise LookupError(f"{source} does not give the {name} of the caller")
    else:
        fn = pickle.loads(job["function"])
    spec = spec_by_name(name)
    timeout, device = job["timeout"], job["device"]

    def run(case: Case, dtype: torch.dtype) -> Any:
        return spec.call(_DirectCall(fn, name, timeout), case, dtype, device)

    return run


@contextlib.contextmanager
def _fd_redirected(fd: int, target: int, stream: TextIO) -> Iterator[None]:
    """Within: file descriptor ``fd`` (``stream``'s, flushed on the way in and out) writes
    where file descriptor ``target`` does."""
    stream.flush()
    saved = os.dup(fd)
    os.dup2(target, fd)
    try:
        yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Within: file descriptor 2 goes to /dev/null."""
    quiet = os.open(os.devnull, os.O_WRONLY)
    try:
        with _fd_redirected(2, quiet, sys.stderr):
            yield
    finally:
        os.close(quiet)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Within: what this process writes to stdout (``print``, or file descriptor 1) goes to
    stderr. ``detops verify`` imports the target and runs its functions inside, so that
    their prints never mix with the report, the one thing it writes to stdout."""
    with _fd_redirected(1, 2, sys.stdout), contextlib.redirect_stdout(sys.stderr):
        yield


def _die_with(parent: int) -> None:  # pragma: no cover - in a worker
    """Linux: this process is killed when ``parent`` (the fork server) dies, so that a
    worker stuck in the user's code never outlives it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _worker_main(
    job: bytes, fd: int, server: int, preloaded: Target | None
) -> None:  # pragma: no cover - in a worker
    """A worker process, forked by the fork server (pid ``server``, which loaded the target
    ``preloaded``, or None): loads the job's function, replies whether it could, then
    serves ``(case, dtype)`` requests on socket ``fd`` until its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    _die_with(server)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the function's prints are discarded
    os.close(devnull)
    try:
        run = _load_job(job, preloaded)
    except BaseException as exc:  # an import error, a sys.exit, a function not found
        _write_message(fd, pickle.dumps(("unloadable", _exception_line(exc))))
        return
    _write_message(fd, pickle.dumps(("loaded",)))
    while True:
        message = _read_message(fd, None)
        if message is None:
            return
        case, dtype = pickle.loads(message)
        try:
            output, problems = _run_collecting(run, case, dtype)
            reply: tuple = ("ok", output, problems)
        except CallFailure as failure:
            reply = ("fail", failure.kind, failure.message, failure.key, failure.problems)
        try:
            payload = pickle.dumps(reply)
        except Exception as exc:
            payload = pickle.dumps(
                ("fail", "output", f"the result could not be sent back: {exc}", "output", [])
            )
        _write_message(fd, payload)


def _thread_note(name: str, reason: str) -> None:
    warnings.warn(
        f"verify: {name} runs in a thread of this process, not in a worker process "
        f"({reason}); a call of it that hangs cannot be stopped there, and every later "
        "call of it then fails at once",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning of its caller at the user's code: the first
    frame outside detops above :func:`verify` (hypothesis' frames lie below it), or, with
    no verify on the stack, above the caller."""
    frames = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    start = next(
        (
            i
            for i, f in enumerate(frames)
            if f.f_code.co_name == "verify" and f.f_globals.get("__name__") == __name__
        ),
        0,
    )
    for i in range(start, len(frames)):
        if not os.path.abspath(frames[i].f_code.co_filename).startswith(_PACKAGE_DIR):
            return i + 1
    return len(frames)


class ForkedRunner:
    """Runs one function in a worker process forked by a :class:`ForkServer`, with a time
    limit per call, at torch's default thread count.

    ``job`` (from :func:`_worker_job`) says how the worker loads the function. A call that
    runs past the limit is a ``timeout`` failure: the worker is killed and the next call
    gets a fresh one from the same server, so one hang does not fail later calls and
    shrinking still finds the smallest input that hangs. A worker that dies (a segfault,
    ``os._exit``) is a ``raised`` failure. The function's prints go to /dev/null.

    Where no worker can run the function (the server could not start or died, or a worker
    could not load the function: a function defined in ``__main__``, say), the runner warns
    and runs every later call through ``fallback()`` (a thread of this process; a hang
    there cannot be killed, and poisons the later calls). Without a fallback, that raises
    RuntimeError.
    """

    def __init__(
        self,
        server: ForkServer,
        job: bytes,
        name: str,
        timeout: float,
        fallback: Callable[[], Runner] | None = None,
    ):
        self.server = server
        self.job = job
        self.name = name
        self.timeout = timeout
        self.fallback = fallback
        self.pid: int | None = None
        self.thread: Runner | None = None  # the fallback, once no worker can run it
        self._socket: socket.socket | None = None

    @staticmethod
    def available() -> bool:
        return ForkServer.available()

    def _fall_back(self, reason: str, case: Case, dtype: torch.dtype):
        """No worker can run the function: this call and every later one run in
        ``fallback()``."""
        if self.fallback is None:
            raise RuntimeError(f"verify: no worker process can run {self.name}: {reason}")
        _thread_note(self.name, reason)
        self.thread = self.fallback()
        return self.thread(case, dtype)

    def _start(self) -> None:
        self.pid, self._socket = self.server.fork(self.job)
        try:
            reply = self._await_reply(time.monotonic() + max(_LOAD_SECONDS, self.timeout))
        except TimeoutError:
            self._stop(kill=True)
            seconds = max(_LOAD_SECONDS, self.timeout)
            raise _NoWorker(f"a worker process did not load it within {seconds:g} s") from None
        except BaseException:  # Ctrl-C: never leave the worker behind
            self._stop(kill=True)
            raise
        if reply is None:
            status = self._stop(kill=True)
            raise _NoWorker(f"a worker process ended while loading it{_ended_how(status)}")
        message = pickle.loads(reply)
        if message[0] != "loaded":
            self._stop(kill=True)
            raise _NoWorker(f"a worker process could not load it: {message[1]}")

    def _await_reply(self, deadline: float | None) -> bytes | None:
        """The worker's next message; None when it has ended. Raises TimeoutError past
        ``deadline``."""
        assert self._socket is not None
        try:
            return _read_message(self._socket.fileno(), deadline)
        except (ConnectionResetError, BrokenPipeError):
            return None

    def _exchange(self, case: Case, dtype: torch.dtype) -> bytes | None:
        """Send the worker one call and wait for its reply (None: the worker ended).
        Raises TimeoutError past the time limit."""
        assert self._socket is not None
        _write_message(self._socket.fileno(), pickle.dumps((case, dtype)))
        return self._await_reply(time.monotonic() + self.timeout)

    def _stop(self, kill: bool) -> int | None:
        """Forget the worker (killed first when ``kill``); its wait status, if known."""
        pid, sock = self.pid, self._socket
        if pid is None:
            return None
        self.pid, self._socket = None, None
        if sock is not None:
            sock.close()
        # A worker of a server that is gone died with it (Linux): its pid is no longer ours
        # to signal.
        if kill and (self.server.problem is None or not sys.platform.startswith("linux")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.server.wait(pid)

    def close(self) -> None:
        """End the worker (closing its socket lets it exit; it is killed if it does not
        within 2 s)."""
        sock = self._socket
        if self.pid is None or sock is None:
            return
        ended = False
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _CLOSE_SECONDS
            while not ended:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([sock], [], [], wait)[0]:
                    break
                ended = not sock.recv(1 << 16)
        except OSError:
            pass
        except BaseException:  # Ctrl-C while waiting
            self._stop(kill=True)
            raise
        self._stop(kill=not ended)

    def __call__(self, case: Case, dtype: torch.dtype):
        if self.thread is not None:
            return self.thread(case, dtype)
        if self.pid is None:
            try:
                self._start()
            except _NoWorker as exc:
                return self._fall_back(str(exc), case, dtype)
        try:
            reply = self._exchange(case, dtype)
        except TimeoutError:
            self._stop(kill=True)
            raise CallFailure("timeout", _timeout_message(self.name, self.timeout)) from None
        except (BrokenPipeError, ConnectionResetError):
            reply = None
        except BaseException:  # KeyboardInterrupt: never leave the worker behind
            self._stop(kill=True)
            raise
        if reply is None:
            status = self._stop(kill=True)
            if self.server.problem is not None:  # the worker died with its server
                return self._fall_back(self.server.problem, case, dtype)
            raise CallFailure(
                "raised", f"{self.name} ended the process that ran it{_ended_how(status)}"
            )
        message = pickle.loads(reply)
        if message[0] == "ok":
            return message[1], message[2]
        _, kind, text, key, problems = message
        raise CallFailure(kind, text, key, problems)


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------


@dataclass
class Failure:
    """One failing input, as reported. ``shared`` failures (inside the shared contract)
    make a FAIL; the others a DEPARTS, with ``departure`` saying what detops does there."""

    kind: str  # mismatch | raised | timeout | mutated | output | accepted | harness
    reason: str
    dtype: str
    input: str
    expected: str = ""
    actual: str = ""
    detail: str = ""
    probe: str = ""
    hints: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # the hints in a few words
    also: list[str] = field(default_factory=list)
    key: str = ""  # the failure's family: mismatch, dtype, device, mutated, timeout, ...
    shared: bool = True
    departure: str = ""
    departure_tag: str = ""  # the departure in a few words
    # A generated case whose shrinking stopped at its budget, or was switched off: why it
    # may not be the smallest failing input (empty: shrunk as far as hypothesis could).
    shrink_note: str = ""
    context: HintContext | None = field(default=None, repr=False, compare=False)
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def verdict(self) -> str:
        return "FAIL" if self.shared else "DEPARTS"


@dataclass
class ProbeResult:
    label: str
    dtype: str
    verdict: str  # PASS | FAIL | DEPARTS | N/A (its outcome says nothing: ``note`` says why)
    shared: bool = True
    note: str = ""


@dataclass
class FunctionReport:
    name: str
    verdict: str  # PASS | DEPARTS | FAIL | MISSING | SKIPPED | ERROR
    origin: str = ""
    cases: int = 0
    dtypes: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    probes: list[ProbeResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    @property
    def departures(self) -> list[Failure]:
        return [f for f in self.failures if not f.shared]

    @property
    def summary(self) -> str:
        """A one-line explanation for the table: the known mistakes or departures found,
        in a few words each, else what went wrong (FAILs first)."""
        if self.note:
            return self.note
        parts: list[str] = []
        ordered = [f for f in self.failures if f.shared] + self.departures
        for failure in ordered:
            words = failure.tags or [_KIND_WORDS.get(failure.kind) or failure.reason]
            if not failure.shared:
                words = [failure.departure_tag or words[0]]
            for part in words:
                part = part if failure.shared else f"departs: {part}"
                if part not in parts:
                    parts.append(part)
        return "; ".join(parts)


@dataclass
class VerifyReport:
    target: str
    mode: str  # registry | functions
    examples: int
    seed: int
    timeout: float
    device: str
    functions: list[FunctionReport]
    seconds: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)
    # Ctrl-C: ``functions`` holds those finished before it (the one running then is left
    # out), ``functions_total`` how many the run was to check (None: all are there).
    interrupted: bool = False
    functions_total: int | None = None

    @property
    def total(self) -> int:
        """How many functions the run was to check (more than reported when interrupted)."""
        return len(self.functions) if self.functions_total is None else self.functions_total

    @property
    def checked(self) -> list[FunctionReport]:
        return [f for f in self.functions if f.verdict not in ("MISSING", "SKIPPED")]

    @property
    def passed(self) -> bool:
        """Nothing FAILs (departures allowed): exit status 0. An interrupted run has not
        passed, whatever it found before Ctrl-C."""
        return (
            not self.interrupted
            and bool(self.checked)
            and all(f.verdict in ("PASS", "DEPARTS") for f in self.checked)
        )

    @property
    def passed_strict(self) -> bool:
        """Nothing FAILs and nothing departs (``--strict``); never when interrupted."""
        return (
            not self.interrupted
            and bool(self.checked)
            and all(f.verdict == "PASS" for f in self.checked)
        )


# ----------------------------------------------------------------------------------------
# Formatting values for reports
# ----------------------------------------------------------------------------------------


def format_value(value: Any, limit: int = 64) -> str:
    """Readable text of an input or output tree; small arrays in full, larger ones cut to
    their first ``limit`` values: whole rows (``first 16 of 20 rows: [[...], ...]``) where a
    row fits, else a flat list."""
    if isinstance(value, Case):
        return format_value(value.args + ((value.kwargs,) if value.kwargs else ()), limit)
    value = to_numpy_tree(value) if isinstance(value, torch.Tensor) else value
    if isinstance(value, torch.Tensor):  # pragma: no cover - handled above
        value = to_numpy_tree(value)
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        kind = str(value.dtype)
        if flat.size <= limit:
            body = np.array2string(
                value, precision=8, separator=", ", threshold=limit + 1, max_line_width=100
            )
            body = " ".join(line.strip() for line in body.splitlines())
            return f"array{list(value.shape)} {kind} {body}"
        row_size = flat.size // value.shape[0] if value.ndim >= 2 else 0
        if 0 < row_size <= limit:  # boxes[20, 4]: the first 16 boxes, one bracket each
            rows = limit // row_size
            body = np.array2string(
                value[:rows], precision=8, separator=", ", threshold=limit + 1, max_line_width=10**6
            )
            body = " ".join(line.strip() for line in body.splitlines())
            return f"array{list(value.shape)} {kind} first {rows} of {value.shape[0]} rows: {body}"
        head = np.array2string(flat[:limit], precision=6, separator=", ", max_line_width=10**6)
        return f"array{list(value.shape)} {kind} first {limit}: {head}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {format_value(v, limit)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(format_value(v, limit) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def _leaf_views(actual, expected, tol: Tolerance, limit: int) -> tuple[str, str]:
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape or e.size <= limit or e.ndim == 0:
        return format_value(e, limit), format_value(a, limit)
    af, ef = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isclose(af, ef, atol=tol.atol, rtol=tol.rtol, equal_nan=True)
    if not bad.any():
        return format_value(e, limit), format_value(a, limit)
    width = e.shape[-1] if e.ndim >= 2 else 1
    rows = np.flatnonzero(bad.reshape(-1, width).any(axis=-1))
    lead = e.shape[:-1] if e.ndim >= 2 else e.shape
    shown = rows[:4]
    views = []
    for array in (e, a):
        flat = array.reshape(-1, width)
        parts = []
        for row in shown:
            index = tuple(int(i) for i in np.unravel_index(row, lead))
            body = np.array2string(flat[row], precision=8, separator=", ")
            parts.append(f"[{', '.join(map(str, index))}] {body}")
        more = f" (+{len(rows) - len(shown)} more)" if len(rows) > len(shown) else ""
        unit = "rows" if e.ndim >= 2 else "values"
        views.append(
            f"array{list(e.shape)} {array.dtype}, {len(rows)} of {flat.shape[0]} {unit} "
            f"differ: " + "; ".join(parts) + more
        )
    return views[0], views[1]


def diff_views(actual, expected, tol: Tolerance, limit: int = 64) -> tuple[str, str]:
    """``(expected, actual)`` texts; for large outputs only the rows that differ."""
    a, e = _output_tree(actual), to_numpy_tree(expected)
    if isinstance(e, Mapping) and isinstance(a, Mapping) and list(a) == list(e):
        pairs = [(k, *diff_views(a[k], e[k], tol, limit)) for k in e]
        differ = [p for p in pairs if p[1] != p[2]] or pairs
        same = "" if len(differ) == len(pairs) else ", other entries equal"
        return (
            "{" + ", ".join(f"{k!r}: {x}" for k, x, _ in differ) + same + "}",
            "{" + ", ".join(f"{k!r}: {y}" for k, _, y in differ) + same + "}",
        )
    if (
        isinstance(e, (list, tuple))
        and isinstance(a, (list, tuple))
        and len(a) == len(e)
        and not isinstance(e, np.ndarray)
    ):
        views = [diff_views(x, y, tol, limit) for y, x in zip(e, a, strict=True)]
        return (
            "(" + ", ".join(view[0] for view in views) + ")",
            "(" + ", ".join(view[1] for view in views) + ")",
        )
    if isinstance(e, (Mapping, list, tuple)) or isinstance(a, (Mapping, list, tuple)):
        return format_value(e, limit), format_value(a, limit)
    return _leaf_views(a, e, tol, limit)


def _parameter_names(fn: Callable[..., Any]) -> list[str]:
    try:
        return [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_received(value, dtype: torch.dtype):
    """A case's values as the function received them: float arrays in ``dtype``."""
    return _output_tree(case_to_torch(value, dtype, "cpu"))


def format_case(case: Case, names: Sequence[str], limit: int = 64, dtype=None) -> str:
    """``name=value, ...``; with ``dtype``, float arrays are shown in the dtype the function
    received."""
    args = case.args if dtype is None else _as_received(case.args, dtype)
    kwargs = case.kwargs if dtype is None else _as_received(case.kwargs, dtype)
    parts = []
    for i, arg in enumerate(args):
        name = names[i] if i < len(names) else f"arg{i}"
        parts.append(f"{name}={format_value(arg, limit)}")
    parts += [f"{k}={format_value(v, limit)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def to_json_tree(value):
    """Arrays as ``{"shape", "dtype", "data"}`` with ``data`` a nested list (NaN as null,
    infinities as "inf"/"-inf"); containers kept; tuples as lists."""
    if isinstance(value, torch.Tensor):
        value = _output_tree(value)
    if isinstance(value, np.ndarray):
        data = value.tolist()
        return {"shape": list(value.shape), "dtype": str(value.dtype), "data": _jsonable(data)}
    if isinstance(value, np.generic):
        return to_json_tree(np.asarray(value))
    if isinstance(value, Mapping):
        return {str(k): to_json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_tree(v) for v in value]
    if isinstance(value, float):
        return _jsonable(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return repr(value)


# ----------------------------------------------------------------------------------------
# Checking one function on one case
# ----------------------------------------------------------------------------------------


@dataclass
class _Check:
    """Everything needed to judge one function: the entry (reference, compare,
    tolerances), how to run the function on a case, and the course spec's extras."""

    entry: OpEntry
    run: Runner
    names: list[str]
    hints: tuple[Hint, ...] = ()
    error_bound: Callable[[Case, Any, torch.dtype], Any] | None = None


def _tolerance(entry: OpEntry, dtype: torch.dtype, fallback: Tolerance | None) -> Tolerance:
    if dtype in entry.tolerances:
        return entry.tolerances[dtype]
    if fallback is not None:
        return fallback
    return next(iter(entry.tolerances.values()))


def compare_bounded(actual: Any, expected: Any, tol: Tolerance, bound: Any) -> Comparison:
    """Like :func:`~detops.testing.compare_trees` for one array, with ``bound`` (an error
    model, :attr:`~detops.verify.course_api.SeedSpec.error_bound`: a number or an array
    broadcasting to ``expected``) added to the allowed error of each finite element.

    An element passes when ``|actual - expected| <= tol.atol + tol.rtol * |expected| +
    bound``; NaN must meet NaN and an infinity the same infinity; shapes must be equal.
    Anything but two arrays is compared by :func:`~detops.testing.compare_trees`, without
    the bound."""
    a = to_numpy_tree(actual)
    e = to_numpy_tree(expected)
    if not isinstance(a, np.ndarray) or not isinstance(e, np.ndarray):
        return compare_trees(actual, expected, tol)
    if a.shape != e.shape:
        return Comparison(
            False,
            math.inf,
            math.inf,
            f"output: shape mismatch, expected {list(e.shape)}, got {list(a.shape)}",
        )
    if a.size == 0:
        return Comparison(True, 0.0, 0.0)
    a, e = a.astype(np.float64), e.astype(np.float64)
    extra = np.broadcast_to(np.asarray(bound, dtype=np.float64), e.shape)
    finite = np.isfinite(a) & np.isfinite(e)
    nan_mismatch = np.isnan(a) != np.isnan(e)
    inf_mismatch = ~finite & ~np.isnan(a) & ~np.isnan(e) & (a != e)
    diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
    allowed = tol.atol + tol.rtol * np.abs(np.where(finite, e, 0.0)) + np.where(finite, extra, 0)
    bad = (finite & (diff > allowed)) | nan_mismatch | inf_mismatch
    rel = np.where(finite & (e != 0), diff / np.where(e != 0, np.abs(e), 1.0), 0.0)
    max_abs, max_rel = float(diff.max(initial=0.0)), float(rel.max(initial=0.0))
    if not bad.any():
        return Comparison(True, max_abs, max_rel)
    where = tuple(int(i) for i in np.argwhere(bad)[0]) if e.ndim else ()
    message = (
        f"output: {int(bad.sum())} of {bad.size} values differ (first at index {list(where)}: "
        f"expected {float(e[where]):.9g}, got {float(a[where]):.9g}, allowed error "
        f"{float(allowed[where]):.3g} "
        f"(tolerance plus the error model))"
    )
    return Comparison(False, max_abs, max_rel, message)


def _soft_failures(problems, name_dtype: str, text: str, probe: str, data) -> list[Failure]:
    return [
        Failure(kind, message, name_dtype, text, actual=message, key=key, probe=probe, data=data)
        for kind, key, message in problems
    ]


def _evaluate(
    check: _Check,
    case: Case,
    dtype: torch.dtype,
    tol: Tolerance,
    probe: Probe | None = None,
) -> tuple[list[Failure], float, float]:
    """Run the function and the reference on ``case``: the failures (several when they are
    independent: a wrong dtype and wrong values), and the errors."""
    entry = check.entry
    dname = _dtype_name(dtype)
    label = probe.label if probe is not None else ""
    ref_case = entry.reference_inputs(case, dtype)
    text = format_case(case, check.names, dtype=dtype)
    data: dict[str, Any] = {"input": _named_inputs(case, check.names, dtype)}
    refused: BaseException | None = None
    expected = None
    if probe is not None and probe.refuse:
        refused = ValueError("detops raises ValueError here")
    else:
        try:
            expected = entry.reference(*ref_case.args, **ref_case.kwargs)
        except Exception as exc:  # the contract refuses this input (e.g. NaN scores)
            refused = exc
    if expected is not None:
        data["expected"] = expected
    try:
        actual, problems = check.run(case, dtype)
    except CallFailure as failure:
        problems = failure.problems
        if refused is not None and failure.kind == "raised":
            if probe is not None:
                _confirm_refusal(check, probe)
            return _soft_failures(problems, dname, text, label, data), 0.0, 0.0
        context = HintContext(case, ref_case, dtype, failure.kind, None, expected, tol)
        main = Failure(
            failure.kind,
            failure.message,
            dname,
            text,
            expected="" if refused else format_value(expected),
            actual=failure.message,
            probe=label,
            key=failure.key,
            context=context,
            data=data,
        )
        return [main, *_soft_failures(problems, dname, text, label, data)], math.inf, math.inf
    failures = _soft_failures(problems, dname, text, label, {**data, "actual": actual})
    if refused is not None:
        failures.append(
            Failure(
                "accepted",
                f"detops refuses this input ({refused}), but the function returned a result",
                dname,
                text,
                expected=f"raises {type(refused).__name__}",
                actual=format_value(actual),
                probe=label,
                key="accepted",
                data={**data, "actual": actual},
            )
        )
        return failures, math.inf, math.inf
    if check.error_bound is not None:
        # (Overflow and underflow are part of the model: whatever np.seterr says. An
        # error that escapes it is verify's own, reported as such: a bound of 0 in its
        # place would tighten the check into a false FAIL.)
        with np.errstate(all="ignore"):
            bound = check.error_bound(ref_case, expected, dtype)
        result = compare_bounded(actual, expected, tol, bound)
    else:
        result = entry.compare(actual, expected, tol)
    if not result.ok:
        context = HintContext(case, ref_case, dtype, "mismatch", actual, expected, tol)
        try:
            expected_text, actual_text = diff_views(actual, expected, tol)
        except Exception:  # a view is a convenience; never let it break the report
            expected_text, actual_text = format_value(expected), format_value(actual)
        failures.insert(
            0,
            Failure(
                "mismatch",
                "the output differs from the reference",
                dname,
                text,
                expected=expected_text,
                actual=actual_text,
                detail=result.message,
                probe=label,
                key="mismatch",
                context=context,
                data={**data, "actual": actual},
            ),
        )
    return failures, result.max_abs_error, result.max_rel_error


class _NotApplicable(Exception):
    """A probe whose outcome says nothing about the function; the message says why."""


def _confirm_refusal(check: _Check, probe: Probe) -> None:
    """A function that raised on a probe's refused input refused it only if it accepts the
    same input without what detops refuses (the probe's control); raises
    :class:`_NotApplicable` where it does not (it raises on every input, say)."""
    assert probe.control is not None  # (a probe of a refused input is built with one)
    try:
        check.run(probe.control(), probe.dtype)
    except CallFailure as failure:
        raise _NotApplicable(
            f"the same input {probe.control_without} fails too: {failure.message}"
        ) from None


def _named_inputs(case: Case, names: Sequence[str], dtype: torch.dtype) -> dict[str, Any]:
    args = _as_received(case.args, dtype)
    kwargs = _as_received(case.kwargs, dtype)
    named = {names[i] if i < len(names) else f"arg{i}": a for i, a in enumerate(args)}
    named.update(kwargs)
    return named


def _refuted(hint, passed: Sequence[HintContext]) -> bool:
    if hint.refuted_by is None:
        return False
    for context in passed:
        try:
            if hint.refuted_by(context):
                return True
        except Exception:  # a hint detector must never break the report
            continue
    return False


def _add_hints(failure: Failure, hints, passed: Sequence[HintContext] = ()) -> None:
    """The known mistakes whose re-run reproduces the function's output on this input (at
    most two; hints are ordered from single mistakes to combinations) and that no input the
    function got right refutes."""
    context = failure.context
    if context is None:
        return
    for hint in hints:
        try:
            found = hint.matches(context)
        except Exception:  # a hint detector must never break the report
            continue
        if found and not _refuted(hint, passed):
            failure.hints.append(hint.text)
            if hint.short:
                failure.tags.append(hint.short)
            if len(failure.hints) == 2:
                break


class _Found(Exception):
    pass


class _Stop(BaseException):
    """Ends the search at once: hypothesis lets BaseExceptions (like KeyboardInterrupt)
    through instead of treating them as a new failure to shrink."""


@dataclass(frozen=True)
class _Options:
    """:func:`verify`'s options, as each function's check uses them."""

    examples: int
    seed: int
    timeout: float
    device: str
    shrink: tuple[float, int]  # (seconds, drawn candidates); 0 s: no shrinking
    dtypes: Sequence[torch.dtype] | None  # of the generated cases, for user functions


def _search(
    check: _Check,
    strategy: st.SearchStrategy[Case],
    dtype: torch.dtype,
    options: _Options,
    ignore: frozenset[str] = frozenset(),
) -> tuple[list[Failure], int, float, float, str]:
    """Hypothesis search with shrinking. Returns (failures, cases, max abs, max rel, error).

    Failures whose key is in ``ignore`` (found by an earlier search) count as passes.
    Shrinking keeps the key of the first failure and stops after ``shrink = (seconds,
    draws)``, whichever comes first; the draw count keeps the result reproducible for a
    seed, the time limit bounds slow draws (a hang gets three more time limits). With 0
    seconds there is no shrinking: the first failing input found is reported."""
    tol = _tolerance(check.entry, dtype, None)
    shrink_seconds, shrink_draws = options.shrink
    shrinking = shrink_seconds > 0
    timeout = options.timeout
    state: dict[str, Any] = {
        "cases": 0,
        "abs": 0.0,
        "rel": 0.0,
        "last": None,
        "key": None,
        "stop": None,
        "draws": 0,
        "slowest": 0.0,
        "first": None,
        "began": 0.0,
        "limit": timeout,
        "exhausted": None,  # seconds of shrinking when its budget ran out
    }

    def exhausted() -> bool:
        over = state["stop"] is not None and (
            not shrinking or time.monotonic() > state["stop"] or state["draws"] > shrink_draws
        )
        if over and shrinking and state["exhausted"] is None:
            state["exhausted"] = time.monotonic() - state["began"]
        return over

    def tick(case):
        # Shrinking also spends time drawing candidates that never reach ``run``: count and
        # check the budget on every drawn case.
        if state["stop"] is not None:
            state["draws"] += 1
        if exhausted():
            raise _Stop()
        return case

    @hypothesis.seed(options.seed)
    @settings(
        max_examples=options.examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink)[: 3 if shrinking else 2],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(case=strategy.map(tick))
    def run(case):
        check_interrupt()
        if exhausted():
            raise _Stop()
        began = time.monotonic()
        failures, max_abs, max_rel = _evaluate(check, case, dtype, tol)
        if not failures and state["stop"] is None:
            state["slowest"] = max(state["slowest"], time.monotonic() - began)
        failures = [f for f in failures if f.key not in ignore]
        if state["key"] is not None and not any(f.key == state["key"] for f in failures):
            failures = []
        if state["stop"] is None:  # count cases up to the first failure, not the shrinking
            state["cases"] += 1
        if not failures:
            if state["stop"] is None:
                state["abs"] = max(state["abs"], max_abs)
                state["rel"] = max(state["rel"], max_rel)
            return
        state["last"] = failures
        if state["stop"] is None:
            state["key"] = failures[0].key
            state["first"] = (case, failures)
            budget = shrink_seconds
            if shrinking and state["key"] == "timeout" and hasattr(check.run, "timeout"):
                # Shrink a hang with a shorter limit (far above the slowest passing call),
                # then confirm the smallest hanging input with the full limit.
                short = min(timeout, max(0.25, 20 * state["slowest"]))
                check.run.timeout = short
                state["limit"] = short
                budget += 40 * short
            state["began"] = time.monotonic()
            state["stop"] = state["began"] + budget
        state["case"] = case
        raise _Found(failures)

    error = ""
    try:
        run()
    except _Found as found:
        state["last"] = found.args[0]
    except _Stop:
        pass
    except BaseException as exc:  # Flaky, Unsatisfiable, a harness bug: report, never crash
        if isinstance(exc, KeyboardInterrupt):
            raise
        if state["last"] is None and "Unsatisfiable" not in type(exc).__name__:
            error = f"the check could not run: {_exception_line(exc)}"
    finally:
        if hasattr(check.run, "timeout"):
            check.run.timeout = timeout
    if state["key"] == "timeout" and state.get("case") is not state["first"][0]:
        confirmed, _, _ = _evaluate(check, state["case"], dtype, tol)
        if any(f.key == "timeout" for f in confirmed):
            state["last"] = [f for f in confirmed if f.key not in ignore]
        else:  # only slow under the shorter limit: report the input found first
            state["last"] = state["first"][1]
            state["exhausted"] = None  # this one is not the result of shrinking
    if not shrinking:
        for failure in state["last"] or []:
            failure.shrink_note = _NOT_SHRUNK
    elif state["exhausted"] is not None:
        note = _shrink_note(state["key"], state["exhausted"], state["draws"], shrink_draws)
        if state["key"] == "timeout" and state["limit"] < timeout:
            note += (
                f" (each try that hangs costs {state['limit']:g} s, the time limit while "
                f"shrinking; --timeout {timeout:g} s at most)"
            )
        elif state["key"] == "timeout":
            note += f" (each try that hangs costs the time limit, --timeout {timeout:g} s)"
        for failure in state["last"] or []:
            failure.shrink_note = note
    return state["last"] or [], state["cases"], state["abs"], state["rel"], error


def _shrink_note(key: str | None, seconds: float, draws: int, max_draws: int) -> str:
    """Why a shrunk input may not be the smallest: shrinking ran out of its budget."""
    spent = f"{max_draws} tries" if draws > max_draws else f"{seconds:.0f} s"
    verb = "hang" if key == "timeout" else "fail"
    return (
        f"shrinking stopped after {spent}, its budget; a smaller input may {verb} too "
        "(--shrink-seconds gives it more time)"
    )


def _dedupe(failures: list[Failure]) -> list[Failure]:
    kept: list[Failure] = []
    for failure in failures:
        twin = next(
            (
                k
                for k in kept
                if k.key == failure.key
                and k.shared == failure.shared
                and (
                    (k.reason == failure.reason and k.kind != "mismatch")
                    or (k.hints and k.hints[:1] == failure.hints[:1])
                )
            ),
            None,
        )
        if twin is None:
            kept.append(failure)
        else:
            twin.also.append(
                f"probe '{failure.probe}'" if failure.probe else f"{failure.dtype} cases"
            )
    return kept


def _prefer_consistent_hints(failures: list[Failure]) -> None:
    """Where several mistakes reproduce one failure (on a square feature map, x from the
    row index and a transposed order give the same output), keep those that are the only
    explanation of another failure of the same function."""
    unique = {f.hints[0] for f in failures if len(f.hints) == 1}
    for failure in failures:
        if len(failure.hints) > 1:
            keep = [i for i, hint in enumerate(failure.hints) if hint in unique]
            if keep:
                failure.hints = [failure.hints[i] for i in keep]
                failure.tags = [t for i, t in enumerate(failure.tags) if i in keep]


# A departure probe that fails the way the shared contract already fails (a crash, a wrong
# dtype, ...) says nothing new.
_GENERIC_KEYS = frozenset({"raised", "timeout", "mutated", "output", "dtype", "device", "type"})


def _drop_explained_departures(failures: list[Failure]) -> list[Failure]:
    failing = {f.key for f in failures if f.shared}
    return [f for f in failures if f.shared or not (f.key in failing and f.key in _GENERIC_KEYS)]


def _run_function(
    name: str,
    check: _Check,
    cases: Callable[[torch.dtype], st.SearchStrategy[Case]],
    dtypes: Sequence[torch.dtype],
    probes: Sequence[Probe],
    probe_check: _Check | None,
    options: _Options,
    departures: bool,
) -> FunctionReport:
    """Probes (through ``probe_check``, course-shaped cases), then hypothesis search over
    ``cases(dtype)`` per dtype (through ``check``). With ``departures`` False (registry
    mode) every failure is a FAIL."""
    report = FunctionReport(name, "PASS", dtypes=[_dtype_name(d) for d in dtypes])
    start = time.monotonic()
    failures: list[Failure] = []
    probe_failures: list[Failure] = []
    passed: list[HintContext] = []
    if probe_check is not None:
        for probe in probes:
            check_interrupt()
            tol = _tolerance(check.entry, probe.dtype, probe.tolerance)
            try:
                case = probe.case()
            except Exception as exc:  # pragma: no cover - probes are static data
                report.note = f"probe '{probe.label}' could not be built: {exc}"
                continue
            try:
                found, _, _ = _evaluate(probe_check, case, probe.dtype, tol, probe=probe)
            except _NotApplicable as why:
                report.probes.append(
                    ProbeResult(
                        probe.label, _dtype_name(probe.dtype), "N/A", probe.shared, str(why)
                    )
                )
                continue
            shared = probe.shared or not departures
            for failure in found:
                failure.shared = shared
                if not shared:
                    failure.departure = probe.departure
                    failure.departure_tag = probe.tag
            verdict = "PASS" if not found else ("FAIL" if shared else "DEPARTS")
            report.probes.append(
                ProbeResult(probe.label, _dtype_name(probe.dtype), verdict, probe.shared)
            )
            probe_failures += found
            if not found and check.hints and not probe.refuse:
                ref_case = check.entry.reference_inputs(case, probe.dtype)
                try:
                    expected = check.entry.reference(*ref_case.args, **ref_case.kwargs)
                except Exception:
                    continue
                passed.append(
                    HintContext(case, ref_case, probe.dtype, "pass", expected, expected, tol)
                )
        for failure in probe_failures:
            _add_hints(failure, probe_check.hints, passed)
    # Then generated cases, shrunk to the smallest failing input; again with the kinds found
    # set aside, so that independent failures are all reported.
    ignore: set[str] = set()
    generated: list[Failure] = []
    for dtype in dtypes:
        for _ in range(MAX_ROUNDS):
            found, count, max_abs, max_rel, error = _search(
                check, cases(dtype), dtype, options, frozenset(ignore)
            )
            report.cases += count
            report.max_abs_error = max(report.max_abs_error, max_abs)
            report.max_rel_error = max(report.max_rel_error, max_rel)
            if error:
                report.verdict = "ERROR"
                report.note = error
            if not found:
                break
            for failure in found:
                _add_hints(failure, check.hints, passed if check.hints else ())
            generated += found
            ignore |= {f.key for f in found}
            if "timeout" in ignore:
                break
        if "timeout" in ignore:  # every further case could cost a time limit
            break
    failures = generated + probe_failures
    _prefer_consistent_hints(failures)
    report.failures = _dedupe(_drop_explained_departures(failures))
    if any(f.shared for f in report.failures):
        report.verdict = "FAIL"
    elif report.failures and report.verdict == "PASS":
        report.verdict = "DEPARTS"
    report.seconds = time.monotonic() - start
    return report


def _entries_by_name() -> dict[str, OpEntry]:
    return {entry.name: entry for entry in REGISTRY}


def _specs_by_entry() -> dict[str, SeedSpec]:
    return {spec.entry_name: spec for spec in SEED_SPECS}


# A function's check, not yet run: its name and the call that runs it.
_Job = tuple[str, Callable[[], FunctionReport]]


def _registry_jobs(names: Sequence[str] | None, options: _Options) -> list[_Job]:
    entries = list(REGISTRY)
    if names:
        known = _entries_by_name()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise TargetError(
                f"--op: no registry entry named {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        entries = [known[n] for n in names]
    specs = _specs_by_entry()

    device, timeout = options.device, options.timeout

    def job(entry: OpEntry) -> FunctionReport:
        if torch.device(device).type == "cuda" and not entry.cuda:
            return FunctionReport(entry.name, "SKIPPED", note="no CUDA path")
        guard = GuardedCall(entry.run_op, entry.name, timeout)

        def run(case: Case, dtype: torch.dtype) -> Any:
            return guard(case, dtype, device)

        check = _Check(entry, InProcessRunner(run), _parameter_names(entry.reference))
        spec = specs.get(entry.name)
        probe_check = None
        if spec is not None:
            course_call, op_guard = spec.call, GuardedCall(entry.op, entry.name, timeout)

            def run_probe(case: Case, dtype: torch.dtype) -> Any:
                return course_call(op_guard, case, dtype, device)

            probe_check = _Check(entry, InProcessRunner(run_probe), check.names, spec.hints)
        report = _run_function(
            entry.name,
            check,
            lambda dtype: entry.strategy(),
            entry.dtypes,
            spec.probes if spec is not None else (),
            probe_check,
            options,
            departures=False,
        )
        report.origin = f"{entry.op.__module__}.{entry.op.__name__}"
        return report

    return [(entry.name, functools.partial(job, entry)) for entry in entries]


def _function_jobs(
    target: Target,
    functions: Mapping[str, Callable[..., Any]],
    names: Sequence[str] | None,
    options: _Options,
    server: ForkServer | None,
) -> list[_Job]:
    wanted = list(target.names)
    if names:
        check_course_names(names)
        wanted = [n for n in wanted if n in names]
        if not any(n in functions for n in wanted):
            raise TargetError(
                f"{target.label}: defines none of the functions asked for with --op "
                f"({', '.join(names)})"
            )
    entries = _entries_by_name()
    specs = {spec.name: spec for spec in SEED_SPECS}

    def job(name: str) -> FunctionReport:
        fn = functions.get(name)
        spec = specs[name]
        entry = entries.get(spec.entry_name)
        if fn is None:
            return FunctionReport(name, "MISSING", note="not defined by the target")
        origin = target.origins.get(name, "")
        if entry is None:
            note = f"no registry entry {spec.entry_name!r} in this detops version"
            return FunctionReport(name, "SKIPPED", origin=origin, note=note)
        report = _verify_one(name, fn, spec, entry, options, server, target.source)
        report.origin = origin
        return report

    return [(name, functools.partial(job, name)) for name in wanted]


def _verify_one(
    name: str,
    fn: Callable[..., Any],
    spec: SeedSpec,
    entry: OpEntry,
    options: _Options,
    server: ForkServer | None,
    source: str | None,
) -> FunctionReport:
    """Check one function: in worker processes forked by ``server`` (None: in a thread, for
    CUDA, which :class:`GuardedCall` runs in the caller's process, and where the platform
    cannot fork)."""
    device, timeout = options.device, options.timeout

    def thread_runner() -> InProcessRunner:  # a thread, which a hang poisons
        guard = GuardedCall(fn, name, timeout)

        def run_guarded(case: Case, dtype: torch.dtype) -> Any:
            return spec.call(guard, case, dtype, device)

        return InProcessRunner(run_guarded)

    runner: ForkedRunner | InProcessRunner
    job = None if server is None else _worker_job(fn, name, source, timeout, device)
    if isinstance(job, bytes):
        assert server is not None
        runner = ForkedRunner(server, job, name, timeout, fallback=thread_runner)
    else:
        if job is not None:  # a function that cannot be sent to a worker
            _thread_note(name, job)
        runner = thread_runner()
    try:
        check = _Check(
            entry, runner, _parameter_names(entry.reference), spec.hints, spec.error_bound
        )
        wanted_dtypes = USER_DTYPES if options.dtypes is None else tuple(options.dtypes)
        run_dtypes = [d for d in wanted_dtypes if d in entry.tolerances] or list(entry.dtypes)[:1]
        return _run_function(
            name,
            check,
            lambda dtype: spec.generated_cases(entry, dtype),
            run_dtypes,
            spec.probes,
            check,
            options,
            departures=True,
        )
    finally:
        runner.close()


def device_problem(device: str) -> str | None:
    """Why verify cannot run on ``device``, or None (:func:`detops.environment.device_problem`).
    The harness compares on the CPU, forks workers for CPU inputs and calls in a thread
    for CUDA ones."""
    return _device_problem(device, "verify")


class Progress:
    """What :func:`verify` tells while it runs. Each method does nothing here: override
    the ones you need."""

    def begin(self, names: Sequence[str]) -> None:
        """The functions about to be checked, in order."""

    def start(self, name: str) -> None:
        """The check of ``name`` begins."""

    def done(self, report: FunctionReport) -> None:
        """A function's check is over: its report."""

    def end(self) -> None:
        """The run is over (after an error too)."""


def verify(
    target: Target,
    *,
    names: Sequence[str] | None = None,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    device: str = "cpu",
    shrink_seconds: float = SHRINK_SECONDS,
    shrink_draws: int = SHRINK_DRAWS,
    dtypes: Sequence[torch.dtype] | None = None,
    progress: Progress | None = None,
    _server: ForkServer | None = None,
) -> VerifyReport:
    """Check ``target`` and return the report (nothing is printed).

    Args:
        target: from :func:`load_target`.
        names: only these functions (registry entry names, or course function names for a
            target with functions).
        examples: generated cases per function and dtype, at least 1.
        seed: hypothesis seed; the same seed gives the same cases.
        timeout: per-call time limit in seconds for the function under test, > 0.
        device: where the inputs live: cpu, or cuda (cuda:N) where CUDA is available.
        shrink_seconds, shrink_draws: shrinking after a failure (per search) stops after
            this many seconds (at most a day) or drawn candidates, whichever comes first;
            ``shrink_seconds=0`` switches it off (the first failing input found is
            reported).
        dtypes: dtypes of the generated cases for a target with functions (default
            float32 and float64, where the registry entry has tolerances for them).
        progress: told which functions will be checked, and each one's start and report
            as it goes (:func:`stderr_progress` prints them).
        _server: a :class:`ForkServer` for ``target.source`` that the caller has started
            already (the ``detops verify`` command does, to import the target there before
            it does itself); closed at the end like verify's own.

    In functions mode on the CPU each function runs in worker processes forked from one
    fresh server process per run (:class:`ForkServer`), at torch's default thread count;
    this process is never forked, and the server and its workers are gone when verify
    returns. A function that cannot be sent to a worker (see :class:`Target`) runs in a
    thread here instead, with a RuntimeWarning; so does every function on CUDA.

    KeyboardInterrupt (Ctrl-C) stops the run: the report holds the functions finished
    before it (the one running then is left out, its worker process killed) and is flagged
    ``interrupted``, with ``functions_total`` the number it was to check.

    Raises:
        TargetError: ``names`` holds a name the target cannot have.
        TypeError, ValueError: a bad option.
    """
    examples = check_int("verify", "examples", examples, minimum=1)
    seed = check_int("verify", "seed", seed)
    timeout = check_positive_number("verify", "timeout", timeout)
    if timeout > MAX_TIMEOUT:
        raise ValueError(
            f"verify: timeout must be at most {MAX_TIMEOUT:g} s (a day), got {timeout!r}"
        )
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"verify: device {device!r}: {problem}")
    shrink_seconds = check_number(
        "verify", "shrink_seconds", shrink_seconds, expected="a number of seconds >= 0"
    )
    if not 0 <= shrink_seconds <= MAX_TIMEOUT:
        raise ValueError(
            f"verify: shrink_seconds must be >= 0 (0: no shrinking) and at most "
            f"{MAX_TIMEOUT:g} s (a day), got {shrink_seconds!r}"
        )
    shrink_draws = check_int("verify", "shrink_draws", shrink_draws, minimum=0)
    start = time.monotonic()
    options = _Options(examples, seed, timeout, device, (shrink_seconds, shrink_draws), dtypes)
    # Functions mode on the CPU: the user's functions run in worker processes, forked by a
    # server process that this run starts and ends.
    server: ForkServer | None = None
    if target.functions is None:
        mode = "registry"
        jobs = _registry_jobs(names, options)
    else:
        mode = "functions"
        if _server is not None:  # started by the command, which imported the target there first
            server = _server
        elif torch.device(device).type == "cpu" and ForkServer.available():
            server = ForkServer(target.source)
        jobs = _function_jobs(target, target.functions, names, options, server)
    progress = progress or Progress()
    functions: list[FunctionReport] = []
    interrupted = False
    try:
        if server is not None and target.functions and any(n in target.functions for n, _ in jobs):
            server.start()  # now: it imports torch while this process goes on
        progress.begin([name for name, _ in jobs])
        for name, job in jobs:
            check_interrupt()  # a Ctrl-C that garbage collection swallowed
            progress.start(name)
            # (Scoped: a np.seterr(all="raise") in the user's file, imported into this
            # process, must not reach verify's own arithmetic: an underflow in its NMS code
            # and error model had become an ERROR and a false FAIL.)
            # (NumPy's own defaults, as np.geterr() gives them in a fresh process.)
            with np.errstate(divide="warn", over="warn", under="ignore", invalid="warn"):
                report = job()
            functions.append(report)
            progress.done(report)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            progress.end()
        finally:
            if server is not None:
                server.close()  # with any worker left
    return VerifyReport(
        target=target.label,
        mode=mode,
        examples=examples,
        seed=seed,
        timeout=timeout,
        device=device,
        functions=functions,
        seconds=time.monotonic() - start,
        environment=environment_info(device),
        interrupted=interrupted,
        functions_total=len(jobs),
    )


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def progress_line(report: FunctionReport) -> str:
    """One line per function, for stderr while verify runs."""
    extra = f": {_shorten(report.summary, 70)}" if report.summary else ""
    cases = f", {report.cases} cases" if report.cases else ""
    return f"verify {report.name}: {report.verdict}{extra} ({report.seconds:.1f} s{cases})"


class _ProgressLines(Progress):
    def __init__(self, stream: TextIO):
        self.stream = stream

    def done(self, report: FunctionReport) -> None:
        print(progress_line(report), file=self.stream, flush=True)


class _ProgressBar(Progress):
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.bar: Any = None
        self.verdicts: dict[str, int] = {}

    def begin(self, names: Sequence[str]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(names), desc="verify", unit="function", file=self.stream)

    def start(self, name: str) -> None:
        self.bar.set_description(f"verify {name}")

    def done(self, report: FunctionReport) -> None:
        self.verdicts[report.verdict] = self.verdicts.get(report.verdict, 0) + 1
        counts = ", ".join(f"{count} {verdict}" for verdict, count in self.verdicts.items())
        self.bar.set_postfix_str(counts, refresh=False)
        self.bar.update()

    def end(self) -> None:
        if self.bar is not None:
            self.bar.set_description("verify")
            self.bar.close()


def stderr_progress(stream: TextIO | None = None) -> Progress:
    """Progress for a person watching: a tqdm bar where ``stream`` (stderr by default) is a
    terminal, else one :func:`progress_line` per function as each ends."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return _ProgressBar(stream)
    return _ProgressLines(stream)


def format_table(report: VerifyReport, summary_width: int = 90) -> str:
    rows = [("function", "verdict", "cases", "probes", "max abs err", "notes")]
    for f in report.functions:
        probes = ""
        if f.probes:
            ok = sum(p.verdict == "PASS" for p in f.probes)
            probes = f"{ok}/{len(f.probes)}"
        cases = str(f.cases) if f.verdict not in ("MISSING", "SKIPPED") else ""
        err = ""
        if f.verdict in ("PASS", "DEPARTS") and f.cases:
            err = "-" if not math.isfinite(f.max_abs_error) else f"{f.max_abs_error:.3g}"
        rows.append((f.name, f.verdict, cases, probes, err, _shorten(f.summary, summary_width)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3]), row[4].rjust(widths[4])]
        lines.append("  ".join(cells + [row[5]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(lines)


def format_report(report: VerifyReport, strict: bool = False) -> str:
    """The full text report: header, table, every FAIL and departure, verdict line."""
    cases = f"{report.examples} generated case{'' if report.examples == 1 else 's'} per dtype"
    if report.mode == "registry":
        header = (
            f"  detops' registry; {cases}, seed {report.seed}, per-call time limit "
            f"{report.timeout:g} s, device {report.device}"
        )
    else:
        header = (
            f"  functions with the course code's signatures; {cases} inside the shared "
            f"contract, seed {report.seed}, per-call time limit {report.timeout:g} s, device "
            f"{report.device}"
        )
    lines = [f"detops verify: {report.target}", header, "", format_table(report)]
    for f in report.functions:
        if f.verdict == "ERROR" and not f.failures:
            lines += ["", f"ERROR {f.name}: {f.note}"]
        ordered = [x for x in f.failures if x.shared] + f.departures
        for failure in ordered:
            where = f"probe '{failure.probe}'" if failure.probe else "generated case (shrunk)"
            if failure.shrink_note == _NOT_SHRUNK:
                where = "generated case (not shrunk)"
            elif failure.shrink_note:
                where = "generated case (not fully shrunk)"
            lines += [
                "",
                f"{failure.verdict} {f.name} [{failure.dtype}, {where}]: {failure.reason}",
            ]
            if f.origin:
                lines.append(f"  function: {f.origin}")
            lines.append(f"  input:    {failure.input}")
            if failure.shrink_note:
                lines.append(f"  shrink:   {failure.shrink_note}")
            if failure.expected:
                lines.append(f"  expected: {failure.expected}")
            if failure.actual and failure.actual != failure.reason:
                lines.append(f"  actual:   {failure.actual}")
            if failure.detail:
                detail = failure.detail.splitlines()[0]
                lines.append(f"  detail:   {_shorten(detail, 400)}")
            if failure.departure:
                lines.append(f"  detops:   {failure.departure}")
            for hint in failure.hints:
                lines.append(f"  hint:     {hint}")
            if failure.also:
                lines.append(f"  also on:  {', '.join(failure.also)}")
        for probe in f.probes:
            if probe.verdict == "N/A":
                lines += ["", f"N/A {f.name} [{probe.dtype}, probe '{probe.label}']: {probe.note}"]
    lines += ["", _verdict_line(report, strict)]
    return "\n".join(lines)


def _verdict_line(report: VerifyReport, strict: bool = False) -> str:
    """The report's last line: PASS or FAIL (the exit status) first, then every count.

    ``PASS: 1 function in 0.4 s: 0 match detops, 1 departs from detops' stricter rules
    (not a failure; --strict makes it one), 0 fail``
    """

    def verb(n: int, singular: str, plural: str) -> str:
        return f"{n} {singular if n == 1 else plural}"

    checked = report.checked
    counts = {v: sum(f.verdict == v for f in checked) for v in ("PASS", "DEPARTS", "FAIL")}
    missing = sum(f.verdict == "MISSING" for f in report.functions)
    skipped = sum(f.verdict == "SKIPPED" for f in report.functions)
    others = len(checked) - sum(counts.values())
    ok = report.passed_strict if strict else report.passed
    # The registry mode checks detops' own ops against the NumPy references; the other
    # mode checks someone's functions against detops.
    standard = "the reference" if report.mode == "registry" else "detops"
    parts = [verb(counts["PASS"], "matches", "match") + f" {standard}"]
    departs = counts["DEPARTS"]
    if departs:
        if strict:
            why = "a failure under --strict" if departs == 1 else "failures under --strict"
        elif departs == 1:
            why = "not a failure; --strict makes it one"
        else:
            why = "not failures; --strict makes them failures"
        parts.append(verb(departs, "departs", "depart") + f" from detops' stricter rules ({why})")
    parts.append(verb(counts["FAIL"], "fails", "fail"))
    if others:
        parts.append(f"{others} could not be checked")
    if missing:
        parts.append(f"{missing} missing")
    if skipped:
        parts.append(f"{skipped} skipped")
    if report.interrupted:  # exit status 130: neither PASS nor FAIL
        total = f"{len(report.functions)} of {verb(report.total, 'function', 'functions')}"
        return f"INTERRUPTED after {total} in {report.seconds:.1f} s: {', '.join(parts)}"
    total = verb(len(report.functions), "function", "functions")
    return f"{'PASS' if ok else 'FAIL'}: {total} in {report.seconds:.1f} s: {', '.join(parts)}"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _as_dict(value):
    if is_dataclass(value) and not isinstance(value, type):
        out = {
            f.name: _as_dict(getattr(value, f.name))
            for f in fields(value)
            if f.name not in ("context", "data")
        }
        if isinstance(value, Failure):
            out["verdict"] = value.verdict
            out["data"] = {k: to_json_tree(v) for k, v in value.data.items()}
        return out
    if isinstance(value, list):
        return [_as_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_dict(v) for k, v in value.items()}
    return value


def report_to_dict(report: VerifyReport) -> dict:
    """The report as JSON-ready data; each failure's ``data`` holds its input (by argument
    name), expected and actual output as arrays ``{"shape", "dtype", "data"}``.
    ``interrupted``, ``functions_done`` and ``functions_total`` say whether Ctrl-C cut the
    run short, and where."""
    data = _as_dict(report)
    for f_data, f in zip(data["functions"], report.functions, strict=True):
        f_data["summary"] = f.summary
    data["passed"] = report.passed
    data["passed_strict"] = report.passed_strict
    data["checked"] = len(report.checked)
    data["functions_done"] = len(report.functions)
    return _jsonable(data)


def report_to_json(report: VerifyReport) -> str:
    return json.dumps(report_to_dict(report), indent=2) + "\n"
