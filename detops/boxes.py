"""Box ops: pairwise IoU, clipping, the resize + center-crop box mapping and GT padding.

Coordinate contract for every op here: boxes are ``(x1, y1, x2, y2)`` in absolute pixels of
the image they belong to, and a box covers the pixels ``[x1, x2) x [y1, y2)`` (pixel ``i``
spans ``[i, i + 1)``, so an image of width ``W`` spans ``[0, W]``). GT rows carry a fifth
column, the class; a row whose class is -1 is padding (as in the FCOS target ops).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor

from ._boxes_numpy import box_iou_numpy
from ._cache import cached_constant
from ._checks import (
    check_int,
    check_same_device,
    check_shape,
    check_size_pair,
    is_dense_strided,
    shape_str,
)
from ._serial import numpy_view, plain_eager_mode, under_function_transform

__all__ = [
    "box_iou",
    "clip_boxes_to_image",
    "resize_and_center_crop_boxes",
    "center_crop_boxes_to_original",
    "pad_gt_boxes",
    "resized_and_crop_geometry",
]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _check_real(op: str, name: str, value: object, pattern: str) -> Tensor:
    """A tensor of shape ``pattern`` with a floating or integer dtype (what torchvision's box
    ops accept); no bool or complex."""
    tensor = check_shape(op, name, value, pattern)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{op}: {name} must have a floating or integer dtype, got {tensor.dtype}")
    return tensor


def _check_size(op: str, size: object) -> int:
    return check_int(op, "size", size, minimum=1, expected="a positive int")


def _size_was_image_size(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Accept the old keyword ``image_size=`` for ``size`` with a ``DeprecationWarning``.

    ``size`` was called ``image_size`` in detops 0.1, a name that elsewhere means a
    ``(height, width)`` pair; the old keyword keeps working, with the warning, for one
    more release.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if "image_size" in kwargs:
            name = func.__name__
            if "size" in kwargs:
                raise TypeError(f"{name}: got size and its deprecated name image_size; pass size")
            warnings.warn(
                f"{name}: the keyword image_size is deprecated and will be removed in detops 0.3; "
                "pass size (the Resize/CenterCrop size, an int) instead",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs["size"] = kwargs.pop("image_size")
        return func(*args, **kwargs)

    return wrapper


def _upcast(value: Tensor) -> Tensor:
    # float16/bfloat16 -> float32 as torchvision.ops; integers -> int64 (torchvision: int32
    # for the small types, where an area of int16 or int32 coordinates overflows), so the
    # products of coordinates below 2**31 neither overflow nor lose precision.
    if value.is_floating_point():
        return value if value.dtype in (torch.float32, torch.float64) else value.float()
    return value if value.dtype == torch.int64 else value.long()


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union of every pair of boxes; a drop-in for ``torchvision.ops.box_iou``.

    ``IoU = inter / union`` with ``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``
    and ``union = area1 + area2 - inter``, ``area = (x2 - x1) * (y2 - y1)``.

    Differences from torchvision (deliberate, pinned by tests):
        * A pair whose union is 0 (two zero-area boxes, e.g. two points or two lines) gives 0;
          torchvision gives NaN (0 / 0).
        * float16/bfloat16 boxes are upcast to float32 before any arithmetic; torchvision
          subtracts the corners in float16 and upcasts afterwards, so the two differ by
          float16 rounding of the intersection's width and height. Both return float32.
        * Likewise integer boxes are computed in int64; torchvision subtracts the corners
          of uint8/int8/int16 boxes in the small type, where a negative overlap wraps
          around (uint8 boxes ``[0, 0, 10, 10]`` and ``[20, 20, 30, 30]``: torchvision
          -1.0033, detops 0), and multiplies in int32, where an area above 2**31 wraps
          (int32 ``[0, 0, 50000, 50000]`` against ``[0, 0, 40000, 40000]``: torchvision
          -0.891, detops 0.64).
        * Boxes of two dtypes are both converted to their promoted dtype first; torchvision
          computes each set's areas in its own dtype, so the two may differ in the last
          bits (float32 with float64) and where an integer area overflows.

    NaN coordinates propagate to NaN IoU, as in torchvision (no check: the op never syncs).
    On CPU the pairs are computed in cache-sized blocks (see ``_IOU_BLOCK``), bit for bit
    the same arithmetic as torchvision's; two ``[N, 4]`` float32/float64 tensors that need
    no gradient, up to ``2**18`` pairs, go through NumPy, whose calls cost a fraction of
    torch's (10 x 10: 58 against torchvision's 97 µs), with the same arithmetic and result
    up to the sign of a zero.

    ``fmt`` names the boxes' format as in torchvision: ``"xyxy"``, ``"xywh"`` (corner,
    width, height) or ``"cxcywh"`` (centre, width, height). The other two formats follow
    torchvision's arithmetic: corners ``x + w`` or ``cx -+ w / 2`` and ``area = w * h``
    (computed after the upcast below). torchvision's rotated formats (``"xywhr"``,
    ``"cxcywhr"``, ``"xyxyxyxy"``) are not supported: ValueError.

    Args:
        boxes1 (Tensor[..., N, 4]): boxes in ``fmt``; XYXY with ``x1 <= x2`` and
            ``y1 <= y2`` (inverted boxes give what the formula gives, as in torchvision).
            Floating or integer dtype.
        boxes2 (Tensor[..., M, 4]): boxes in ``fmt`` on the device of ``boxes1`` (another
            dtype is promoted with it). Leading dims broadcast against those of ``boxes1``.
        fmt (str): ``"xyxy"`` (the default), ``"xywh"`` or ``"cxcywh"``.

    Returns:
        Tensor[..., N, M]: pairwise IoU. dtype as torchvision: float32/float64 inputs keep
        their dtype; float16/bfloat16 and integer inputs give float32 (the default float
        dtype), computed in float32 (floats) or in int64 (integers: exact intersections
        and areas for coordinates below 2**31 in magnitude, every int32 and smaller
        input included; larger int64 coordinates overflow, as in torchvision).
    """
    xyxy = type(fmt) is str and fmt == "xyxy"
    if xyxy and _numpy_iou_takes(boxes1, boxes2):
        return torch.from_numpy(box_iou_numpy(numpy_view(boxes1), numpy_view(boxes2)))
    op = "box_iou"
    if not xyxy:
        _check_box_format(op, fmt)
    boxes1 = _check_real(op, "boxes1", boxes1, "[..., N, 4]")
    boxes2 = _check_real(op, "boxes2", boxes2, "[..., N, 4]")
    check_same_device(op, boxes1=boxes1, boxes2=boxes2)
    if boxes1.dtype != boxes2.dtype:  # (torchvision's ops promote too, after the areas)
        common = torch.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.to(common), boxes2.to(common)
    if not xyxy:
        _broadcast_batch(op, boxes1, boxes2)
        return _box_iou_of_format(_upcast(boxes1), _upcast(boxes2), fmt)
    if boxes1.dim() == 2 and boxes2.dim() == 2:  # the common call, without broadcasting
        b1, b2 = _upcast(boxes1)[None], _upcast(boxes2)[None]
        if not b1.is_floating_point():
            return _box_iou_integer(b1, b2)[0]
        return _box_iou_float(b1, b2)[0]
    batch = _broadcast_batch(op, boxes1, boxes2)
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    flat = math.prod(batch)
    b1 = _upcast(boxes1).expand(*batch, n, 4).reshape(flat, n, 4)
    b2 = _upcast(boxes2).expand(*batch, m, 4).reshape(flat, m, 4)
    if not b1.is_floating_point():
        return _box_iou_integer(b1, b2).reshape(*batch, n, m)
    return _box_iou_float(b1, b2).reshape(*batch, n, m)


_BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
_ROTATED_FORMATS = ("xywhr", "cxcywhr", "xyxyxyxy")


def _check_box_format(op: str, fmt: object) -> None:
    if isinstance(fmt, str) and fmt in _BOX_FORMATS:
        return
    if isinstance(fmt, str) and fmt in _ROTATED_FORMATS:
        raise ValueError(
            f"{op}: fmt must be one of {list(_BOX_FORMATS)}, got {fmt!r}: rotated boxes are "
            "not supported (torchvision.ops.box_iou computes their IoU)"
        )
    if not isinstance(fmt, str):
        raise TypeError(f"{op}: fmt must be one of {list(_BOX_FORMATS)}, got {type(fmt).__name__}")
    raise ValueError(f"{op}: fmt must be one of {list(_BOX_FORMATS)}, got {fmt!r}")


def _broadcast_batch(op: str, boxes1: Tensor, boxes2: Tensor) -> torch.Size:
    """The broadcast of the two leading (batch) shapes; ValueError where they do not."""
    try:
        return torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{op}: the leading (batch) dims of boxes1 and boxes2 must broadcast, got "
            f"{shape_str(boxes1)} and {shape_str(boxes2)}"
        ) from None


def _box_iou_of_format(b1: Tensor, b2: Tensor, fmt: str) -> Tensor:
    """IoU of ``"xywh"`` or ``"cxcywh"`` boxes (upcast) in torchvision's arithmetic: corners
    ``x + w`` or ``cx -+ w / 2``, ``area = w * h``; a zero union gives 0."""
    a, b = b1[..., :, None, :], b2[..., None, :, :]  # [..., N, 1, 4], [..., 1, M, 4]
    if fmt == "xywh":
        lt = torch.maximum(a[..., :2], b[..., :2])
        rb = torch.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    else:
        lt = torch.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
        rb = torch.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3]) - inter
    empty = union == 0  # (divided by 1 there, so that no 0 / 0 reaches a gradient)
    iou = inter / torch.where(empty, torch.ones_like(union), union)
    return torch.where(empty, torch.zeros_like(iou), iou)


