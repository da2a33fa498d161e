"""Input validation shared by the ops.

Every message names the op, the argument, what was expected and what was given, so a
user reading only the exception knows what to fix.

Each check returns its value narrowed to the checked type, so an op states its contract in
a few declarative lines (in the style of kornia's ``KORNIA_CHECK_SHAPE``)::

    boxes = check_shape(OP, "boxes", boxes, "[N, 4]", dtype="floating")
    max_boxes = check_int(OP, "max_boxes", max_boxes, minimum=0)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_dense_strided(value: Tensor) -> bool:
    """The layouts :func:`check_tensor` accepts (``torch.strided``, not nested), for the
    quick argument checks that skip it."""
    return value.layout is torch.strided and not value.is_nested


def check_tensor(op: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout is not torch.strided:  # sparse, mkldnn: no op here takes them
        raise TypeError(
            f"{op}: {name} must be a dense (torch.strided) tensor, got layout {value.layout} "
            "(.to_dense() converts it)"
        )
    if value.is_nested:
        raise TypeError(
            f"{op}: {name} must be a dense tensor, got a nested tensor (pad it, e.g. with "
            ".to_padded_tensor(), or pass its tensors one by one)"
        )
    return value


def check_floating(op: str, name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        raise TypeError(
            f"{op}: {name} must have a floating dtype (float16/bfloat16/float32/float64), "
            f"got {value.dtype}"
        )


def check_integer_dtype(op: str, name: str, value: Tensor) -> None:
    if not _has_integer_dtype(value):
        raise TypeError(f"{op}: {name} must have an integer dtype, got {value.dtype}")


def _has_integer_dtype(value: Tensor) -> bool:
    """An integer dtype: neither floating, complex nor bool."""
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


_ShapePattern = tuple[tuple[bool, int, tuple[tuple[int, int], ...]], ...]
# Parsed patterns by their text. A plain dict, not functools.lru_cache, which torch.compile
# warns about; the patterns are the literals written in the ops, a few dozen at most.
_PARSED_PATTERNS: dict[str, _ShapePattern] = {}


def _parse_shape_pattern(pattern: str) -> _ShapePattern:
    """``"[N, 5] or [..., 4]"`` -> per alternative ``(any_leading, ndim, fixed sizes)``:
    ``((False, 2, ((1, 5),)), (True, 1, ((-1, 4),)))``, with the fixed sizes indexed from
    the end when leading dimensions may be any."""
    alternatives = []
    for part in pattern.split(" or "):
        part = part.strip()
        if not (part.startswith("[") and part.endswith("]")):
            raise ValueError(f"shape pattern {pattern!r}: each alternative must look like [N, 4]")
        inner = part[1:-1].strip()
        dims = [d.strip() for d in inner.split(",")] if inner else []
        any_leading = bool(dims) and dims[0] == "..."
        if any_leading:
            dims = dims[1:]
        ndim = len(dims)
        fixed = tuple(
            (i - ndim if any_leading else i, int(d)) for i, d in enumerate(dims) if d.isdigit()
        )
        alternatives.append((any_leading, ndim, fixed))
    return tuple(alternatives)


def _shape_matches(shape: Sequence[int], pattern: str) -> bool:
    parsed = _PARSED_PATTERNS.get(pattern)
    if parsed is None:
        parsed = _parse_shape_pattern(pattern)
        # (Not while torch.compile traces: it guards on the dict, and a pattern added by
        # the first compiled call made the second one recompile.)
        if not torch.compiler.is_compiling():
            _PARSED_PATTERNS[pattern] = parsed
    for any_leading, ndim, fixed in parsed:
        if (len(shape) >= ndim if any_leading else len(shape) == ndim) and all(
            shape[i] == size for i, size in fixed
        ):
            return True
    return False


def check_shape(
    op: str,
    name: str,
    value: object,
    pattern: str,
    *,
    dtype: Literal["floating", "integer"] | None = None,
) -> Tensor:
    """Require a tensor whose shape matches ``pattern`` and, optionally, a dtype kind.

    ``pattern`` is one or more alternatives joined by ``" or "``, each a bracketed list of
    dimensions: digits are exact sizes, names (``N``, ``B``) match any size, a leading
    ``...`` matches any number of leading dimensions. The pattern is quoted in the message.
    """
    tensor = check_tensor(op, name, value)
    if not _shape_matches(tensor.shape, pattern):
        raise ValueError(f"{op}: {name} must have shape {pattern}, got {shape_str(tensor)}")
    if dtype == "floating":
        check_floating(op, name, tensor)
    elif dtype == "integer":
        check_integer_dtype(op, name, tensor)
    return tensor


def check_int(
    op: str, name: str, value: object, *, minimum: int | None = None, expected: str | None = None
) -> int:
    """A Python ``int`` (``bool`` refused), at least ``minimum`` when given; a
    ``torch.SymInt`` (a traced size, e.g. a feature map's under torch.export with dynamic
    dims) counts as one."""
    if expected is None:
        expected = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be {expected}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be {expected}, got {value}")
    return cast(int, value)  # (a SymInt stands in for an int)


def check_number(
    op: str,
    name: str,
    value: object,
    *,
    expected: str = "a number",
    numpy_scalars: bool = False,
    tensor_scalars: bool = False,
) -> float:
    """A Python ``int`` or ``float`` (``bool`` refused), returned as ``float``; with
    ``numpy_scalars``, any real number (NumPy's integer and float scalars and 0-d arrays
    too); with
    ``tensor_scalars``, also a one-element real tensor (read with ``.item()``: a host
    sync for a CUDA tensor)."""
    if tensor_scalars and isinstance(value, Tensor):
        check_tensor(op, name, value)
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(
                f"{op}: {name} must be {expected}, got a {value.dtype} tensor of shape "
                f"{shape_str(value)} (a real tensor with one element works)"
            )
        if value.device.type == "meta":
            raise ValueError(f"{op}: {name} is on the meta device, which holds no value")
        if value.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{op}: {name} is a tensor that requires grad; its value is read as a number, "
                f"so no gradient would reach it (pass {name}.detach() or a float)"
            )
        return float(value.item())
    if numpy_scalars and isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array's scalar (np.array(0.5)), checked as one
    accepted = numbers.Real if numpy_scalars else (int, float)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, accepted):
        kind = type(value)  # (NumPy's scalars qualified: "got float32" reads like a float)
        shown = qualified_type_name(value) if kind.__module__ == "numpy" else kind.__name__
        raise TypeError(f"{op}: {name} must be {expected}, got {shown}")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(
            f"{op}: {name} must be {expected}, got an int too large for a float"
        ) from None


def is_finite(value: float) -> bool:
    """``math.isfinite(value)`` written as comparisons: a float that torch.compile traces as
    dynamic is a ``torch.SymFloat``, which supports comparisons but not ``math.isfinite``."""
    return -math.inf < value < math.inf


def check_bool(op: str, name: str, value: object) -> bool:
    """A Python or NumPy bool (``numpy.bool_`` as ``bool``); anything else, an int or a
    string included, is a TypeError naming the type (module-qualified where it is not a
    builtin: NumPy 2 calls ``numpy.bool_`` "bool")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{op}: {name} must be a bool, got {qualified_type_name(value)}")


