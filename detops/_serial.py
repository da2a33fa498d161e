"""Index helpers that open no CPU parallel region, for ops made of many small tensor ops.

``torch.repeat_interleave``, ``torch.searchsorted`` and ``torch.take`` split even a few
hundred elements across torch's intra-op threads (their parallel grain is 1 to 200
elements). On a machine where another process competes for the cores, each such region
can wait milliseconds for a thread to be scheduled (measured on 2 cores with one busy
process: ``searchsorted`` on 4.7k elements 0.10 -> 2.1 ms, ``repeat_interleave`` 12 µs ->
0.65 ms). detops never changes torch's thread settings, so its small ops stay fast by
using kernels that run serially below ATen's 32768-element grain: sort, cumsum, bincount,
``index_add_`` and ``index_select``. On CUDA the native ops are used.

Above the grain, or where torch's kernel forks at a few thousand elements (advanced
indexing, ``floor``, ``isnan``, the fill of ``bincount``'s and ``zeros``' output, ``max``),
the helpers below use NumPy on CPU (which forks no thread) or cut the work into slices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SERIAL_ELEMENTS",
    "bincount",
    "has_nan",
    "max_int",
    "numpy_view",
    "owner_index",
    "plain_eager_mode",
    "repeat_interleave",
    "scale_in_place",
    "searchsorted",
    "take",
    "to_float32",
    "where_true",
    "zeros",
]

# Elements an elementwise op may touch and still run serially (ATen's grain is 32768;
# reductions and VML ops have the same or a larger grain, exp/log/sqrt excepted: 2048).
SERIAL_ELEMENTS = 32768 - 64


def owner_index(counts: Tensor, total: int | None = None) -> Tensor:
    """``repeat_interleave(arange(len(counts)), counts)``: the group of every position.

    Marks where each group starts (empty groups stack up at the same place) and a
    cumulative sum numbers the positions by the last group started. ``total`` is
    ``counts.sum()`` when the caller knows it; otherwise it is read back (one sync).
    """
    if counts.device.type == "cuda":
        groups = torch.arange(counts.numel(), device=counts.device)
        return groups.repeat_interleave(counts, output_size=total)
    ends = torch.cumsum(counts, 0)
    if total is None:
        total = int(ends[-1]) if counts.numel() else 0
    starts = (ends - counts).clamp(max=total)
    marks = torch.zeros(total + 1, dtype=torch.int64, device=counts.device)
    marks.index_add_(0, starts, torch.ones_like(starts, dtype=torch.int64))
    return torch.cumsum(marks[:total], 0) - 1


def repeat_interleave(values: Tensor, counts: Tensor, total: int | None = None) -> Tensor:
    """``values.repeat_interleave(counts, output_size=total)`` for 1-D ``values``."""
    return values.index_select(0, owner_index(counts, total))


def searchsorted(sorted_sequence: Tensor, values: Tensor, *, right: bool = False) -> Tensor:
    """``torch.searchsorted(sorted_sequence, values, right=right)`` along the last dim.

    For each value, the number of sequence elements ``< value`` (``<= value`` with
    ``right``), found by one stable sort of both together: on ties the sequence elements
    go first with ``right`` and last without, so the count of sequence elements in front
    of a value is the answer. Leading dims are batch dims, as in torch.searchsorted.
    """
    if sorted_sequence.device.type == "cuda":
        return torch.searchsorted(sorted_sequence, values, right=right)
    dtype = torch.promote_types(sorted_sequence.dtype, values.dtype)
    n, m = sorted_sequence.shape[-1], values.shape[-1]
    if n + m > SERIAL_ELEMENTS and n and m and dtype in _SEARCH_DTYPES:
        # Above the grain the sort below forks: NumPy's binary search, row by row.
        side: Literal["left", "right"] = "right" if right else "left"
        rows = zip(
            sorted_sequence.to(dtype).resolve_neg().reshape(-1, n).numpy(),
            values.to(dtype).resolve_neg().reshape(-1, m).numpy(),
            strict=True,
        )
        found = [np.searchsorted(row, row_values, side=side) for row, row_values in rows]
        return torch.from_numpy(np.stack(found).astype(np.int64)).view(values.shape)
    sequence, values = sorted_sequence.to(dtype), values.to(dtype)
    parts = (sequence, values) if right else (values, sequence)
    order = torch.sort(torch.cat(parts, -1), dim=-1, stable=True).indices
    from_sequence = order < n if right else order >= m
    sequence_before = torch.cumsum(from_sequence, -1) - from_sequence.to(torch.int64)
    position = torch.empty_like(order)
    position.scatter_(-1, order, torch.arange(n + m, device=order.device).expand_as(order))
    value_position = position[..., n:] if right else position[..., :m]
    return sequence_before.gather(-1, value_position)


def take(source: Tensor, index: Tensor) -> Tensor:
    """``torch.take(source, index)``: elements of the flattened ``source``, shaped as
    ``index``."""
    return source.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)
_SEARCH_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64)


def to_float32(values: Tensor) -> Tensor:
    """``values.detach().to(torch.float32)`` for float16/bfloat16 values (exact; a NaN
    stays a NaN, its payload may differ); on CPU above the grain through NumPy, since
    torch's conversion forks its threads there. bfloat16 is the top half of a float32:
    its bits shifted left by 16 are the float32's bits."""
    values = values.detach()
    if not values.is_cpu or values.numel() <= SERIAL_ELEMENTS:
        return values.to(torch.float32)
    plain = values.resolve_neg()
    if plain.dtype == torch.bfloat16:
        bits = plain.view(torch.int16).numpy().astype(np.int32)
        np.left_shift(bits, 16, out=bits)
        return torch.from_numpy(bits.view(np.float32))
    return torch.from_numpy(plain.numpy().astype(np.float32))


