"""Registry entry type: an op paired with its reference, strategy and tolerances."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from .compare import Comparison, Tolerance, compare_trees, to_numpy_tree
from .strategies import Case, summarize_case

__all__ = ["OpEntry", "case_to_torch"]


def case_to_torch(value, dtype: torch.dtype, device: torch.device | str):
    """NumPy float arrays become ``dtype`` tensors, integer/bool arrays keep their kind."""
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return torch.as_tensor(value, dtype=torch.float64).to(device=device, dtype=dtype)
        if value.dtype == np.bool_:
            return torch.as_tensor(value, device=device)
        return torch.as_tensor(value.astype(np.int64), device=device)
    if isinstance(value, dict):
        return {k: case_to_torch(v, dtype, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(case_to_torch(v, dtype, device) for v in value)
    return value


def _tensors_to_numpy(value):
    """Tensors to NumPy (floats as float64); Python scalars and strings stay as they are."""
    if isinstance(value, torch.Tensor):
        return to_numpy_tree(value)
    if isinstance(value, dict):
        return {k: _tensors_to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_tensors_to_numpy(v) for v in value)
    return value


@dataclass(frozen=True)
class OpEntry:
    """One fast op, its NumPy reference, the inputs to try and how to compare.

    Attributes:
        name: the public name of the op (for reports; lookup goes through objects).
        op: the fast torch function.
        reference: the NumPy reference with the same parameters.
        strategy: zero-argument callable returning a hypothesis strategy of :class:`Case`.
        tolerances: per torch dtype, the :class:`Tolerance` of the comparison.
        compare: ``(actual, expected, tol) -> Comparison``; leafwise closeness by default.
        op_kwargs: extra keyword arguments only the fast op takes, built from
            ``(dtype, device)`` (for ops that create tensors, e.g. ``dtype=``/``device=``).
        prepare_output: maps the fast op's raw output to the reference's output form.
        cuda: whether the op runs on CUDA.
    """

    name: str
    op: Callable[..., Any]
    reference: Callable[..., Any]
    strategy: Callable[[], st.SearchStrategy[Case]]
    tolerances: Mapping[torch.dtype, Tolerance]
    compare: Callable[[Any, Any, Tolerance], Comparison] = compare_trees
    op_kwargs: Callable[[torch.dtype, torch.device | str], dict] | None = None
    prepare_output: Callable[[Any], Any] | None = None
    cuda: bool = True

    @property
    def dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(self.tolerances)

    def reference_inputs(self, case: Case, dtype: torch.dtype) -> Case:
        """The case as the reference sees it: the values the op sees, in float64."""
        args = case_to_torch(case.args, dtype, "cpu")
        kwargs = case_to_torch(case.kwargs, dtype, "cpu")
        return Case(_tensors_to_numpy(args), _tensors_to_numpy(kwargs))

    def run_op(self, case: Case, dtype: torch.dtype, device: torch.device | str):
        args = case_to_torch(case.args, dtype, device)
        kwargs = case_to_torch(case.kwargs, dtype, device)
        if self.op_kwargs is not None:
            kwargs = {**kwargs, **self.op_kwargs(dtype, device)}
        output = self.op(*args, **kwargs)
        return self.prepare_output(output) if self.prepare_output else output

    def run_reference(self, case: Case, dtype: torch.dtype):
        ref_case = self.reference_inputs(case, dtype)
        return self.reference(*ref_case.args, **ref_case.kwargs)

    def check(self, case: Case, dtype: torch.dtype, device: torch.device | str) -> Comparison:
        actual = self.run_op(case, dtype, device)
        expected = self.run_reference(case, dtype)
        return self.compare(actual, expected, self.tolerances[dtype])

    def assert_matches(self, case: Case, dtype: torch.dtype, device: torch.device | str) -> None:
        result = self.check(case, dtype, device)
        if not result.ok:
            raise AssertionError(
                f"{self.name} ({dtype}, {device}) differs from its reference on "
                f"{summarize_case(case)}\n{result.message}"
            )
