"""Compare an op's output with its reference's output.

Outputs are trees: a tensor/array, or dicts, lists and tuples of them. Both sides are
turned into NumPy (floats as float64) and compared leaf by leaf. Every helper returns a
:class:`Comparison` (so ``detops verify`` can report errors) and has an ``assert_`` twin
for tests. ``tests/test_compare.py`` feeds each one a wrong answer and expects failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Tolerance",
    "Comparison",
    "to_numpy_tree",
    "compare_trees",
    "assert_trees_close",
    "compare_index_sets",
    "EXACT",
    "EXACT_TOLERANCES",
]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|``, elementwise."""

    atol: float
    rtol: float


EXACT = Tolerance(0.0, 0.0)
#: Per-dtype tolerances of an op whose float32 and float64 results are exact.
EXACT_TOLERANCES = {torch.float32: EXACT, torch.float64: EXACT}


@dataclass(frozen=True)
class Comparison:
    ok: bool
    max_abs_error: float
    max_rel_error: float
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok


def to_numpy_tree(value):
    """Tensors and arrays to NumPy; floats become float64. Containers are kept."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            return value.to(torch.float64).numpy()
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64) if np.issubdtype(value.dtype, np.floating) else value
    if isinstance(value, Mapping):
        return {key: to_numpy_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy_tree(item) for item in value)
    if isinstance(value, (bool, int, float, np.number)):
        return np.asarray(value, dtype=np.float64 if isinstance(value, float) else None)
    return value


def _summarize(array: np.ndarray, limit: int = 12) -> str:
    flat = np.asarray(array).reshape(-1)
    text = np.array2string(flat[:limit], precision=6, separator=", ")
    more = f" ... ({flat.size} values)" if flat.size > limit else ""
    return f"shape {list(np.shape(array))} {text}{more}"


def _compare_leaf(actual, expected, tol: Tolerance, path: str) -> Comparison:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return Comparison(
            False,
            float("inf"),
            float("inf"),
            f"{path}: shape mismatch, expected {list(expected.shape)}, got {list(actual.shape)}",
        )
    if actual.size == 0:
        return Comparison(True, 0.0, 0.0)
    both_float = np.issubdtype(actual.dtype, np.floating) or np.issubdtype(
        expected.dtype, np.floating
    )
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_mismatch = np.isnan(a) != np.isnan(e)
    finite = np.isfinite(a) & np.isfinite(e)
    inf_mismatch = ~finite & ~np.isnan(a) & ~np.isnan(e) & (a != e)
    diff = np.where(finite, np.abs(a - e), 0.0)
    rel = np.where(finite & (e != 0), diff / np.where(e != 0, np.abs(e), 1.0), 0.0)
    max_abs = float(diff.max(initial=0.0))
    max_rel = float(rel.max(initial=0.0))
    if both_float:
        bad = (diff > tol.atol + tol.rtol * np.abs(np.where(finite, e, 0.0))) & finite
    else:
        bad = a != e
    bad = bad | nan_mismatch | inf_mismatch
    if not bad.any():
        return Comparison(True, max_abs, max_rel)
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    message = (
        f"{path}: {int(bad.sum())} of {bad.size} values differ (first at index {list(where)}: "
        f"expected {e[where]!r}, got {a[where]!r}; atol={tol.atol}, rtol={tol.rtol}, "
        f"max abs error {max_abs:.3g})\n  expected {_summarize(e)}\n  got      {_summarize(a)}"
    )
    if nan_mismatch.any() and max_abs == 0.0:
        max_abs = float("nan")
    return Comparison(False, max_abs, max_rel, message)


def compare_trees(actual, expected, tol: Tolerance, path: str = "output") -> Comparison:
    """Compare two output trees leaf by leaf; structure must match exactly."""
    actual = to_numpy_tree(actual)
    expected = to_numpy_tree(expected)
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return Comparison(
                False, float("inf"), float("inf"), f"{path}: expected a dict, got {type(actual)}"
            )
        if list(actual.keys()) != list(expected.keys()):
            return Comparison(
                False,
                float("inf"),
                float("inf"),
                f"{path}: expected keys {list(expected)}, got {list(actual)}",
            )
        parts = [compare_trees(actual[k], expected[k], tol, f"{path}[{k!r}]") for k in expected]
    elif isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            got = len(actual) if isinstance(actual, (list, tuple)) else type(actual).__name__
            return Comparison(
                False,
                float("inf"),
                float("inf"),
                f"{path}: expected a sequence of {len(expected)} items, got {got}",
            )
        parts = [
            compare_trees(a, e, tol, f"{path}[{i}]")
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
        ]
    else:
        if isinstance(actual, (Mapping, list, tuple)):
            return Comparison(
                False, float("inf"), float("inf"), f"{path}: expected an array, got {type(actual)}"
            )
        return _compare_leaf(actual, expected, tol, path)
    if not parts:
        return Comparison(True, 0.0, 0.0)
    failures = [p.message for p in parts if not p.ok]
    return Comparison(
        not failures,
        max(p.max_abs_error for p in parts),
        max(p.max_rel_error for p in parts),
        "\n".join(failures),
    )


def assert_trees_close(actual, expected, tol: Tolerance, context: str = "") -> Comparison:
    result = compare_trees(actual, expected, tol)
    if not result.ok:
        raise AssertionError(f"{context}\n{result.message}" if context else result.message)
    return result


def compare_index_sets(actual, acceptable, path: str = "output") -> Comparison:
    """Pass when ``actual`` equals one of the ``acceptable`` index arrays.

    For outputs whose order or content is legitimately ambiguous (NMS under exact ties),
    as array-api-tests does for unstable sorts.
    """
    actual = np.asarray(to_numpy_tree(actual))
    options = [np.asarray(to_numpy_tree(option)) for option in acceptable]
    for option in options:
        if option.shape == actual.shape and np.array_equal(option, actual):
            return Comparison(True, 0.0, 0.0)
    shown = "; ".join(_summarize(o) for o in options[:4])
    return Comparison(
        False,
        float("inf"),
        float("inf"),
        f"{path}: got {_summarize(actual)}, expected one of {len(options)} answers: {shown}",
    )