_NUMPY_IOU = True  # (tests switch the NumPy kernel off to run the torch path on CPU)
_NUMPY_DTYPES = (torch.float32, torch.float64)
# Above, the torch path's blocks are as fast (1000 x 1000 on an AMD EPYC: 7.4 against
# 7.6 ms) and were measured on more machines.
_NUMPY_MAX_PAIRS = 1 << 18


def _numpy_iou_takes(boxes1: object, boxes2: object) -> bool:
    """Whether the call goes to the NumPy kernel (:mod:`detops._boxes_numpy`), recognised
    in a few attribute reads, without the generic checks (which cost about as much as the
    kernel at 10 x 10): two exact ``torch.Tensor`` s of shape ``[N, 4]`` and ``[M, 4]``
    (at most ``_NUMPY_MAX_PAIRS`` pairs), on CPU, strided, of one dtype, float32 or
    float64, needing no gradient, in plain eager mode (autograd, torch.func transforms,
    forward AD, tracing and torch.compile take the torch path)."""
    return (
        _NUMPY_IOU
        and type(boxes1) is Tensor
        and type(boxes2) is Tensor
        and is_dense_strided(boxes1)
        and is_dense_strided(boxes2)
        and boxes1.dtype in _NUMPY_DTYPES
        and boxes2.dtype is boxes1.dtype
        and boxes1.dim() == 2
        and boxes2.dim() == 2
        and boxes1.shape[1] == 4
        and boxes2.shape[1] == 4
        and boxes1.is_cpu
        and boxes2.is_cpu
        and boxes1.shape[0] * boxes2.shape[0] <= _NUMPY_MAX_PAIRS
        and not ((boxes1.requires_grad or boxes2.requires_grad) and torch.is_grad_enabled())
        and plain_eager_mode()
    )


# Pairs per block on CPU. Three float32 temporaries of 2**15 pairs (128 KiB each) stay in
# a core's L2, and an op on at most 2**15 elements (torch's parallel grain size) runs
# inline on the calling thread: no thread-pool handoff per op. With bigger blocks each of
# the ~12 ops per block waits for every pool thread, which on a loaded machine costs ms per
# op (measured on the shared 2-core machine: 1000x1000 took 35 ms at 2**15, 99 ms at 2**17,
# torchvision 99 ms). The price: one core per call on an idle many-core CPU.
_IOU_BLOCK = 1 << 15
# Up to this many pairs the whole IoU is one broadcast pass (each op on at most 4 x this
# many elements, so still under torch's parallel grain).
_IOU_SMALL = 1 << 12


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _box_iou_integer(b1: Tensor, b2: Tensor) -> Tensor:
    # Exact integer products as in torchvision; the true division gives the default float.
    x1a, y1a, x2a, y2a = (b1[..., :, None, k] for k in range(4))
    x1b, y1b, x2b, y2b = (b2[..., None, :, k] for k in range(4))
    inter = torch.minimum(x2a, x2b).sub_(torch.maximum(x1a, x1b)).clamp_(min=0)
    inter.mul_(torch.minimum(y2a, y2b).sub_(torch.maximum(y1a, y1b)).clamp_(min=0))
    union = (_area(b1)[..., :, None] + _area(b2)[..., None, :]).sub_(inter)
    union.masked_fill_(union == 0, 1)  # union 0 means both areas 0, so inter is 0 too
    # (divided in float64, then rounded once to the default float dtype, as true division
    # would give it: dividing the int64 values in float32 rounded each first, 1.3 ulp off)
    return (inter.double() / union.double()).to(torch.get_default_dtype())


