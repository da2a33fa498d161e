"""NumPy kernels of :mod:`detops.deltas` for small CPU inputs (see ``_NUMPY_ON_CPU`` there).

At the sizes of a training batch's targets (tens of thousands of elements) the torch ops
on strided columns and bool masks cost ~10-25 us each; these kernels run each step as one
NumPy call over a long axis instead: rows of four coordinates are copied as one 16- or
32-byte element, elementwise ops run on whole contiguous arrays or on column views, and
rows of -1 are written as one wide element. They do the same IEEE operations, in the
same order, as the torch path (see :mod:`detops.deltas`): deltas are bit-identical (but
for which NaN ``NaN - NaN`` gives), centerness too but for NumPy's correctly rounded
square root (torch's may be 1 ulp away).

Inputs are NumPy arrays that share memory with the caller's tensors: they are only read.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["apply_numpy", "centerness_numpy", "deltas_numpy"]

# A row of four coordinates (or deltas) as one element, by float dtype.
_ROW = {
    np.dtype(np.float32): np.dtype((np.void, 16)),
    np.dtype(np.float64): np.dtype((np.void, 32)),
}
_PAIR = {
    np.dtype(np.float32): np.dtype((np.void, 8)),
    np.dtype(np.float64): np.dtype((np.void, 16)),
}


# -1s filling a 64-bit word (two float32, one float64); 2 or 4 True bools as one word.
_MINUS_ONE_WORD = {
    np.dtype(np.float32): np.full(2, -1, dtype=np.float32).view(np.uint64)[0],
    np.dtype(np.float64): np.full(1, -1, dtype=np.float64).view(np.uint64)[0],
}
_ALL_TRUE = {2: np.uint16(0x0101), 4: np.uint32(0x01010101)}


@functools.lru_cache(maxsize=16)
def _minus_one_row(dtype: np.dtype) -> np.void:
    """Four -1s as one row element (float equality with -1 is bit equality: -1 has one
    representation)."""
    return np.full(4, -1, dtype=dtype).view(_ROW[dtype])[0]


@functools.lru_cache(maxsize=64)
def signed_stride_pattern(stride: float, size: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """``[-s, -s, s, s] * size`` flat (read-only), or its reciprocals where that is exact,
    and which of the two it is.

    For a power-of-two stride whose reciprocal is a normal number of ``dtype``,
    ``x * (1/s)`` is the same single rounding of the same real number as ``x / s`` (also
    for NaN, infinities, signed zeros and subnormal results), and a multiplication is
    twice as fast as a division.
    """
    value = dtype.type(stride)
    mantissa = np.frexp(value)[0]
    info = np.finfo(dtype)
    if not (bool(mantissa == 0.5) and info.tiny <= 1 / float(value) <= info.max):
        return _number_strides(stride, size, dtype), False
    pattern = np.tile(np.array([-1, -1, 1, 1], dtype=dtype) / value, size)
    pattern.flags.writeable = False
    return pattern, True


@functools.lru_cache(maxsize=64)
def _number_strides(stride: float, size: int, dtype: np.dtype) -> np.ndarray:
    """``[-s, -s, s, s] * size`` flat (read-only), ``s`` rounded to ``dtype``."""
    pattern = _sign_pattern(size, dtype) * dtype.type(stride)
    pattern.flags.writeable = False
    return pattern


def _signed_strides(stride: float | np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    """``[-s, -s, s, s]`` per location, flat ``[4 * size]``: of one number, or of the
    ``[size]`` strides of an array."""
    if isinstance(stride, np.ndarray):
        return np.repeat(stride, 4) * _sign_pattern(size, dtype)
    return _number_strides(stride, size, dtype)


@functools.lru_cache(maxsize=16)
def _sign_pattern(size: int, dtype: np.dtype) -> np.ndarray:
    pattern = np.tile(np.array([-1, -1, 1, 1], dtype=dtype), size)
    pattern.flags.writeable = False
    return pattern


def _rows_as_elements(array: np.ndarray) -> np.ndarray | None:
    """``[..., 4]`` (the first four columns of ``array``) as ``[...]`` row elements, a view;
    None when a row's four values are not adjacent in memory."""
    if array.strides[-1] != array.itemsize:
        return None
    return array[..., :4].view(_ROW[array.dtype])[..., 0]


def _centers(locations: np.ndarray, size: int) -> np.ndarray:
    """``(xc, yc, xc, yc)`` per location, as flat rows ``[..., 4 * L]``."""
    if locations.strides[-1] == locations.itemsize:
        pairs = locations.view(_PAIR[locations.dtype])[..., 0]
        return np.repeat(pairs, 2, axis=-1).view(locations.dtype)
    centers = np.concatenate((locations, locations), axis=-1)
    return centers.reshape(centers.shape[:-2] + (4 * size,))


