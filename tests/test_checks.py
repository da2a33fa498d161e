"""The declarative checks of detops._checks: what each accepts, refuses and says."""

import pytest
import torch

from detops._checks import check_int, check_number, check_positive_number, check_shape


@pytest.mark.parametrize(
    "shape, pattern, accepted",
    [
        ((10, 4), "[N, 4]", True),
        ((10, 5), "[N, 4]", False),
        ((4,), "[N, 4]", False),
        ((2, 3, 4), "[..., 4]", True),
        ((4,), "[..., 4]", True),
        ((), "[..., 4]", False),
        ((3, 5), "[N, 5] or [B, N, 5]", True),
        ((2, 3, 5), "[N, 5] or [B, N, 5]", True),
        ((2, 3, 4), "[N, 5] or [B, N, 5]", False),
        ((), "[]", True),
        ((1,), "[]", False),
    ],
)
def test_check_shape_patterns(shape, pattern, accepted):
    value = torch.zeros(shape)
    if accepted:
        assert check_shape("op", "x", value, pattern) is value
    else:
        dims = ", ".join(str(s) for s in shape)
        with pytest.raises(ValueError, match=rf"^op: x must have shape .*, got \[{dims}\]$"):
            check_shape("op", "x", value, pattern)


def test_check_shape_dtype_kinds_and_non_tensors():
    with pytest.raises(TypeError, match="op: x must have a floating dtype"):
        check_shape("op", "x", torch.zeros(2, 4, dtype=torch.int64), "[N, 4]", dtype="floating")
    with pytest.raises(TypeError, match="op: x must have an integer dtype, got torch.float32"):
        check_shape("op", "x", torch.zeros(2), "[N]", dtype="integer")
    with pytest.raises(TypeError, match="op: x must be a torch.Tensor, got list"):
        check_shape("op", "x", [[0.0] * 4], "[N, 4]")


def test_number_checks_refuse_bools_and_name_the_argument():
    assert check_int("op", "n", 3, minimum=0) == 3
    with pytest.raises(TypeError, match="op: n must be an int >= 0, got bool"):
        check_int("op", "n", True, minimum=0)
    with pytest.raises(ValueError, match="op: n must be an int >= 0, got -1"):
        check_int("op", "n", -1, minimum=0)
    assert check_number("op", "x", 2) == 2.0
    with pytest.raises(TypeError, match="op: x must be a number, got str"):
        check_number("op", "x", "2")
    with pytest.raises(ValueError, match=r"op: s must be finite and > 0, got inf"):
        check_positive_number("op", "s", float("inf"), finite=True)
    assert check_positive_number("op", "s", float("inf")) == float("inf")
