"""FCOS box encoding: LTRB deltas between a location and its box, and centerness."""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import Tensor

from ._cache import cached_constant
from ._checks import (
    check_number,
    check_same_device,
    check_shape,
    check_tensor,
    is_dense_strided,
    is_finite,
    shape_str,
)
from ._deltas_numpy import apply_numpy, centerness_numpy, deltas_numpy
from ._serial import plain_eager_mode

__all__ = [
    "fcos_get_deltas_from_locations",
    "fcos_apply_deltas_to_locations",
    "fcos_make_centerness_targets",
]


# The NumPy path (detops._deltas_numpy): CPU tensors of one dtype, float32 or float64,
# none requiring grad while grad is enabled, not under torch.compile, and at most this
# many output elements. The torch ops run on strided columns and bool masks at ~10-25 us
# each, plus ~14 us of argument checks per call; NumPy runs each step as one call over a
# long axis. Tests switch _NUMPY_ON_CPU off to run the torch path on CPU.
_NUMPY_ON_CPU = True
# The cutoffs are where NumPy (one thread) stops beating torch (two threads above 32768
# elements) on this 2-core machine, otherwise idle: interleaved medians in us, NumPy /
# torch, float32, 16 images of L matched rows, stride 8. Deltas: L = 784 (A4 p3) 60 / 95,
# 2000: 111 / 204, 3000: 186 / 217 (and 203 / 220), 3500: 238 / 226, 4200 (COCO p4): 261 /
# 243, 6000: 378 / 399 (and 338 / 336). Centerness: L = 784: 56 / 132, 2000: 118 / 272,
# 3000: 227 / 228 (and 208 / 208), 3500: 251 / 242, 4200: 274 / 271, 6000: 431 / 433.
# With another process busy on a core, a torch fork can wait milliseconds (A4 p3 deltas:
# 12 ms), and large sizes tie.
_NUMPY_MAX_DELTAS = 16 * 3072 * 4  # output elements
_NUMPY_MAX_CENTERNESS = 16 * 3072  # output elements (rows)
_NUMPY_MAX_APPLY = 16 * 3072 * 4  # output elements
# (Decoding, at A4 size, 16 x 1029 rows, float32, stride per location, in the bench,
# idle, 6 processes each: NumPy 46.7-50.1 us, torch 57.5-63.0 us; in some processes
# torch's second thread shares the first one's core and the torch path takes 124-137 us,
# and with another process busy 82 us to 21.5 ms, the NumPy path 43-47 us. At 16 x 4200
# rows the two tie.)
_NUMPY_DTYPES = (torch.float32, torch.float64)
# Number strides the NumPy path takes: normal float32 numbers, with normal reciprocals.
_NUMPY_STRIDES = (2.0**-100, 2.0**100)


def _numpy_takes(*tensors: Tensor) -> bool:
    """Whether the tensors may go to the NumPy kernels (shapes are the caller's to check):
    exact ``torch.Tensor`` s, on CPU, of the first one's dtype, float32 or float64, none
    requiring grad while grad is enabled (autograd goes through the torch path)."""
    if not _NUMPY_ON_CPU or not plain_eager_mode():
        return False
    dtype = tensors[0].dtype
    if dtype not in _NUMPY_DTYPES:
        return False
    grad = False
    for t in tensors:
        if type(t) is not Tensor or t.dtype != dtype or not t.is_cpu or not is_dense_strided(t):
            return False
        grad = grad or t.requires_grad
    return not (grad and torch.is_grad_enabled())


def _as_numpy(t: Tensor) -> np.ndarray:
    """The tensor's memory as an array (the kernels only read it)."""
    return (t.detach() if t.requires_grad else t).numpy()


