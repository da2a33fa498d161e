"""Meta-tests: every compare helper must fail on a wrong answer."""

import numpy as np
import pytest
import torch

from detops.testing import EXACT, Tolerance, assert_trees_close, compare_trees
from detops.testing.compare import compare_index_sets

TOL = Tolerance(1e-6, 1e-6)


def test_equal_trees_pass():
    tree = {"a": torch.tensor([1.0, 2.0]), "b": (torch.tensor([3]), np.array([4.0]))}
    assert compare_trees(tree, tree, TOL).ok


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        (torch.tensor([1.0, 2.0]), np.array([1.0, 2.1])),  # value
        (torch.tensor([1.0, 2.0]), np.array([1.0, 2.0, 3.0])),  # shape
        (torch.tensor([float("nan")]), np.array([0.0])),  # NaN where a number is expected
        (torch.tensor([0.0]), np.array([np.nan])),  # a number where NaN is expected
        (torch.tensor([float("inf")]), np.array([-np.inf])),  # wrong infinity
        (torch.tensor([3]), np.array([4])),  # integers are exact
        ({"a": torch.tensor([1.0])}, {"b": np.array([1.0])}),  # keys
        ((torch.tensor([1.0]),), (np.array([1.0]), np.array([2.0]))),  # lengths
        (torch.tensor([1.0]), {"a": np.array([1.0])}),  # structure
        ({"a": torch.tensor([1.0]), "b": torch.tensor([5.0])}, {"a": [1.0], "b": [6.0]}),
    ],
)
def test_wrong_answers_fail(actual, expected):
    result = compare_trees(actual, expected, TOL)
    assert not result.ok
    assert result.message
    with pytest.raises(AssertionError):
        assert_trees_close(actual, expected, TOL, context="meta-test")


def test_tolerance_is_applied_relative_and_absolute():
    assert compare_trees(torch.tensor([1.0 + 5e-7]), np.array([1.0]), TOL).ok
    assert not compare_trees(torch.tensor([1.0 + 5e-6]), np.array([1.0]), TOL).ok
    assert not compare_trees(
        torch.tensor([1.0 + 1e-12], dtype=torch.float64), np.array([1.0]), EXACT
    ).ok


def test_error_figures_are_reported():
    result = compare_trees(torch.tensor([1.0, 2.5]), np.array([1.0, 2.0]), TOL)
    assert result.max_abs_error == pytest.approx(0.5)
    assert result.max_rel_error == pytest.approx(0.25)
    assert "expected" in result.message and "got" in result.message


def test_index_sets():
    options = [np.array([0, 2, 1]), np.array([2, 0, 1])]
    assert compare_index_sets(torch.tensor([2, 0, 1]), options).ok
    assert not compare_index_sets(torch.tensor([1, 0, 2]), options).ok
    assert not compare_index_sets(torch.tensor([0, 2]), options).ok
