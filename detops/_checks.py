"""Input validation shared by the ops.

Every message names the op, the argument, what was expected and what was given, so a
user reading only the exception knows what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(op: str, name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        raise TypeError(
            f"{op}: {name} must have a floating dtype (float16/bfloat16/float32/float64), "
            f"got {value.dtype}"
        )


def shape_str(value: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in value.shape) + "]"


def check_last_dim(op: str, name: str, value: Tensor, sizes: Sequence[int], pattern: str) -> None:
    """Require ``value.shape[-1]`` to be one of ``sizes``; ``pattern`` names the expected shape."""
    if value.dim() == 0 or value.shape[-1] not in tuple(sizes):
        raise ValueError(f"{op}: {name} must have shape {pattern}, got {shape_str(value)}")


def check_ndim(op: str, name: str, value: Tensor, ndims: Sequence[int], pattern: str) -> None:
    if value.dim() not in tuple(ndims):
        raise ValueError(f"{op}: {name} must have shape {pattern}, got {shape_str(value)}")


def check_same_device(op: str, **tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def check_no_nan(op: str, name: str, value: Tensor) -> None:
    """Raise on NaN. Syncs with the host on CUDA (one boolean)."""
    if value.is_floating_point() and bool(torch.isnan(value).any()):
        raise ValueError(f"{op}: {name} must not contain NaN, got a tensor with NaN entries")


def check_unit_interval(op: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{op}: {name} must lie in [0, 1], got {value}")


def check_positive_number(op: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a positive number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    return float(value)


def check_size_pair(op: str, name: str, value: object) -> tuple[int, int]:
    """A ``(height, width)`` pair of positive integers."""
    if (
        not isinstance(value, (tuple, list, torch.Size))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise TypeError(f"{op}: {name} must be a (height, width) pair of ints, got {value!r}")
    if value[0] <= 0 or value[1] <= 0:
        raise ValueError(f"{op}: {name} must be a positive (height, width) pair, got {value!r}")
    return int(value[0]), int(value[1])


def check_level_keys(op: str, name: str, value: dict, expected: dict, expected_name: str) -> None:
    if set(value) != set(expected):
        raise ValueError(
            f"{op}: {name} must have the same level names as {expected_name} "
            f"({sorted(expected)}), got {sorted(value)}"
        )