def _numpy_operands(
    rows: object, locations: object, stride: object, widths: tuple[int, ...], max_elements: int
) -> tuple[np.ndarray, np.ndarray, float | np.ndarray] | None:
    """``rows [..., L, width]`` and ``locations [L, 2] or [..., L, 2]`` as arrays and the
    stride as a float or an array, where the NumPy path takes them (``width`` in
    ``widths``, at most ``max_elements`` output elements, see ``_numpy_takes``); else
    None. It takes only valid arguments: the torch path raises every error."""
    if type(rows) is not Tensor or type(locations) is not Tensor:
        return None
    if not (is_dense_strided(rows) and is_dense_strided(locations)):  # (shapes next)
        return None
    shape, loc_shape = rows.shape, locations.shape
    if (
        len(shape) < 2
        or shape[-1] not in widths
        or len(loc_shape) < 2
        or loc_shape[-1] != 2
        or loc_shape[-2] != shape[-2]
        or (len(loc_shape) > 2 and loc_shape[:-2] != shape[:-2])
    ):
        return None
    elements = rows.numel() // shape[-1] * 4
    if elements == 0 or elements > max_elements:
        return None
    step: float | np.ndarray
    if type(stride) is int or type(stride) is float:
        if not _NUMPY_STRIDES[0] <= stride <= _NUMPY_STRIDES[1]:
            return None
        if not _numpy_takes(rows, locations):
            return None
        step = float(stride)
    elif type(stride) is Tensor:
        if stride.shape != (shape[-2],) or not _numpy_takes(rows, locations, stride):
            return None
        step = _as_numpy(stride)
    else:
        return None
    try:
        return _as_numpy(rows), _as_numpy(locations), step
    except RuntimeError:  # e.g. a tensor with its negative bit set
        return None


def _deltas_on_numpy(locations: object, gt_boxes: object, stride: object) -> Tensor | None:
    """The NumPy path of :func:`fcos_get_deltas_from_locations`, or None where it does not
    apply."""
    operands = _numpy_operands(gt_boxes, locations, stride, (4, 5), _NUMPY_MAX_DELTAS)
    if operands is None:
        return None
    boxes, centers, step = operands
    return torch.from_numpy(deltas_numpy(centers, boxes, step))


def _apply_on_numpy(deltas: object, locations: object, stride: object) -> Tensor | None:
    """The NumPy path of :func:`fcos_apply_deltas_to_locations`, or None where it does not
    apply, including where a location coordinate is 0 (see
    :func:`detops._deltas_numpy.apply_numpy`)."""
    operands = _numpy_operands(deltas, locations, stride, (4,), _NUMPY_MAX_APPLY)
    if operands is None or not operands[1].all():  # (pixel centres are never 0)
        return None
    return torch.from_numpy(apply_numpy(*operands))


def _centerness_on_numpy(deltas: object) -> Tensor | None:
    """The NumPy path of :func:`fcos_make_centerness_targets`, or None."""
    if type(deltas) is not Tensor or not is_dense_strided(deltas):
        return None
    shape = deltas.shape
    if len(shape) < 2 or shape[-1] != 4:
        return None
    elements = deltas.numel() // 4
    if elements == 0 or elements > _NUMPY_MAX_CENTERNESS or not _numpy_takes(deltas):
        return None
    try:
        array = _as_numpy(deltas)
    except RuntimeError:
        return None
    return torch.from_numpy(centerness_numpy(array))


def _check_locations(op: str, locations: object, other: Tensor, other_name: str) -> Tensor:
    """``locations`` is ``[L, 2]`` or ``[..., L, 2]`` with the leading dims of ``other``."""
    locations = check_shape(op, "locations", locations, "[L, 2] or [..., L, 2]", dtype="floating")
    if locations.shape[-2] != other.shape[-2]:
        raise ValueError(
            f"{op}: locations and {other_name} must have the same number of locations L, got "
            f"locations {shape_str(locations)} and {other_name} {shape_str(other)}"
        )
    if locations.dim() > 2 and locations.shape[:-2] != other.shape[:-2]:
        raise ValueError(
            f"{op}: locations must be [L, 2] or share the batch dims of {other_name}, got "
            f"locations {shape_str(locations)} and {other_name} {shape_str(other)}"
        )
    check_same_device(op, locations=locations, **{other_name: other})
    return locations


