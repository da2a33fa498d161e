"""Registry entries for detops.boxes: IoU, clipping, resize + center-crop mapping, padding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st

import reference.boxes as ref
from detops import boxes

from ..compare import Tolerance
from ..entry import OpEntry
from ..strategies import Case, floats32, gt_boxes

# IoU of float32 boxes (and of float16/bfloat16 boxes, which box_iou computes in float32):
# each width/height/area carries a few float32 roundings, the ratio about ten.
IOU_TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-12),
    torch.float32: Tolerance(1e-6, 1e-5),
    torch.float16: Tolerance(1e-6, 1e-5),
    torch.bfloat16: Tolerance(1e-6, 1e-5),
}
# Ops that compute in float64 (or only clamp) and round once into the output dtype: the
# error is one rounding: half a unit in the last place, relative for normal numbers and
# absolute (half the subnormal spacing, the atol) below the normal range.
ONE_ROUNDING = {
    torch.float64: Tolerance(0.0, 0.0),
    torch.float32: Tolerance(2.0**-150, 2.0**-24),
    torch.float16: Tolerance(2.0**-25, 2.0**-11),
    torch.bfloat16: Tolerance(2.0**-134, 2.0**-8),
}


def exact_in_every_dtype(value):
    """Round float arrays (in a Case tree) to numbers that bfloat16 and float16 both hold.

    8 significant bits (bfloat16's), magnitudes below float16's normal range flushed to 0.
    Like ``width=32`` for float32, this makes the op see, in every registered dtype, the
    numbers the reference sees, so the comparison measures the op, not input rounding.
    """
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        mantissa, exponent = np.frexp(value)
        rounded = np.ldexp(np.round(mantissa * 256.0) / 256.0, exponent)
        return np.where(np.abs(rounded) < 2.0**-14, 0.0, rounded)
    if isinstance(value, Case):
        return Case(exact_in_every_dtype(value.args), exact_in_every_dtype(value.kwargs))
    if isinstance(value, dict):
        return {k: exact_in_every_dtype(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(exact_in_every_dtype(v) for v in value)
    return value


@st.composite
def boxes_with_degenerate(draw, min_n: int = 0, max_n: int = 10, *, n: int | None = None):
    """``[N, 4]`` XYXY boxes, valid by construction (``x2 = x1 + w``, ``w >= 0``).

    Mixes float32-exact coordinates, integer-valued ones (touching edges, equal boxes) and
    zero-width, zero-height and point boxes (zero area; two of them have zero union).
    """
    count = n if n is not None else draw(st.integers(min_n, max_n))
    integer = draw(st.booleans())
    rows = []
    for _ in range(count):
        if integer:
            x1, y1 = draw(st.integers(-20, 60)), draw(st.integers(-20, 60))
            w, h = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        else:
            x1, y1 = draw(floats32(-50.0, 300.0)), draw(floats32(-50.0, 300.0))
            kind = draw(st.sampled_from(["box", "box", "box", "line", "point"]))
            w = 0.0 if kind == "point" else draw(floats32(0.5, 200.0))
            h = 0.0 if kind in ("line", "point") else draw(floats32(0.5, 200.0))
        # x1 + w rounded to float32 stays >= x1, so the box stays valid.
        rows.append((x1, y1, float(np.float32(x1 + w)), float(np.float32(y1 + h))))
    return np.array(rows, dtype=np.float64).reshape(count, 4)


@st.composite
def box_iou_cases(draw):
    layout = draw(st.sampled_from(["plain", "batched", "broadcast"]))
    batch = draw(st.integers(1, 3))
    n, m = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    if layout == "plain":
        return exact_in_every_dtype(
            Case((draw(boxes_with_degenerate(n=n)), draw(boxes_with_degenerate(n=m))))
        )
    second = np.stack([draw(boxes_with_degenerate(n=m)) for _ in range(batch)])
    if layout == "broadcast":  # [N, 4] against [B, M, 4]
        return exact_in_every_dtype(Case((draw(boxes_with_degenerate(n=n)), second)))
    first = np.stack([draw(boxes_with_degenerate(n=n)) for _ in range(batch)])
    return exact_in_every_dtype(Case((first, second)))


@st.composite
def gt_rows_with_padding(
    draw,
    max_rows: int = 6,
    *,
    batch: bool | None = None,
    num_rows: st.SearchStrategy[int] | None = None,
    real_rows: Callable[[int], st.SearchStrategy[np.ndarray]] | None = None,
    **box_kwargs,
):
    """``[N, 5]`` or ``[B, N, 5]`` GT rows; padding rows (all -1) at random positions.

    ``N`` comes from ``num_rows`` (default ``0..max_rows``); ``real_rows(N)`` is the strategy
    of one image's real rows (at most ``N``), by default :func:`gt_boxes` of ``box_kwargs``.
    """
    batched = draw(st.booleans()) if batch is None else batch
    count = draw(st.integers(1, 3)) if batched else 1
    rows = draw(num_rows if num_rows is not None else st.integers(0, max_rows))
    images = []
    for _ in range(count):
        real = draw(real_rows(rows) if real_rows else gt_boxes(0, rows, **box_kwargs))
        padded = np.full((rows, 5), -1.0)
        slots = sorted(draw(st.permutations(range(rows)))[: len(real)])
        padded[slots] = real
        images.append(padded)
    stacked = np.stack(images).reshape(count, rows, 5)
    return stacked if batched else stacked[0]


sizes = st.integers(1, 700)
image_sizes = st.one_of(st.sampled_from([224, 225, 7, 1]), st.integers(1, 300))


@st.composite
def clip_cases(draw):
    height, width = draw(sizes), draw(sizes)
    if draw(st.booleans()):
        boxes_ = draw(gt_rows_with_padding(low=-100.0, high=750.0, max_size=300.0))
    else:
        boxes_ = draw(boxes_with_degenerate())
        if draw(st.booleans()):
            boxes_ = boxes_.reshape(1, *boxes_.shape)
    return exact_in_every_dtype(Case((boxes_, (height, width))))


@st.composite
def _span(draw, side: int, kept: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` along an image side of ``side`` pixels (float32 exact), where the
    resize + center crop keeps about ``kept`` of it.

    Three times in five a span overlapping the kept part (some cross one of its borders),
    else one starting anywhere in ``[-margin, side + margin]`` (``margin = min(20,
    side / 2)``) with a length up to the side's (inside, crossing the image's edges or the
    crop's, or outside the crop), or an empty one (zero length) there.
    """
    kind = draw(st.sampled_from(["kept", "anywhere", "kept", "empty", "kept"]))
    if kind == "kept":
        # At least 1/64 of the side, so that 8-bit rounding (exact_in_every_dtype) keeps it
        # > 0; starting up to half that before either border of the kept part.
        shortest = max(0.5, side / 64)
        low = draw(floats32(kept[0] - shortest / 2, kept[1] - shortest / 2))
        length = draw(floats32(shortest, max(kept[1] - kept[0], shortest)))
    else:
        margin = min(20.0, side / 2)
        low = draw(floats32(-margin, side + margin))
        length = 0.0 if kind == "empty" else draw(floats32(0.5, max(side, 1.0)))
    # low + length rounded to float32 stays >= low.
    return low, float(np.float32(low + length))


@st.composite
def gt_rows_in_image(draw, max_n: int, height: int, width: int, *, num_classes: int = 20):
    """``[N, 5]`` GT rows of a ``height x width`` image for Resize + CenterCrop, with
    ``N <= max_n`` (all ``max_n`` in the simplest case, down to none: padding only).

    Each axis is drawn by :func:`_span`; the crop keeps the central ``min(height, width)``
    pixels of the long side (about: the op rounds), all of the short side.
    """
    some = draw(st.sampled_from([False, False, True]))
    count = draw(st.integers(0, max_n)) if some else max_n
    short = min(height, width)
    rows = []
    for _ in range(count):
        x1, x2 = draw(_span(width, ((width - short) / 2, (width + short) / 2)))
        y1, y2 = draw(_span(height, ((height - short) / 2, (height + short) / 2)))
        rows.append((x1, y1, x2, y2, float(draw(st.integers(0, num_classes - 1)))))
    return np.array(rows, dtype=np.float64).reshape(count, 5)


@st.composite
def resize_cases(draw):
    """Boxes drawn per axis (:func:`gt_rows_in_image`): most overlap the crop, some cross
    its border, some lie outside it or outside the image, some are empty."""
    height, width = draw(sizes), draw(sizes)
    image_size = draw(image_sizes)
    gt = draw(
        gt_rows_with_padding(
            num_rows=st.integers(0, 6).map(lambda k: 6 - k),
            real_rows=lambda n: gt_rows_in_image(n, height, width),
        )
    )
    return exact_in_every_dtype(Case((gt, (height, width), image_size)))


@st.composite
def inverse_cases(draw):
    height, width = draw(sizes), draw(sizes)
    image_size = draw(image_sizes)
    box_kwargs = {"low": -10.0, "high": image_size + 10.0, "max_size": image_size + 20.0}
    if draw(st.booleans()):
        crop_boxes = draw(gt_rows_with_padding(**box_kwargs))
    else:
        crop_boxes = draw(gt_rows_with_padding(**box_kwargs))[..., :4]
    return exact_in_every_dtype(Case((crop_boxes, (height, width), image_size)))


@st.composite
def pad_cases(draw):
    images = draw(st.integers(0, 4))
    boxes_list = [draw(gt_boxes(0, 6)) for _ in range(images)]
    most = max((len(b) for b in boxes_list), default=0)
    if draw(st.booleans()):
        return exact_in_every_dtype(Case((boxes_list,)))
    return exact_in_every_dtype(Case((boxes_list,), {"max_boxes": most + draw(st.integers(0, 3))}))


# Every case goes through exact_in_every_dtype: the same case runs in all four dtypes, and
# rounding it into float16/bfloat16 would otherwise change the input, not test the op.
# (Float32-specific values are covered against torchvision in tests/test_boxes.py.)
ENTRIES = (
    OpEntry(
        name="box_iou",
        op=boxes.box_iou,
        reference=ref.box_iou,
        strategy=box_iou_cases,
        tolerances=IOU_TOLERANCES,
    ),
    OpEntry(
        name="clip_boxes_to_image",
        op=boxes.clip_boxes_to_image,
        reference=ref.clip_boxes_to_image,
        strategy=clip_cases,
        tolerances=ONE_ROUNDING,
    ),
    OpEntry(
        name="resize_and_center_crop_boxes",
        op=boxes.resize_and_center_crop_boxes,
        reference=ref.resize_and_center_crop_boxes,
        strategy=resize_cases,
        tolerances=ONE_ROUNDING,
    ),
    OpEntry(
        name="center_crop_boxes_to_original",
        op=boxes.center_crop_boxes_to_original,
        reference=ref.center_crop_boxes_to_original,
        strategy=inverse_cases,
        tolerances=ONE_ROUNDING,
    ),
    OpEntry(
        name="pad_gt_boxes",
        op=boxes.pad_gt_boxes,
        reference=ref.pad_gt_boxes,
        strategy=pad_cases,
        tolerances=ONE_ROUNDING,
    ),
)