def _box_iou_float(b1: Tensor, b2: Tensor) -> Tensor:
    """``[B, N, 4] x [B, M, 4] -> [B, N, M]`` for float32/float64 boxes."""
    batch, n, m = b1.shape[0], b1.shape[1], b2.shape[1]
    # A zero-area box gets the dtype's largest area: a pair with it has inter == 0 (its
    # width or height is 0, so the overlap's is too, and a product that underflows to 0
    # bounds the overlap's), and 0 / (max + area) is 0 (or -0 against an area of -inf, as
    # torchvision's 0 / -inf) where torchvision computes 0 / 0 for two zero-area boxes.
    # Other pairs are untouched, and NaN areas stay NaN. O(N + M) work.
    largest = torch.finfo(b1.dtype).max
    autograd = (b1.requires_grad or b2.requires_grad) and torch.is_grad_enabled()
    if batch * n * m <= _IOU_SMALL or autograd or under_function_transform():
        # Few pairs: one broadcast pass with the fewest torch calls (the call's fixed cost
        # dominates); the same arithmetic as the blocked path below, whose out= ops
        # neither autograd nor torch.func's transforms (vmap, forward-mode AD) take.
        # (Out of place: vmap has no batching rule for several in-place ops and warns.)
        x1a, y1a, x2a, y2a = b1[:, :, None, :].unbind(-1)  # [B, N, 1]
        x1b, y1b, x2b, y2b = b2[:, None, :, :].unbind(-1)  # [B, 1, M]
        area_a = (x2a - x1a) * (y2a - y1a)
        area_b = (x2b - x1b) * (y2b - y1b)
        area_a = area_a.masked_fill(area_a == 0, largest)
        area_b = area_b.masked_fill(area_b == 0, largest)
        width = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0)
        inter = width * (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp(min=0)
        return inter / (area_a + area_b - inter)
    area1 = _area(b1)
    area1 = area1.masked_fill(area1 == 0, largest)
    area2 = _area(b2)
    area2 = area2.masked_fill(area2 == 0, largest)
    out = torch.empty((batch, n, m), dtype=b1.dtype, device=b1.device)
    # Contiguous coordinate planes [4, B, N]: the pairwise ops read unit-stride rows.
    p1 = b1.permute(2, 0, 1).contiguous()
    p2 = b2.permute(2, 0, 1).contiguous()
    # CPU: cache-sized blocks of up to _IOU_BLOCK pairs (whole images, or at least one row;
    # a loop over blocks, never over boxes) instead of full-size temporaries that fall out
    # of cache. CUDA: one block.
    block = _IOU_BLOCK if out.device.type == "cpu" else out.numel()
    rows = min(n, max(1, block // m))
    images = max(1, block // (n * m)) if rows == n else 1
    size = images * rows * m
    buffers = torch.empty((2, size), dtype=out.dtype, device=out.device)
    for b0 in range(0, batch, images):
        b_end = min(batch, b0 + images)
        for r0 in range(0, n, rows):
            r_end = min(n, r0 + rows)
            o = out[b0:b_end, r0:r_end]
            t = buffers[0, : o.numel()].view(o.shape)
            u = buffers[1, : o.numel()].view(o.shape)
            a = p1[:, b0:b_end, r0:r_end, None]  # [4, b, r, 1]
            c = p2[:, b0:b_end, None, :]  # [4, b, 1, M]
            # torchvision's arithmetic, operation for operation, so results are identical.
            torch.minimum(a[2], c[2], out=o).sub_(torch.maximum(a[0], c[0], out=t))
            o.clamp_(min=0)
            torch.minimum(a[3], c[3], out=t).sub_(torch.maximum(a[1], c[1], out=u))
            o.mul_(t.clamp_(min=0))
            torch.add(area1[b0:b_end, r0:r_end, None], area2[b0:b_end, None, :], out=t).sub_(o)
            o.div_(t)
    return out


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp x to ``[0, width]`` and y to ``[0, height]``; a drop-in for torchvision's op.

    On ``[..., 4]`` boxes it equals ``torchvision.ops.clip_boxes_to_image``. On ``[..., 5]``
    GT rows ``(x1, y1, x2, y2, class)`` the class column is never changed and padding rows
    (class == -1) are returned untouched. Boxes that end up with zero width or height are
    kept (use :func:`resize_and_center_crop_boxes` for the dataset path that drops them).
    NaN coordinates stay NaN. The input is not modified. Where autograd records the call
    (forward-mode AD and torch.func transforms included), the derivative is
    torchvision's: 1 strictly inside the bounds, 0 outside, at a bound and at NaN. From
    16384 contiguous boxes (not recorded) the clamp runs vectorized over long rows: a
    ``-0.0`` coordinate may come back as ``+0.0`` (equal as numbers), where torchvision's
    strided clamp keeps the sign.

    Args:
        boxes (Tensor[..., 4] or Tensor[..., 5]): XYXY boxes or GT rows, floating or integer.
        size (tuple[int, int]): ``(height, width)`` of the image, positive ints
            (``image.shape[-2:]`` works).

    Returns:
        Tensor of the shape, dtype and device of ``boxes``.
    """
    if _is_common_clip_call(boxes, size):  # valid: about 15 µs of checks skipped
        height, width = size
    else:
        op = "clip_boxes_to_image"
        boxes = _check_real(op, "boxes", boxes, "[..., 4] or [..., 5]")
        height, width = check_size_pair(op, "size", size)
    columns = boxes.shape[-1]
    # (Forward-mode AD and torch.func transforms record too, without requires_grad.)
    if (boxes.requires_grad and torch.is_grad_enabled()) or under_function_transform():
        return _clip_recorded(boxes, height, width)
    # (A compiled graph gets the one clamp to fuse; plain_eager_mode() is asked first, so
    # that tracing puts no guard on the number of boxes, which export's dynamic dims refuse.)
    if columns == 4 and plain_eager_mode() and boxes.is_contiguous():
        if boxes.numel() >= 4 * _CLIP_LONG_ROWS_FROM:
            return _clip_in_long_rows(boxes, height, width)
    lower, upper = _clip_bounds(columns, height, width, boxes.dtype, boxes.device, 1)
    clipped = torch.clamp(boxes, lower, upper)
    if columns == 4:
        return clipped
    return torch.where(boxes[..., 4:5] == -1, boxes, clipped)


# Values per row of the clamp on long rows: a clamp of [N, 4] by [4] bounds runs its inner
# loop over 4 elements, and of [N / 64, 256] by [256] bounds over 256: interleaved medians
# on a 2-core AMD EPYC, one clamp / long rows / torchvision: 1000 boxes 13 / 37 / 42 us,
# 10k 35 / 46 / 67 us, 20k 56 / 51 / 80 us, 50k 123 / 66 / 121 us, 100k 445 / 99 / 319 us,
# 1M 4.3 / 1.1 / 3.6 ms. Below 16384 boxes the extra calls cost more than they save.
_CLIP_ROW = 4 * 64
_CLIP_LONG_ROWS_FROM = 16384  # boxes


def _clip_recorded(boxes: Tensor, height: int, width: int) -> Tensor:
    """The clip where autograd records it: torchvision's own ops (a clamp of the x and of
    the y columns by number bounds), so the gradient is torchvision's too. (A clamp by
    bound tensors gives 0.5 at a value equal to a bound and 1 at NaN; the number bounds
    give 0 at both.) GT rows keep their class column and their padding rows."""
    coordinates = boxes[..., :4]
    xs = coordinates[..., 0::2].clamp(min=0, max=width)
    ys = coordinates[..., 1::2].clamp(min=0, max=height)
    clipped = torch.stack((xs, ys), dim=-1).reshape(coordinates.shape)
    if boxes.shape[-1] == 4:
        return clipped
    clipped = torch.cat((clipped, boxes[..., 4:]), dim=-1)
    return torch.where(boxes[..., 4:5] == -1, boxes, clipped)


def _clip_in_long_rows(boxes: Tensor, height: int, width: int) -> Tensor:
    """The clamp of contiguous ``[..., 4]`` boxes over rows of :data:`_CLIP_ROW` values,
    the last few boxes on their own."""
    flat = boxes.view(-1)
    lower, upper = _clip_bounds(4, height, width, boxes.dtype, boxes.device, _CLIP_ROW // 4)
    clipped = torch.empty_like(boxes)
    out = clipped.view(-1)
    whole = flat.numel() // _CLIP_ROW * _CLIP_ROW
    rows = (-1, _CLIP_ROW)
    torch.clamp(flat[:whole].view(rows), lower, upper, out=out[:whole].view(rows))
    if whole < flat.numel():
        rest = flat.numel() - whole
        torch.clamp(flat[whole:], lower[:rest], upper[:rest], out=out[whole:])
    return clipped


def _is_common_clip_call(boxes: object, size: object) -> bool:
    """``[N, 4]`` floating boxes (a plain strided tensor) and ``(height, width)`` positive
    ints as a tuple or ``torch.Size``: what the checks accept, seen in a few reads."""
    return (
        type(boxes) is Tensor
        and is_dense_strided(boxes)
        and boxes.dim() == 2
        and boxes.shape[1] == 4
        and boxes.is_floating_point()
        and isinstance(size, tuple)
        and len(size) == 2
        and type(size[0]) is int
        and type(size[1]) is int
        and size[0] > 0
        and size[1] > 0
    )


@cached_constant(maxsize=64)
def _clip_bounds(
    columns: int, height: int, width: int, dtype: torch.dtype, device: torch.device, boxes: int
) -> tuple[Tensor, Tensor]:
    """Per-column bounds of the clamp, repeated for ``boxes`` boxes (cached: two small
    tensors built per call cost more than the clamp of a thousand boxes). The class
    column's bounds are the dtype's extremes (+-inf for floats), which leave it
    unchanged."""
    if dtype.is_floating_point:
        low, high = float("-inf"), float("inf")
    else:  # e.g. uint8 boxes in a 640-px image: bounds saturate at the dtype's range
        low, high = torch.iinfo(dtype).min, torch.iinfo(dtype).max
        width, height = min(width, high), min(height, high)
    lower = torch.tensor((0, 0, 0, 0, low)[:columns] * boxes, dtype=dtype, device=device)
    upper = (width, height, width, height, high)[:columns] * boxes
    return lower, torch.tensor(upper, dtype=dtype, device=device)


@_size_was_image_size
def resized_and_crop_geometry(
    original_size: tuple[int, int], size: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where ``Resize(size)`` + ``CenterCrop(size)`` put the pixels, torchvision's way.

    The resized size is torchvision's integer one (``_compute_resized_output_size``): the
    short side becomes ``size`` and the long side ``int(size * long / short)`` (truncated).
    The crop offset is ``int(round((resized - size) / 2.0))`` per axis, with Python's round
    (half to even), as ``torchvision.transforms.functional.center_crop``.

    Args:
        original_size (tuple[int, int]): ``(height, width)`` of the original image.
        size (int): the ``Resize``/``CenterCrop`` size (positive): the short side after the
            resize and the side of the square crop. Named as in torchvision's transforms;
            the old keyword ``image_size=`` still works for one release, with a
            ``DeprecationWarning``.

    Returns:
        ``((resized_height, resized_width), (crop_top, crop_left))``.
    """
    op = "resized_and_crop_geometry"
    height, width = check_size_pair(op, "original_size", original_size)
    size = _check_size(op, size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return (new_h, new_w), (top, left)


@_size_was_image_size
def resize_and_center_crop_boxes(
    gt_boxes: Tensor, original_size: tuple[int, int], size: int
) -> Tensor:
    """Map GT boxes through ``Resize(size)`` then ``CenterCrop(size)``.

    The box half of the seed dataset's image transform: boxes land where torchvision's
    transforms put the pixels (a box covers the pixels ``[x1, x2) x [y1, y2)``; the pixel
    tests in ``tests/test_box_transforms_pixels.py`` check it on drawn rectangles).

    With ``(new_h, new_w)`` and ``(top, left)`` from :func:`resized_and_crop_geometry`
    (torchvision's integer resized size and its rounded crop offset), ``sx = new_w / w``
    and ``sy = new_h / h``::

        x' = clamp(x * sx - left, 0, size)    y' = clamp(y * sy - top, 0, size)

    Rows that are empty after clamping (``x1' >= x2'`` or ``y1' >= y2'``: zero area or
    inverted, e.g. boxes outside the crop) become all -1, and padding rows (class == -1,
    whatever their coordinates) are all -1. Other rows keep their class. The arithmetic
    and the emptiness decision are done in float64 on the input's device, then cast back
    to the input dtype.

    Note:
        The course code uses the float size ``h * size / w`` and floors the crop offset
        (``(new - size) // 2``). Both differ from what torchvision does to the pixels, so
        its boxes can sit up to about a pixel off the objects: a 224x227 (HxW) image is
        cropped from column round(1.5) = 2, the course code shifts by 1; a 333x500 image
        is resized to width 336, the course code scales to 336.34 (0.27 px at x = 400). It
        also keeps zero-width boxes (it drops only ``x1 > x2``) and does not clamp ``x1``
        from above.

    Args:
        gt_boxes (Tensor[..., N, 5]): ``(x1, y1, x2, y2, class)`` rows in original-image
            pixels, floating dtype.
        original_size (tuple[int, int]): ``(height, width)`` of the original image.
        size (int): the ``Resize``/``CenterCrop`` size (positive), as in
            :func:`resized_and_crop_geometry` (``image_size=`` is its deprecated keyword).

    Returns:
        Tensor[..., N, 5]: rows in crop pixels (``[0, size]``), same dtype and device.
    """
    op = "resize_and_center_crop_boxes"
    gt_boxes = check_shape(op, "gt_boxes", gt_boxes, "[..., N, 5]", dtype="floating")
    height, width = check_size_pair(op, "original_size", original_size)
    size = _check_size(op, size)
    (new_h, new_w), (top, left) = resized_and_crop_geometry((height, width), size)

    boxes = gt_boxes.to(torch.float64)
    device = gt_boxes.device
    scale = torch.tensor((new_w / width, new_h / height) * 2, dtype=torch.float64, device=device)
    shift = torch.tensor((left, top) * 2, dtype=torch.float64, device=device)
    xy = (boxes[..., :4] * scale - shift).clamp(min=0, max=size)
    drop = (xy[..., 0] >= xy[..., 2]) | (xy[..., 1] >= xy[..., 3]) | (boxes[..., 4] == -1)
    out = torch.cat((xy, boxes[..., 4:5]), dim=-1).masked_fill_(drop[..., None], -1)
    return out.to(gt_boxes.dtype)


@_size_was_image_size
def center_crop_boxes_to_original(
    boxes: Tensor, original_size: tuple[int, int], size: int
) -> Tensor:
    """Map boxes on the ``Resize(size)`` + ``CenterCrop(size)`` image back to the original.

    The inverse of :func:`resize_and_center_crop_boxes`, for evaluation and drawing
    (predictions are made on the crop); same pixel convention, ``[x1, x2) x [y1, y2)``.
    With the geometry of :func:`resized_and_crop_geometry`::

        x = clamp((x' + left) * (w / new_w), 0, w)    y = clamp((y' + top) * (h / new_h), 0, h)

    Rows are never dropped (row ``i`` still belongs to score ``i``); a box that was inside
    the crop maps inside the image, and the clamp only trims boxes that stuck out of the
    crop. For ``[..., 5]`` rows the class column is kept and padding rows (class == -1) are
    returned untouched. Arithmetic in float64, cast back to the input dtype.

    Args:
        boxes (Tensor[..., 4] or Tensor[..., N, 5]): XYXY boxes (or GT-style rows) in crop
            pixels, floating dtype.
        original_size (tuple[int, int]): ``(height, width)`` of the original image.
        size (int): the ``Resize``/``CenterCrop`` size (positive), as in
            :func:`resized_and_crop_geometry` (``image_size=`` is its deprecated keyword).

    Returns:
        Tensor of the shape, dtype and device of ``boxes``, in original-image pixels.
    """
    op = "center_crop_boxes_to_original"
    boxes = check_shape(op, "boxes", boxes, "[..., 4] or [..., 5]", dtype="floating")
    height, width = check_size_pair(op, "original_size", original_size)
    size = _check_size(op, size)
    (new_h, new_w), (top, left) = resized_and_crop_geometry((height, width), size)

    wide = boxes.to(torch.float64)
    device = boxes.device
    shift = torch.tensor((left, top) * 2, dtype=torch.float64, device=device)
    scale = torch.tensor((width / new_w, height / new_h) * 2, dtype=torch.float64, device=device)
    mapped = (wide[..., :4] + shift).mul_(scale)
    # Number bounds per axis, as clip_boxes_to_image: the derivative at a bound is 0
    # (torch.minimum against a bound tensor splits a tie: 0.5).
    xs = mapped[..., 0::2].clamp(min=0, max=width)
    ys = mapped[..., 1::2].clamp(min=0, max=height)
    xy = torch.stack((xs, ys), dim=-1).reshape(mapped.shape)
    if boxes.shape[-1] == 4:
        return xy.to(boxes.dtype)
    xy = torch.where(wide[..., 4:5] == -1, wide[..., :4], xy)
    return torch.cat((xy, wide[..., 4:5]), dim=-1).to(boxes.dtype)


def pad_gt_boxes(boxes_list: Sequence[Tensor], max_boxes: int | None = None) -> Tensor:
    """Stack per-image GT rows into one batch, padding with all -1 rows.

    Image ``b``'s rows go to ``out[b, :n_b]`` in their order; ``out[b, n_b:]`` is -1.

    Args:
        boxes_list (Sequence[Tensor[n_i, 5]]): per image, ``(x1, y1, x2, y2, class)`` rows
            (``n_i`` may be 0). All of one dtype and on one device.
        max_boxes (int, optional): rows per image (>= 0). ``None`` pads to the largest
            ``n_i``.

    Returns:
        Tensor[B, max_boxes, 5] with the dtype and device of the inputs. An empty list gives
        a ``[0, max_boxes or 0, 5]`` float32 CPU tensor (there is no input to follow).

    Raises:
        ValueError: if an image has more than ``max_boxes`` rows (naming the image index and
            its count; the course dataset crashes there on a negative pad size), if
            ``max_boxes`` is negative, or if the shapes or devices are wrong. TypeError: for
            non-tensors, mixed dtypes or a ``max_boxes`` that is not an int.
    """
    op = "pad_gt_boxes"
    if isinstance(boxes_list, Tensor) or not isinstance(boxes_list, Sequence):
        raise TypeError(
            f"{op}: boxes_list must be a list of Tensor[n_i, 5], got {type(boxes_list).__name__}"
        )
    if max_boxes is not None:
        max_boxes = check_int(op, "max_boxes", max_boxes, minimum=0, expected="None or an int >= 0")
    for index, boxes in enumerate(boxes_list):
        boxes = check_shape(op, f"boxes_list[{index}]", boxes, "[n, 5]")
        if boxes.dtype != boxes_list[0].dtype:
            raise TypeError(
                f"{op}: all boxes must have one dtype, got {boxes_list[0].dtype} at index 0 "
                f"and {boxes.dtype} at index {index}"
            )
        if boxes.device != boxes_list[0].device:
            raise ValueError(
                f"{op}: all boxes must be on one device, got {boxes_list[0].device} at index 0 "
                f"and {boxes.device} at index {index}"
            )
        if max_boxes is not None and boxes.shape[0] > max_boxes:
            raise ValueError(
                f"{op}: image {index} has {boxes.shape[0]} boxes, more than max_boxes={max_boxes}"
            )
    if len(boxes_list) == 0:
        return torch.full((0, max_boxes or 0, 5), -1.0)
    # pad_sequence copies in C++ (no per-image Python loop, no host sync).
    out = torch.nn.utils.rnn.pad_sequence(list(boxes_list), batch_first=True, padding_value=-1)
    if max_boxes is not None and out.shape[1] < max_boxes:
        out = torch.nn.functional.pad(out, (0, 0, 0, max_boxes - out.shape[1]), value=-1)
    return out