def _signed_stride(op: str, stride: object, size: int, like: Tensor, dtype: torch.dtype) -> Tensor:
    """``[-s, -s, s, s]`` for every location, as a contiguous ``[L, 4]`` (so that the
    elementwise ops with ``[..., L, 4]`` operands run over one flat dimension)."""
    if isinstance(stride, Tensor):
        check_tensor(op, "stride", stride)
        if stride.dim() != 1 or stride.shape[0] != size:
            raise ValueError(
                f"{op}: stride must be a number or a Tensor[L] with L = {size}, got "
                f"Tensor{shape_str(stride)}"
            )
        check_same_device(op, stride=stride, locations=like)
        if stride.dtype == torch.bool or stride.is_complex():
            raise TypeError(
                f"{op}: stride must be a real (floating or integer) Tensor[L], got {stride.dtype}"
            )
        return stride.unsqueeze(-1) * _sign(dtype, like.device)
    stride = check_number(
        op, "stride", stride, expected="a positive number or a Tensor[L]", numpy_scalars=True
    )
    if not (stride > 0 and is_finite(stride)):
        raise ValueError(f"{op}: stride must be a positive finite number, got {stride!r}")
    finfo = torch.finfo(dtype)
    if not finfo.tiny <= stride <= finfo.max:  # it would round to 0 or inf
        raise ValueError(
            f"{op}: stride must be a normal {dtype} number (between {finfo.tiny:g} and "
            f"{finfo.max:g}), got {stride!r}"
        )
    return _signed_stride_rows(stride, size, dtype, like.device)