def qualified_type_name(value: object) -> str:
    """The type's name, module-qualified where it is not a builtin (``numpy.float32``,
    ``torch.Tensor``): NumPy 2 names ``numpy.bool_`` "bool" and ``numpy.float64`` "float64"."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    module = "torch" if kind is Tensor else kind.__module__
    return f"{module}.{kind.__name__}"


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


def check_unit_interval(
    op: str, name: str, value: object, *, numpy_scalars: bool = False, tensor_scalars: bool = False
) -> float:
    number = check_number(
        op,
        name,
        value,
        expected="a float in [0, 1]",
        numpy_scalars=numpy_scalars,
        tensor_scalars=tensor_scalars,
    )
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{op}: {name} must lie in [0, 1], got {value!r}")
    return number


def check_positive_number(op: str, name: str, value: object, *, finite: bool = False) -> float:
    number = check_number(op, name, value, expected="a positive number")
    if not number > 0 or (finite and number == float("inf")):
        raise ValueError(
            f"{op}: {name} must be {'finite and ' if finite else ''}> 0, got {value!r}"
        )
    return number


def check_size_pair(op: str, name: str, value: object) -> tuple[int, int]:
    """A ``(height, width)`` pair of positive integers: a tuple, list or ``torch.Size`` of
    Python or NumPy ints or one-element integer tensors, or a 1-D integer tensor or array
    of two (``orig_target_sizes[i]``), as torchvision's box ops take them, or traced
    ``torch.SymInt`` sizes. (Floats, which
    torchvision would clamp to as well, are refused: a size counts pixels.)"""
    pair = value
    if isinstance(value, (Tensor, np.ndarray)) and value.ndim == 1 and _integer_valued(value):
        pair = value.tolist()
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        pair = [_scalar_of(v) for v in value]
    if (
        not isinstance(pair, (tuple, list, torch.Size))
        or len(pair) != 2
        or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer, torch.SymInt)) for v in pair
        )
    ):
        shown = repr(value)
        if isinstance(value, Tensor):
            shown = f"a {value.dtype} tensor of shape {shape_str(value)}"
        raise TypeError(f"{op}: {name} must be a (height, width) pair of ints, got {shown}")
    # (A torch.SymInt, a traced size under torch.export's dynamic dims, stays one: int()
    # would fix it to the example's value.)
    height, width = (v if isinstance(v, torch.SymInt) else int(v) for v in pair)
    if height <= 0 or width <= 0:
        raise ValueError(
            f"{op}: {name} must be a positive (height, width) pair, got {(height, width)!r}"
        )
    return cast(int, height), cast(int, width)


def _scalar_of(value: object) -> object:
    """A 0-d integer tensor's or NumPy integer's value as a Python int; else ``value``."""
    if isinstance(value, (Tensor, np.integer)) and value.ndim == 0 and _integer_valued(value):
        return int(value.item())
    return value


def _integer_valued(value: object) -> bool:
    """An integer (not bool) tensor or NumPy array/scalar; on a device that holds values."""
    if isinstance(value, Tensor):
        return _has_integer_dtype(value) and value.device.type != "meta"
    return isinstance(value, (np.ndarray, np.integer)) and np.issubdtype(value.dtype, np.integer)


def check_level_keys(
    op: str, name: str, value: dict[str, object], expected: dict[str, object], expected_name: str
) -> None:
    if set(value) != set(expected):
        raise ValueError(
            f"{op}: {name} must have the same level names as {expected_name} "
            f"({sorted(expected)}), got {sorted(value)}"
        )
