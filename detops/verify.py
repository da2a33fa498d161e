"""The verify harness: check detops' ops, or anyone's implementation, against the references.

Two modes:

* **registry** (``python -m detops verify``): every registry entry's fast op against its NumPy
  reference on hypothesis-generated cases, for every dtype in its tolerances, plus the
  hand-made probes of :mod:`detops.testing.seed_api` where an entry has a seed spec.
* **functions** (``--impl path/to/file.py``, ``--impl some.module``, ``--impl torchvision``):
  the target's functions, found by the seed's names, each called with the seed's per-image
  signature on the registry's cases (probes first, then float32 and float64 hypothesis
  cases, shrunk to the smallest failing input).

The harness never crashes on a bad function: one that raises, hangs past the per-call time
limit, mutates its inputs or returns the wrong type, shape, dtype or device is a FAIL with
that reason. A failure that matches a known mistake (a mistake reference in
:mod:`detops.testing.seed_api`) gets a one-line hint.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, given, settings

from .testing.compare import Tolerance, to_numpy_tree
from .testing.entry import OpEntry
from .testing.registry import REGISTRY
from .testing.seed_api import (
    SEED_NAMES,
    SEED_SPECS,
    CallFailure,
    HintContext,
    Probe,
    SeedSpec,
)
from .testing.strategies import Case

__all__ = [
    "Failure",
    "FunctionReport",
    "Target",
    "TargetError",
    "VerifyReport",
    "format_report",
    "load_target",
    "report_to_dict",
    "report_to_json",
    "verify",
]

DEFAULT_EXAMPLES = 100
DEFAULT_TIMEOUT = 10.0
# Generated cases for user functions run in these dtypes (the seed works in float32);
# other dtypes (float16) are covered by probes.
USER_DTYPES = (torch.float32, torch.float64)
# After the first failure, shrinking stops after this many drawn candidates or seconds,
# whichever comes first (the smallest failing input found so far is reported).
SHRINK_SECONDS = 10.0
SHRINK_DRAWS = 1000


_KIND_WORDS = {
    "timeout": "hangs (time limit)",
    "mutated": "mutates its input",
    "accepted": "accepts an input it must refuse",
    "mismatch": "",
}


class TargetError(Exception):
    """The target could not be loaded (bad path, import error, nothing to check)."""


# ----------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """What to verify. ``functions`` is None in registry mode."""

    label: str
    functions: dict[str, Callable[..., Any]] | None = None
    origins: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = SEED_NAMES


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
    return Target(f"torchvision {torchvision.__version__}", functions, origins, names)


def _origin(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsourcefile(fn) or "?"
        line = inspect.getsourcelines(fn)[1]
        try:
            source = os.path.relpath(source)
        except ValueError:
            pass
        return f"{source}:{line}"
    except (TypeError, OSError):
        return getattr(fn, "__module__", "") or repr(fn)


def _import_module(spec: str):
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise TargetError(f"--impl {spec}: no such file")
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
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise TargetError(f"--impl {spec}: importing it raised {_exception_line(exc)}") from exc


def load_target(spec: str | None) -> Target:
    """``None``: detops' registry. ``"torchvision"``: torchvision.ops under the seed's names.
    Otherwise a ``.py`` path or a module name whose functions carry the seed's names."""
    if spec is None:
        return Target("detops registry (fast ops vs NumPy references)")
    if spec == "torchvision":
        return _torchvision_target()
    module = _import_module(spec)
    functions, origins = {}, {}
    for name in SEED_NAMES:
        fn = getattr(module, name, None)
        if callable(fn):
            functions[name] = fn
            origins[name] = _origin(fn)
    return Target(spec, functions, origins)


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


def _exception_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if len(line) > 300:
        line = line[:300] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        line += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return line