@cached_constant(maxsize=64)
def _signed_stride_rows(
    stride: float, size: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``[-s, -s, s, s]`` repeated ``size`` times (never modified in place)."""
    return _sign(dtype, device).mul(stride).repeat(size, 1)


@cached_constant(maxsize=32)
def _sign(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[-1, -1, 1, 1]`` (never modified in place)."""
    return torch.tensor([-1, -1, 1, 1], dtype=dtype, device=device)


def _result_dtype(first: Tensor, *others: object) -> torch.dtype:
    """The promotion of the floating dtypes among the inputs (``first`` is floating)."""
    dtype = first.dtype
    for t in others:
        if isinstance(t, Tensor) and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# A row of four -1s seen as one wider element: (view dtype, value) per row dtype.
_HALF = struct.unpack("<d", struct.pack("<ff", -1.0, -1.0))[0]
_MINUS_ONE_ROWS = {
    torch.float32: (torch.complex128, complex(_HALF, _HALF)),  # 16 bytes
    torch.float16: (torch.int64, struct.unpack("<q", struct.pack("<4e", *[-1.0] * 4))[0]),
    torch.bfloat16: (torch.int64, struct.unpack("<q", struct.pack("<4H", *[0xBF80] * 4))[0]),
}


def _wide_rows(rows: Tensor) -> tuple[Tensor, complex | int] | None:
    """Contiguous ``[..., 4]`` rows viewed as one element per row, with the value of a row
    of four -1s in that view; None when no dtype is as wide as a row (float64), or the
    rows are empty or not contiguous."""
    wide = _MINUS_ONE_ROWS.get(rows.dtype)
    if wide is None or rows.numel() == 0 or not rows.is_contiguous():
        return None
    return rows.view(wide[0]), wide[1]


def fcos_get_deltas_from_locations(
    locations: Tensor, gt_boxes: Tensor, stride: int | float | Tensor
) -> Tensor:
    """Encode each location's box as FCOS LTRB deltas in units of the stride.

    ``(l, t, r, b) = (xc - x1, yc - y1, x2 - xc, y2 - yc) / stride``. A location inside its
    box has four positive deltas; one outside has at least one negative delta (kept as is).
    A location exactly on the left or top edge gets ``l`` or ``t`` equal to ``-0.0`` (the
    op divides ``x1 - xc`` by ``-stride``); it compares equal to 0 and decodes exactly.

    Args:
        locations (Tensor[L, 2] or Tensor[..., L, 2]): ``(xc, yc)`` in absolute pixels;
            ``[L, 2]`` is shared by every leading index of ``gt_boxes``.
        gt_boxes (Tensor[..., L, 4] or Tensor[..., L, 5]): the box of every location, XYXY
            absolute pixels, e.g. one level of :func:`detops.fcos_match_locations_to_gt`.
            Background rows follow the README's padding rule: with a class column, a row
            whose class is -1 (its coordinates are ignored); without one, a row whose four
            coordinates are all exactly -1 (what matching writes for background).
        stride (number or Tensor[L]): the stride in pixels (> 0, a normal number of the
            result dtype), or the stride of every location when several levels are
            concatenated (a real tensor whose values are not checked, as that would need a
            host sync on CUDA: they must be positive and finite).

    Returns:
        Tensor[..., L, 4]: ``(l, t, r, b)``; background rows give ``(-1, -1, -1, -1)``.
        Dtype is the promotion of the floating inputs (``locations``, ``gt_boxes``, a
        floating ``stride`` tensor); device that of the inputs. Each delta is one IEEE
        subtraction and one division: with a power-of-two stride and an exact difference
        (e.g. integer coordinates), :func:`fcos_apply_deltas_to_locations` gives the box
        back bit for bit.
    """
    fast = _deltas_on_numpy(locations, gt_boxes, stride)
    if fast is not None:
        return fast
    op = "fcos_get_deltas_from_locations"
    gt_boxes = check_shape(op, "gt_boxes", gt_boxes, "[..., L, 4] or [..., L, 5]", dtype="floating")
    locations = _check_locations(op, locations, gt_boxes, "gt_boxes")
    dtype = _result_dtype(locations, gt_boxes, stride)
    denominator = _signed_stride(op, stride, gt_boxes.shape[-2], locations, dtype)
    # Rows without a class column are tested for background before they are overwritten.
    coordinates = gt_boxes[..., :4]
    background = None
    if gt_boxes.shape[-1] == 5:
        background = gt_boxes[..., 4:5] == -1  # [..., L, 1]
    elif (wide_input := _wide_rows(coordinates)) is not None:
        background = wide_input[0] == wide_input[1]
    else:
        background = (coordinates == -1).all(dim=-1, keepdim=True)
    if locations.dtype != dtype:
        locations = locations.to(dtype)
    # (x1 - xc) / -s equals (xc - x1) / s bit for bit. The subtraction makes a new
    # contiguous tensor, in the promoted dtype, that is then divided in place (out of
    # place under torch.func transforms: vmap refuses an in-place op whose other operand
    # is batched where self is not, e.g. a vmapped stride).
    deltas = torch.sub(coordinates.to(dtype), torch.cat((locations, locations), dim=-1))
    if not plain_eager_mode():
        return (deltas / denominator).masked_fill(background, -1)
    deltas = deltas.contiguous().div_(denominator)  # sub keeps an odd input layout
    # (The fill through a wider view is invisible to autograd: only without a graph.)
    wide = None if deltas.requires_grad else _wide_rows(deltas)
    if wide is not None:
        wide[0].masked_fill_(background, wide[1])
        return deltas
    return deltas.masked_fill_(background, -1)


def fcos_apply_deltas_to_locations(
    deltas: Tensor, locations: Tensor, stride: int | float | Tensor
) -> Tensor:
    """Decode FCOS LTRB deltas at their locations into XYXY boxes.

    ``(x1, y1, x2, y2) = (xc - l*s, yc - t*s, xc + r*s, yc + b*s)`` after clamping negative
    deltas to 0, so a background row ``(-1, -1, -1, -1)`` decodes to the zero-size box
    ``(xc, yc, xc, yc)``. Inverse of :func:`fcos_get_deltas_from_locations` for locations
    inside their boxes.

    Small float32/float64 CPU inputs of one dtype (up to 16 x 3072 locations, none
    requiring grad while grad is enabled, no location coordinate equal to 0) are decoded
    in NumPy, in the calling thread, with the same three operations: the same bits. (Above
    32768 elements each torch op splits its work over two threads, and on a 2-core machine
    with another process busy the second thread's start can take milliseconds.)

    Args:
        deltas (Tensor[..., L, 4]): ``(l, t, r, b)`` in units of the stride.
        locations (Tensor[L, 2] or Tensor[..., L, 2]): ``(xc, yc)`` in absolute pixels.
        stride (number or Tensor[L]): stride in pixels, or per location, as for
            :func:`fcos_get_deltas_from_locations`.

    Returns:
        Tensor[..., L, 4]: XYXY boxes in absolute pixels. Dtype is the promotion of the
        floating inputs, device that of the inputs. NaN deltas stay NaN.
    """
    fast = _apply_on_numpy(deltas, locations, stride)
    if fast is not None:
        return fast
    op = "fcos_apply_deltas_to_locations"
    deltas = check_shape(op, "deltas", deltas, "[..., L, 4]", dtype="floating")
    locations = _check_locations(op, locations, deltas, "deltas")
    dtype = _result_dtype(deltas, locations, stride)
    locations = locations.to(dtype)
    scale = _signed_stride(op, stride, deltas.shape[-2], locations, dtype)
    # xc + (-s) * l equals xc - s * l bit for bit.
    return deltas.to(dtype).clamp(min=0) * scale + torch.cat((locations, locations), dim=-1)


def fcos_make_centerness_targets(deltas: Tensor) -> Tensor:
    """FCOS centerness of LTRB deltas.

    ``sqrt(min(l, r) * min(t, b) / (max(l, r) * max(t, b)))``, in [0, 1] for foreground.

    Args:
        deltas (Tensor[..., L, 4]): ``(l, t, r, b)``, e.g. from
            :func:`fcos_get_deltas_from_locations`.

    Returns:
        Tensor[..., L]: the centerness, same dtype and device as ``deltas``. Background rows
        (any delta negative, as the ``(-1, -1, -1, -1)`` rows of
        :func:`fcos_get_deltas_from_locations`) give -1. A zero denominator (a location on
        the edge of a zero-width or zero-height box) gives 0, never NaN. NaN stays NaN.
        Computed as ``sqrt((min(l, r) / max(l, r)) * (min(t, b) / max(t, b)))``, so huge or
        tiny deltas do not overflow (``1e20`` in float32 gives 1). The product of the two
        ratios is rounded in the input dtype, so a centerness below the square root of its
        smallest normal number (about 1e-19 in float32, 1e-154 in float64) loses relative
        precision, and one below about 3e-23 (float32) is 0. (For pixel-centred locations
        in an image up to 10^4 pixels wide, each float32 ratio is at least about 5e-12: far
        from that range.) Rows that give -1 or 0 have a zero gradient. Small float32/float64
        CPU inputs get a correctly rounded square root, others torch's, which may be 1 ulp
        away.
    """
    fast = _centerness_on_numpy(deltas)
    if fast is not None:
        return fast
    op = "fcos_make_centerness_targets"
    deltas = check_shape(op, "deltas", deltas, "[..., L, 4]", dtype="floating")
    left, top, right, bottom = deltas.unbind(-1)
    near_x, near_y = torch.minimum(left, right), torch.minimum(top, bottom)
    far_x, far_y = torch.maximum(left, right), torch.maximum(top, bottom)
    smallest = torch.minimum(near_x, near_y)  # NaN if any delta is NaN
    # Rows whose value is a constant: -1 (background) and 0 (a zero near side, which a
    # zero far side implies). The same arithmetic either way; with autograd recording,
    # those rows take 1 / 1, so no 0 / 0 or sqrt(0) sends a NaN into their zero gradient.
    if deltas.requires_grad and torch.is_grad_enabled():
        constant = smallest <= 0
        far_x, far_y = torch.where(constant, 1, far_x), torch.where(constant, 1, far_y)
        ratio = torch.where(constant, 1, (near_x / far_x) * (near_y / far_y))
        centerness = torch.where(constant, 0, ratio.sqrt())
    else:
        ratio = near_x.div_(far_x).mul_(near_y.div_(far_y)).sqrt_()
        centerness = torch.where(smallest == 0, 0, ratio)
    return torch.where(smallest < 0, -1, centerness)