def scale_in_place(values: Tensor, factor: Tensor) -> None:
    """``values.mul_(factor)`` for a 0-d ``factor`` or one of ``values``' shape (any
    strides, e.g. the expanded gradient of a ``sum``); on CPU in slices under the grain,
    so that scaling a large gradient forks no thread, and not at all for a 0-d factor of
    exactly 1 (``loss.backward()``'s): ``v * 1 == v`` bit for bit, NaN and -0.0 included.
    Each product is the one a single ``mul_`` gives. Other factors (broadcast shapes, other
    devices) take one ``mul_``."""
    if values.device.type != "cpu" or factor.device.type != "cpu" or not values.is_contiguous():
        values.mul_(factor)
        return
    if factor.dim() == 0:
        if not factor.is_complex() and factor.item() == 1:
            return
        for part in values.view(-1).split(SERIAL_ELEMENTS):
            part.mul_(factor)
        return
    if factor.shape != values.shape:
        values.mul_(factor)
        return
    width = values.shape[-1]
    if values.dim() > 1 and 0 < width <= SERIAL_ELEMENTS:
        # rows of the last dim (an expanded factor flattens to a view, no copy)
        rows, factor_rows = values.view(-1, width), factor.flatten(0, -2)
        step = SERIAL_ELEMENTS // width
    else:
        rows, factor_rows, step = values.view(-1), factor.reshape(-1), SERIAL_ELEMENTS
    for start in range(0, rows.shape[0], step):
        rows[start : start + step].mul_(factor_rows[start : start + step])


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.zeros``; on CPU from NumPy's zeroed allocation (torch's fill of a large
    tensor forks threads)."""
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.zeros(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))
    return torch.zeros(shape, dtype=dtype, device=device)


def has_nan(values: Tensor) -> bool:
    """Whether ``values`` holds a NaN; NumPy on CPU (serial: torch's isnan and any fork
    threads from a few thousand elements on)."""
    if values.device.type == "cpu" and values.dtype in _NUMPY_DTYPES:
        return bool(np.isnan(values.detach().resolve_neg().numpy()).any())
    if values.device.type == "cpu" and values.dtype == torch.bfloat16:
        # NumPy has no bfloat16: a NaN's bits, sign aside, are above those of inf (0x7F80).
        bits = values.detach().resolve_neg().view(torch.int16).numpy().view(np.uint16)
        return bool(((bits & 0x7FFF) > 0x7F80).any())
    return bool(torch.isnan(values).any())


def bincount(values: Tensor, length: int) -> Tensor:
    """``torch.bincount(values, minlength=length)``; NumPy's on CPU, serial (torch's fills
    its output with forked threads above ~32k bins)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.bincount(values.numpy(), minlength=length))
    return torch.bincount(values, minlength=length)


def max_int(values: Tensor) -> int:
    """``int(values.max())``; NumPy's on CPU (torch's max forks threads above ~32k)."""
    return int(values.numpy().max() if values.device.type == "cpu" else values.max())


def where_true(mask: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """``v[mask]`` for each of ``values`` (1-D), by index_select: advanced indexing forks
    torch's threads from a few thousand elements on, index_select does not."""
    index = mask.nonzero().squeeze(1)
    return tuple(v.index_select(0, index) for v in values)


def numpy_view(values: Tensor) -> np.ndarray:
    """``values`` (CPU) as a NumPy array sharing its memory. ``.numpy()`` refuses tensors
    that require grad or carry a lazy negation; only those pay the torch calls
    (``detach``, ``resolve_neg``) that undo it, about 1 µs each."""
    try:
        return values.numpy()
    except RuntimeError:
        return values.detach().resolve_neg().numpy()


# Private APIs, read once; where a torch lacks one, its check is skipped.
_functorch_transform: Callable[[], object] = getattr(
    getattr(torch._C, "_functorch", None), "peek_interpreter_stack", lambda: None
)
try:
    from torch.autograd import forward_ad as _forward_ad
except ImportError:  # pragma: no cover
    _forward_ad = None  # type: ignore[assignment]


def under_function_transform() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``hessian``, ...)
    or a forward-AD dual level is active: then an op with a hand-written autograd
    Function computes through differentiable torch ops instead."""
    return _functorch_transform() is not None or (
        _forward_ad is not None and _forward_ad._current_level >= 0
    )


def plain_eager_mode() -> bool:
    """Whether torch runs plainly eager: no ``torch.func`` transform (``vmap``, ``grad``,
    ``jvp``, ``jacfwd``, ...), no forward-AD dual level, no ``torch.jit`` trace and no
    ``torch.compile`` watches the torch ops. Only then may an op compute through NumPy or
    read values back to choose a path: the transforms' wrapped tensors have no memory to
    share, a dual tensor's tangent would be dropped, and a trace would record the result
    as a constant. About 0.5 µs."""
    return (
        _functorch_transform() is None
        and (_forward_ad is None or _forward_ad._current_level < 0)
        and not torch._C._get_tracing_state()
        and not torch.compiler.is_compiling()
    )