def _snapshot(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", value, value.detach().clone(), value._version)
    if isinstance(value, Mapping):
        return ("map", value, {k: _snapshot(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return ("seq", value, [_snapshot(v) for v in value])
    return ("other", value, None)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _changed(snapshot, path: str) -> str | None:
    kind, obj, saved = snapshot[0], snapshot[1], snapshot[2]
    if kind == "tensor":
        if obj._version != snapshot[3] or not _same_values(obj.detach(), saved):
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
    """Calls ``fn`` in a worker thread with a time limit; turns exceptions, hangs and input
    mutation into :class:`CallFailure`. After one hang every later call fails at once."""

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
            self.hung = (
                f"{self.name} did not return within {self.timeout:g} s "
                "(it hangs, or is far too slow for this input)"
            )
            raise CallFailure("timeout", self.hung)
        if "error" in box:
            raise CallFailure("raised", f"{self.name} raised {_exception_line(box['error'])}")
        for name, snap in before:
            where = _changed(snap, name)
            if where:
                raise CallFailure(
                    "mutated",
                    f"{self.name} modified its input `{where}` in place "
                    "(inputs must never be mutated; work on a copy or use out-of-place ops)",
                )
        return box["value"]


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------


@dataclass
class Failure:
    """One failing input, as reported."""

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
    context: HintContext | None = field(default=None, repr=False, compare=False)


@dataclass
class ProbeResult:
    label: str
    dtype: str
    verdict: str  # PASS | FAIL


@dataclass
class FunctionReport:
    name: str
    verdict: str  # PASS | FAIL | MISSING | SKIPPED | ERROR
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
    def summary(self) -> str:
        """A one-line explanation for the table: the known mistakes or departures found,
        in a few words each, else what went wrong."""
        if self.note:
            return self.note
        parts: list[str] = []
        for failure in self.failures:
            for part in failure.tags or [_KIND_WORDS.get(failure.kind) or failure.reason]:
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

    @property
    def checked(self) -> list[FunctionReport]:
        return [f for f in self.functions if f.verdict not in ("MISSING", "SKIPPED")]

    @property
    def passed(self) -> bool:
        return bool(self.checked) and all(f.verdict == "PASS" for f in self.checked)


# ----------------------------------------------------------------------------------------
# Formatting values for reports
# ----------------------------------------------------------------------------------------


def format_value(value: Any, limit: int = 64) -> str:
    """Readable text of an input or output tree; small arrays in full."""
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
    a, e = to_numpy_tree(actual), to_numpy_tree(expected)
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
        pairs = [diff_views(x, y, tol, limit) for y, x in zip(e, a, strict=True)]
        return (
            "(" + ", ".join(p[0] for p in pairs) + ")",
            "(" + ", ".join(p[1] for p in pairs) + ")",
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


def format_case(case: Case, names: Sequence[str], limit: int = 64) -> str:
    parts = []
    for i, arg in enumerate(case.args):
        name = names[i] if i < len(names) else f"arg{i}"
        parts.append(f"{name}={format_value(arg, limit)}")
    parts += [f"{k}={format_value(v, limit)}" for k, v in case.kwargs.items()]
    return ", ".join(parts)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------
# Checking one function on one case
# ----------------------------------------------------------------------------------------


@dataclass
class _Check:
    """Everything needed to judge one function: the entry (reference, compare,
    tolerances) and how to run the function on a case."""

    entry: OpEntry
    run: Callable[[Case, torch.dtype], Any]
    names: list[str]
    hints: tuple = ()


def _tolerance(entry: OpEntry, dtype: torch.dtype, fallback: Tolerance | None) -> Tolerance:
    if dtype in entry.tolerances:
        return entry.tolerances[dtype]
    if fallback is not None:
        return fallback
    return next(iter(entry.tolerances.values()))


def _evaluate(
    check: _Check, case: Case, dtype: torch.dtype, tol: Tolerance, probe: str = ""
) -> tuple[Failure | None, float, float]:
    """Run the function and the reference on ``case``; a Failure or None, and the errors."""
    entry = check.entry
    dname = _dtype_name(dtype)
    ref_case = entry.reference_inputs(case, dtype)
    text = format_case(case, check.names)
    try:
        expected = entry.reference(*ref_case.args, **ref_case.kwargs)
        refused: BaseException | None = None
    except Exception as exc:  # the contract refuses this input (e.g. NaN scores)
        expected, refused = None, exc
    try:
        actual = check.run(case, dtype)  # OpEntry.run_op already applies prepare_output
    except CallFailure as failure:
        if refused is not None and failure.kind == "raised":
            return None, 0.0, 0.0  # both refuse the input
        context = HintContext(case, ref_case, dtype, failure.kind, None, expected, tol)
        return (
            Failure(
                failure.kind,
                failure.message,
                dname,
                text,
                expected="" if refused else format_value(expected),
                actual=failure.message,
                probe=probe,
                context=context,
            ),
            math.inf,
            math.inf,
        )
    except Exception as exc:  # the result could not be assembled: wrong structure
        return (
            Failure(
                "output",
                f"the result could not be used: {_exception_line(exc)}",
                dname,
                text,
                probe=probe,
            ),
            math.inf,
            math.inf,
        )
    if refused is not None:
        return (
            Failure(
                "accepted",
                f"the reference refuses this input ({type(refused).__name__}: {refused}) "
                "but the function returned a result",
                dname,
                text,
                expected=f"raises {type(refused).__name__}",
                actual=format_value(actual),
                probe=probe,
            ),
            math.inf,
            math.inf,
        )
    result = entry.compare(actual, expected, tol)
    if result.ok:
        return None, result.max_abs_error, result.max_rel_error
    context = HintContext(case, ref_case, dtype, "mismatch", actual, expected, tol)
    try:
        expected_text, actual_text = diff_views(actual, expected, tol)
    except Exception:  # a view is a convenience; never let it break the report
        expected_text, actual_text = format_value(expected), format_value(actual)
    return (
        Failure(
            "mismatch",
            "the output differs from the reference",
            dname,
            text,
            expected=expected_text,
            actual=actual_text,
            detail=result.message,
            probe=probe,
            context=context,
        ),
        result.max_abs_error,
        result.max_rel_error,
    )


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


def _evaluate_refusal(check: _Check, case: Case, dtype: torch.dtype, probe: str) -> Failure | None:
    """For an input outside the contract: pass when the function raises."""
    dname = _dtype_name(dtype)
    text = format_case(case, check.names)
    try:
        actual = check.run(case, dtype)
    except CallFailure as failure:
        if failure.kind == "raised":
            return None
        return Failure(failure.kind, failure.message, dname, text, probe=probe)
    except Exception as exc:
        return Failure(
            "output",
            f"the result could not be used: {_exception_line(exc)}",
            dname,
            text,
            probe=probe,
        )
    return Failure(
        "accepted",
        "this input is outside the contract and must be refused with an exception "
        "(detops raises ValueError), but the function returned a result",
        dname,
        text,
        expected="raises ValueError",
        actual=format_value(actual),
        probe=probe,
    )


def _add_hints(
    failure: Failure,
    hints: Iterable,
    probe: Probe | None = None,
    passed: Sequence[HintContext] = (),
) -> None:
    """The first known mistake that explains the failure (hints are ordered from single
    mistakes to combinations) and is not refuted by an input the function got right (the
    ``passed`` probes), else the probe's known departure."""
    context = failure.context
    if context is not None:
        for hint in hints:
            try:
                found = hint.matches(context)
            except Exception:  # a hint detector must never break the report
                continue
            if found and not _refuted(hint, passed):
                failure.hints.append(hint.text)
                if hint.short:
                    failure.tags.append(hint.short)
                break
    if not failure.hints and probe is not None and probe.departure:
        if failure.kind in probe.departure_kinds:
            failure.hints.append(probe.departure)
            if probe.tag:
                failure.tags.append(probe.tag)


class _Found(Exception):
    pass


class _Stop(BaseException):
    """Ends the search at once: hypothesis lets BaseExceptions (like KeyboardInterrupt)
    through instead of treating them as a new failure to shrink."""


def _search(
    check: _Check,
    strategy,
    dtype: torch.dtype,
    examples: int,
    seed: int,
    shrink: tuple[float, int],
) -> tuple[Failure | None, int, float, float, str]:
    """Hypothesis search with shrinking. Returns (failure, cases, max abs, max rel, error).

    Shrinking stops after ``shrink = (seconds, draws)``, whichever comes first; the draw
    count keeps the result reproducible for a seed, the time limit bounds slow draws."""
    tol = _tolerance(check.entry, dtype, None)
    shrink_seconds, shrink_draws = shrink
    state: dict[str, Any] = {
        "cases": 0,
        "abs": 0.0,
        "rel": 0.0,
        "last": None,
        "stop": None,
        "draws": 0,
    }

    def exhausted() -> bool:
        return state["stop"] is not None and (
            time.monotonic() > state["stop"] or state["draws"] > shrink_draws
        )

    def tick(case):
        # Shrinking also spends time drawing candidates that never reach ``run``: count and
        # check the budget on every drawn case.
        if state["stop"] is not None:
            state["draws"] += 1
        if exhausted():
            raise _Stop()
        return case

    @hypothesis.seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(case=strategy.map(tick))
    def run(case):
        if exhausted():
            raise _Stop()
        failure, max_abs, max_rel = _evaluate(check, case, dtype, tol)
        if state["stop"] is None:  # count cases up to the first failure, not the shrinking
            state["cases"] += 1
        if failure is None:
            state["abs"] = max(state["abs"], max_abs)
            state["rel"] = max(state["rel"], max_rel)
            return
        state["last"] = failure
        if state["stop"] is None:
            state["stop"] = time.monotonic() + shrink_seconds
        raise _Found(failure)

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
        if state["last"] is None:
            error = f"the check could not run: {_exception_line(exc)}"
    return state["last"], state["cases"], state["abs"], state["rel"], error


def _dedupe(failures: list[Failure]) -> list[Failure]:
    kept: list[Failure] = []
    for failure in failures:
        twin = next(
            (
                k
                for k in kept
                if k.kind == failure.kind
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


def _run_function(
    name: str,
    check: _Check,
    strategy_for: Callable[[], Any],
    dtypes: Sequence[torch.dtype],
    probes: Sequence[Probe],
    probe_run: Callable[[Case, torch.dtype], Any] | None,
    probe_hints: tuple,
    guard: GuardedCall | None,
    examples: int,
    seed: int,
    shrink: tuple[float, int],
) -> FunctionReport:
    """Probes (through ``probe_run``, seed-shaped cases, ``probe_hints``), then hypothesis
    search per dtype (through ``check.run``, registry-shaped cases, ``check.hints``)."""
    report = FunctionReport(name, "PASS", dtypes=[_dtype_name(d) for d in dtypes])
    start = time.monotonic()
    failures: list[Failure] = []
    probe_failures: list[tuple[Failure, Probe]] = []
    passed: list[HintContext] = []
    # Probes first: small, hand-made, aimed at known departures.
    if probe_run is not None:
        probe_check = _Check(check.entry, probe_run, check.names, probe_hints)
        for probe in probes:
            if guard is not None and guard.hung:
                break
            tol = _tolerance(check.entry, probe.dtype, probe.tolerance)
            try:
                case = probe.case()
            except Exception as exc:  # pragma: no cover - probes are static data
                report.note = f"probe '{probe.label}' could not be built: {exc}"
                continue
            if probe.refuse:
                failure = _evaluate_refusal(probe_check, case, probe.dtype, probe.label)
            else:
                failure, _, _ = _evaluate(probe_check, case, probe.dtype, tol, probe=probe.label)
            report.probes.append(
                ProbeResult(probe.label, _dtype_name(probe.dtype), "FAIL" if failure else "PASS")
            )
            if failure is not None:
                probe_failures.append((failure, probe))
                failures.append(failure)
            elif probe_hints and not probe.refuse:
                ref_case = check.entry.reference_inputs(case, probe.dtype)
                try:
                    expected = check.entry.reference(*ref_case.args, **ref_case.kwargs)
                except Exception:
                    continue
                passed.append(
                    HintContext(case, ref_case, probe.dtype, "pass", expected, expected, tol)
                )
        for failure, probe in probe_failures:
            _add_hints(failure, probe_hints, probe, passed)
    # Then generated cases per dtype, shrunk to the smallest failing input.
    for dtype in dtypes:
        if guard is not None and guard.hung:
            break
        failure, cases, max_abs, max_rel, error = _search(
            check, strategy_for(), dtype, examples, seed, shrink
        )
        report.cases += cases
        report.max_abs_error = max(report.max_abs_error, max_abs)
        report.max_rel_error = max(report.max_rel_error, max_rel)
        if error:
            report.verdict = "ERROR"
            report.note = error
        if failure is not None:
            _add_hints(failure, check.hints, passed=passed if check.hints else ())
            failures.append(failure)
    report.failures = _dedupe(failures)
    if report.failures:
        report.verdict = "FAIL"
    report.seconds = time.monotonic() - start
    return report


def _entries_by_name() -> dict[str, OpEntry]:
    return {entry.name: entry for entry in REGISTRY}


def _specs_by_entry() -> dict[str, SeedSpec]:
    return {spec.entry_name: spec for spec in SEED_SPECS}


def _user_strategy(entry: OpEntry, spec: SeedSpec):
    strategy = entry.strategy()
    if spec.prepare is None:
        return strategy
    return strategy.map(spec.prepare).filter(lambda case: case is not None)


def _verify_registry(
    names: Sequence[str] | None,
    examples: int,
    seed: int,
    timeout: float,
    device: str,
    shrink: tuple[float, int],
) -> list[FunctionReport]:
    entries = list(REGISTRY)
    if names:
        known = _entries_by_name()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise TargetError(f"--op: no registry entry named {unknown}; known: {sorted(known)}")
        entries = [known[n] for n in names]
    specs = _specs_by_entry()
    reports = []
    for entry in entries:
        if torch.device(device).type == "cuda" and not entry.cuda:
            reports.append(FunctionReport(entry.name, "SKIPPED", note="no CUDA path"))
            continue
        guard = GuardedCall(entry.run_op, entry.name, timeout)
        check = _Check(
            entry,
            lambda case, dtype, guard=guard: guard(case, dtype, device),
            _parameter_names(entry.reference),
        )
        spec = specs.get(entry.name)
        probe_run = None
        if spec is not None:
            op_guard = GuardedCall(entry.op, entry.name, timeout)
            probe_run = lambda case, dtype, spec=spec, g=op_guard: spec.call(g, case, dtype, device)  # noqa: E731
        report = _run_function(
            entry.name,
            check,
            entry.strategy,
            entry.dtypes,
            spec.probes if spec else (),
            probe_run,
            spec.hints if spec else (),
            guard,
            examples,
            seed,
            shrink,
        )
        report.origin = f"{entry.op.__module__}.{entry.op.__name__}"
        reports.append(report)
    return reports


def _verify_functions(
    target: Target,
    names: Sequence[str] | None,
    examples: int,
    seed: int,
    timeout: float,
    device: str,
    shrink: tuple[float, int],
    dtypes: Sequence[torch.dtype] | None,
) -> list[FunctionReport]:
    assert target.functions is not None
    wanted = list(target.names)
    if names:
        unknown = [n for n in names if n not in SEED_NAMES]
        if unknown:
            raise TargetError(f"--op: {unknown} is not a seed function; known: {list(SEED_NAMES)}")
        wanted = [n for n in wanted if n in names]
    entries = _entries_by_name()
    specs = {spec.name: spec for spec in SEED_SPECS}
    reports = []
    for name in wanted:
        fn = target.functions.get(name)
        if fn is None:
            reports.append(FunctionReport(name, "MISSING", note="not defined by the target"))
            continue
        spec = specs[name]
        entry = entries.get(spec.entry_name)
        if entry is None:
            reports.append(
                FunctionReport(
                    name,
                    "SKIPPED",
                    origin=target.origins.get(name, ""),
                    note=f"no registry entry {spec.entry_name!r} in this detops version",
                )
            )
            continue
        guard = GuardedCall(fn, name, timeout)
        run = lambda case, dtype, spec=spec, guard=guard: spec.call(guard, case, dtype, device)  # noqa: E731
        check = _Check(entry, run, _parameter_names(entry.reference), spec.hints)
        wanted_dtypes = USER_DTYPES if dtypes is None else tuple(dtypes)
        run_dtypes = [d for d in wanted_dtypes if d in entry.tolerances] or list(entry.dtypes)[:1]
        report = _run_function(
            name,
            check,
            lambda entry=entry, spec=spec: _user_strategy(entry, spec),
            run_dtypes,
            spec.probes,
            run,
            spec.hints,
            guard,
            examples,
            seed,
            shrink,
        )
        report.origin = target.origins.get(name, "")
        reports.append(report)
    return reports


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
) -> VerifyReport:
    """Check ``target`` and return the report (nothing is printed).

    Args:
        target: from :func:`load_target`.
        names: only these functions (registry entry names, or seed names for a target
            with functions).
        examples: generated cases per function and dtype.
        seed: hypothesis seed; the same seed gives the same cases.
        timeout: per-call time limit in seconds for the function under test.
        device: where the inputs live.
        shrink_seconds, shrink_draws: shrinking after the first failure (per dtype) stops
            after this many seconds or drawn candidates, whichever comes first.
        dtypes: dtypes of the generated cases for a target with functions (default
            float32 and float64, where the registry entry has tolerances for them).
    """
    from .bench.timing import environment_info

    start = time.monotonic()
    if target.functions is None:
        mode = "registry"
        shrink = (shrink_seconds, shrink_draws)
        functions = _verify_registry(names, examples, seed, timeout, device, shrink)
    else:
        mode = "functions"
        functions = _verify_functions(
            target, names, examples, seed, timeout, device, (shrink_seconds, shrink_draws), dtypes
        )
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
    )


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(report: VerifyReport, summary_width: int = 90) -> str:
    rows = [("function", "verdict", "cases", "probes", "max abs err", "notes")]
    for f in report.functions:
        probes = ""
        if f.probes:
            ok = sum(p.verdict == "PASS" for p in f.probes)
            probes = f"{ok}/{len(f.probes)}"
        cases = str(f.cases) if f.verdict not in ("MISSING", "SKIPPED") else ""
        err = ""
        if f.verdict == "PASS" and f.cases:
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


def format_report(report: VerifyReport) -> str:
    """The full text report: header, table, details of every failure, verdict line."""
    mode = "registry" if report.mode == "registry" else "seed-signature functions"
    lines = [
        f"detops verify: {report.target}",
        f"  mode {mode}; {report.examples} generated cases per dtype, seed {report.seed}, "
        f"per-call time limit {report.timeout:g} s, device {report.device}",
        "",
        format_table(report),
    ]
    for f in report.functions:
        if f.verdict == "ERROR" and not f.failures:
            lines += ["", f"ERROR {f.name}: {f.note}"]
        for failure in f.failures:
            where = f"probe '{failure.probe}'" if failure.probe else "generated case (shrunk)"
            lines += ["", f"FAIL {f.name} [{failure.dtype}, {where}]: {failure.reason}"]
            if f.origin:
                lines.append(f"  function: {f.origin}")
            lines.append(f"  input:    {failure.input}")
            if failure.expected:
                lines.append(f"  expected: {failure.expected}")
            if failure.actual and failure.actual != failure.reason:
                lines.append(f"  actual:   {failure.actual}")
            if failure.detail:
                detail = failure.detail.splitlines()[0]
                lines.append(f"  detail:   {_shorten(detail, 400)}")
            for hint in failure.hints:
                lines.append(f"  hint:     {hint}")
            if failure.also:
                lines.append(f"  also on:  {', '.join(failure.also)}")
    checked = report.checked
    passed = sum(f.verdict == "PASS" for f in checked)
    missing = sum(f.verdict == "MISSING" for f in report.functions)
    skipped = sum(f.verdict == "SKIPPED" for f in report.functions)
    verdict = "PASS" if report.passed else "FAIL"
    extra = []
    if missing:
        extra.append(f"{missing} missing")
    if skipped:
        extra.append(f"{skipped} skipped")
    tail = f" ({', '.join(extra)})" if extra else ""
    lines += [
        "",
        f"{verdict}: {passed} of {len(checked)} checked functions pass{tail} "
        f"in {report.seconds:.1f} s",
    ]
    return "\n".join(lines)


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
        return {
            f.name: _as_dict(getattr(value, f.name)) for f in fields(value) if f.name != "context"
        }
    if isinstance(value, list):
        return [_as_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_dict(v) for k, v in value.items()}
    return value


def report_to_dict(report: VerifyReport) -> dict:
    data = _as_dict(report)
    for f_data, f in zip(data["functions"], report.functions, strict=True):
        f_data["summary"] = f.summary
    data["passed"] = report.passed
    data["checked"] = len(report.checked)
    return _jsonable(data)


def report_to_json(report: VerifyReport) -> str:
    return json.dumps(report_to_dict(report), indent=2) + "\n"