def deltas_numpy(
    locations: np.ndarray, gt_boxes: np.ndarray, stride: float | np.ndarray
) -> np.ndarray:
    """:func:`detops.fcos_get_deltas_from_locations` for arrays of one float dtype.

    ``locations [L, 2] or [..., L, 2]`` (batch dims those of ``gt_boxes``), ``gt_boxes
    [..., L, 4 or 5]`` with ``L > 0`` and at least one row, ``stride`` a positive finite
    number or a ``[L]`` array of the same dtype. Returns a new contiguous ``[..., L, 4]``.
    """
    dtype = gt_boxes.dtype
    lead = gt_boxes.shape[:-1]
    size = lead[-1]
    out = np.empty(lead + (4,), dtype=dtype)
    # The coordinates, one row element at a time (a 4-wide float copy is ~10x slower).
    rows = _rows_as_elements(gt_boxes)
    if rows is None:
        np.copyto(out, gt_boxes[..., :4])
    else:
        np.copyto(out.view(_ROW[dtype])[..., 0], rows)
    centers = _centers(locations, size)
    flat = out.reshape(lead[:-1] + (4 * size,))
    if isinstance(stride, np.ndarray):  # [-s, -s, s, s] per location
        pattern, reciprocal = _signed_strides(stride, size, dtype), False
    else:
        pattern, reciprocal = signed_stride_pattern(stride, size, dtype)
    # (x1 - xc) / -s, as the torch path: one subtraction and one division (or the same
    # rounding as a multiplication by an exact reciprocal). Infinities may give NaN, a
    # stride tensor may hold zeros.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        np.subtract(flat, centers, out=flat)
        if reciprocal:
            np.multiply(flat, pattern, out=flat)
        else:
            np.divide(flat, pattern, out=flat)
    # Background rows, written as one element each.
    np.putmask(out.view(_ROW[dtype])[..., 0], _background(gt_boxes), _minus_one_row(dtype))
    return out


def apply_numpy(
    deltas: np.ndarray, locations: np.ndarray, stride: float | np.ndarray
) -> np.ndarray:
    """:func:`detops.fcos_apply_deltas_to_locations` for arrays of one float dtype:
    ``max(d, 0) * [-s, -s, s, s] + (xc, yc, xc, yc)``, the torch path's three operations
    in its order (``xc + (-s) * l``, which equals ``xc - s * l``), bit for bit where no
    location coordinate is 0.

    ``deltas [..., L, 4]`` with at least one row, ``locations [L, 2] or [..., L, 2]``
    (batch dims those of ``deltas``), ``stride`` a positive finite number or a ``[L]``
    array of the dtype. Returns a new contiguous ``[..., L, 4]``. (``np.maximum`` turns a
    delta of -0.0 into +0.0 where torch's clamp keeps -0.0; the products then differ only
    in the sign of a zero, which adding a non-zero coordinate erases.)
    """
    dtype = deltas.dtype
    size = deltas.shape[-2]
    flat_shape = deltas.shape[:-2] + (4 * size,)
    out = np.empty(flat_shape, dtype=dtype)
    # (against an array of zeros: twice as fast as against a scalar 0 in NumPy 2.4)
    np.maximum(deltas.reshape(flat_shape), _zeros(4 * size, dtype), out=out)  # NaN stays
    with np.errstate(over="ignore", invalid="ignore"):  # inf * 0 (a zero stride): NaN
        np.multiply(out, _signed_strides(stride, size, dtype), out=out)
        np.add(out, _centers(locations, size), out=out)
    return out.reshape(deltas.shape)


@functools.lru_cache(maxsize=16)
def _zeros(size: int, dtype: np.dtype) -> np.ndarray:
    zeros = np.zeros(size, dtype=dtype)
    zeros.flags.writeable = False
    return zeros


def _background(gt_boxes: np.ndarray) -> np.ndarray:
    """``[...]``: with a class column, whether the class is -1; without, whether the four
    coordinates are all -1. A float equals -1 exactly when its bits are those of -1 (it
    has one representation), so rows of four -1s are compared as 64-bit words."""
    dtype = gt_boxes.dtype
    if gt_boxes.shape[-1] == 5:  # a strided compare is ~3x slower than copy + compare
        return np.ascontiguousarray(gt_boxes[..., 4]) == dtype.type(-1)
    if gt_boxes.strides[-1] != gt_boxes.itemsize:
        return np.all(gt_boxes == dtype.type(-1), axis=-1)
    words = gt_boxes.view(np.uint64)  # [..., 2] (float32) or [..., 4] (float64)
    equal = np.empty(words.shape, dtype=np.bool_)  # C-contiguous, for the view below
    np.equal(words, _MINUS_ONE_WORD[dtype], out=equal)
    every = _ALL_TRUE[words.shape[-1]]  # the row's bools as one integer
    return equal.view(every.dtype)[..., 0] == every


def centerness_numpy(deltas: np.ndarray) -> np.ndarray:
    """:func:`detops.fcos_make_centerness_targets` of a ``[..., L, 4]`` float array with
    at least one row: the torch path's operations; the result is the torch path's bit for
    bit but for the square root (1 ulp apart at most).

    The deltas are first copied to ``[4, rows]`` (one transposing copy), so that each step
    is one call over long contiguous rows, both axes at once: ``(l, t)`` against ``(r, b)``.
    """
    rows = deltas.reshape(-1, 4)
    columns = np.empty((4, rows.shape[0]), dtype=deltas.dtype)
    np.copyto(columns.T, rows)
    near = np.minimum(columns[:2], columns[2:])  # (near x, near y)
    far = np.maximum(columns[:2], columns[2:])
    smallest = np.minimum(near[0], near[1])
    # 0 / 0 (a zero far side), square roots of negative ratios and products of ratios
    # above 1 (mixed signs) give NaN or inf in rows overwritten below. NumPy's square
    # root is correctly rounded; torch's (MKL's) is not, 1 ulp away on ~0.6% of inputs.
    # Calling torch's here would make the paths bit-identical but costs ~45 us in the A4
    # target flow at p3 (each torch call after matching is slow, and above 2048 elements
    # it forks).
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        np.divide(near, far, out=near)
        centerness = np.multiply(near[0], near[1])
        np.sqrt(centerness, out=centerness)
    np.copyto(centerness, 0, where=smallest == 0)  # a zero near side (or far side)
    np.copyto(centerness, -1, where=smallest < 0)
    return centerness.reshape(deltas.shape[:-1])
