"""verify's hand-made probes and its catalogue of known mistakes, per course function.

* **Probes** (:class:`Probe`): small hand-made inputs aimed at one edge (IoU exactly at the
  threshold, ordinary suppression, a NaN score, zero-area boxes, the class-offset trick in
  float16, ...) that random generation would rarely hit. Each lies inside the shared
  contract (a failure there is a FAIL) or outside it (a DEPARTS, with one line on what
  detops does there).
* **Known mistakes** (:class:`Hint`): mostly *mistake references*, each the NumPy reference
  with one mistake made on purpose, built from the reference's own functions and helpers.
  When a user's output differs from the reference but equals a mistake reference on the
  same input, the report names the mistake. Nothing is guessed from strings.

:mod:`detops.verify.course_api` attaches both to the course functions' specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reference.boxes import box_iou as reference_box_iou
from reference.boxes import clip_boxes_to_image as reference_clip
from reference.deltas import fcos_apply_deltas_to_locations as reference_apply_deltas
from reference.deltas import fcos_get_deltas_from_locations as reference_get_deltas
from reference.deltas import fcos_make_centerness_targets as reference_centerness
from reference.locations import get_fpn_location_coords as reference_locations
from reference.losses import sigmoid_focal_loss as reference_focal_loss
from reference.matching import _match_image as reference_match_image
from reference.matching import default_size_ranges
from reference.nms import class_spec_nms as reference_class_nms
from reference.nms import nms as reference_nms

from ..testing.compare import Tolerance, compare_trees, to_numpy_tree
from ..testing.strategies import Case

__all__ = [
    "APPLY_DELTAS_HINTS",
    "APPLY_DELTAS_PROBES",
    "BOX_IOU_HINTS",
    "BOX_IOU_PROBES",
    "CENTERNESS_HINTS",
    "CENTERNESS_PROBES",
    "CLASS_NMS_HINTS",
    "CLASS_NMS_PROBES",
    "CLIP_HINTS",
    "CLIP_PROBES",
    "DELTAS_HINTS",
    "DELTAS_PROBES",
    "FOCAL_HINTS",
    "FOCAL_PARAMETERS",
    "FOCAL_PROBES",
    "LOCATIONS_HINTS",
    "LOCATIONS_PROBES",
    "MATCHING_HINTS",
    "MATCHING_PROBES",
    "NMS_HINTS",
    "NMS_PROBES",
    "CLASS_NMS_PARAMETERS",
    "NMS_PARAMETERS",
    "Hint",
    "HintContext",
    "Probe",
    "input_hint",
    "masked_hint",
    "mistake_hint",
    "focal_arguments",
    "named_arguments",
    "offset_trick",
    "zero_union",
]


@dataclass(frozen=True)
class HintContext:
    """What a hint detector sees about one input: a failing one, or (``kind`` "pass") one
    the function got right."""

    case: Case  # the case as generated (NumPy)
    ref_case: Case  # float64 arrays of exactly the values the function saw
    dtype: torch.dtype
    kind: str  # "mismatch", "raised", ..., or "pass"
    actual: Any  # the function's output in reference form (None unless kind == "mismatch")
    expected: Any
    tolerance: Tolerance


@dataclass(frozen=True)
class Hint:
    """A known mistake.

    Attributes:
        text: the hint line of the report.
        matches: ``matches(context)`` decides whether a failure is this mistake.
        refuted_by: given an input the function got right, whether the mistake would have
            got it wrong (then the function does not make this mistake).
        short: a few words for the summary table; names the mistake in
            :meth:`~detops.verify.course_api.SeedSpec.hint`.
        mistake: the mistake reference, ``mistake(ref_case, dtype)``: the reference with
            this mistake made on purpose (None for a hint that looks at the input or at
            where the output differs instead).
    """

    text: str
    matches: Callable[[HintContext], bool]
    refuted_by: Callable[[HintContext], bool] | None = None
    short: str = ""
    mistake: Callable[[Case, torch.dtype], Any] | None = None


@dataclass(frozen=True)
class Probe:
    """A hand-made input, aimed at one edge of the contract.

    ``shared`` probes lie inside the shared contract (the course code and torchvision
    agree on the answer): a wrong answer there is a FAIL. Other probes test where detops
    deliberately goes further (NaN refusal, empty inputs, float16, ...): a difference there
    is a DEPARTS, listed with ``departure``, one line on what detops does and why.
    ``tolerance`` is used for a dtype the registry entry has no tolerance for. ``refuse``
    marks an input detops refuses (NaN scores): detops raises, whatever the reference
    would compute. Its ``control`` is the same input without what detops refuses
    (``control_without`` says what is left out, in words): a function that raises on the
    refused input passes the probe only where it accepts the control; where it raises
    there too, the probe says nothing about it (N/A).
    """

    label: str
    case: Callable[[], Case]
    dtype: torch.dtype = torch.float32
    departure: str = ""
    tolerance: Tolerance | None = None
    refuse: bool = False
    tag: str = ""  # the departure in a few words, for the summary table
    shared: bool = True
    control: Callable[[], Case] | None = None
    control_without: str = ""

    def __post_init__(self) -> None:
        if self.refuse and (self.control is None or not self.control_without):
            raise ValueError(f"probe {self.label!r}: a refused input needs a control input")


def named_arguments(case: Case, names: Sequence[str], **defaults: Any) -> dict[str, Any]:
    """``case``'s arguments by parameter name: positional ones named by ``names``, then its
    keyword arguments, ``defaults`` where the case leaves a parameter out."""
    values = dict(defaults)
    values.update(zip(names, case.args, strict=False))
    values.update(case.kwargs)
    return values


NMS_PARAMETERS = ("boxes", "scores", "iou_threshold")
CLASS_NMS_PARAMETERS = ("boxes", "scores", "class_ids", "iou_threshold")
FOCAL_PARAMETERS = ("inputs", "targets", "alpha", "gamma", "reduction")
_FOCAL_DEFAULTS = {"alpha": 0.25, "gamma": 2.0, "reduction": "none"}


def _numpy_dtype(dtype: torch.dtype) -> type[np.floating]:
    numpy_dtypes: dict[torch.dtype, type[np.floating]] = {
        torch.float16: np.float16,
        torch.float64: np.float64,
    }
    return numpy_dtypes.get(dtype, np.float32)


# --------------------------------------------------------------------------------------
# Hint builders
# --------------------------------------------------------------------------------------


def _agree(actual: Any, expected: Any, tol: Tolerance) -> bool:
    return compare_trees(actual, expected, tol).ok


def mistake_hint(text: str, mistake: Callable[[Case, torch.dtype], Any], short: str = "") -> Hint:
    """A hint that applies when the output equals ``mistake(ref_case, dtype)``, the
    reference with the mistake made on purpose."""

    def matches(ctx: HintContext) -> bool:
        if ctx.kind != "mismatch":
            return False
        wrong = mistake(ctx.ref_case, ctx.dtype)
        # The mistake must explain the failure: it has to differ from the true answer too.
        return _agree(ctx.actual, wrong, ctx.tolerance) and not _agree(
            wrong, ctx.expected, ctx.tolerance
        )

    def refuted_by(ctx: HintContext) -> bool:
        return not _agree(mistake(ctx.ref_case, ctx.dtype), ctx.expected, ctx.tolerance)

    return Hint(text, matches, refuted_by, short, mistake)


def masked_hint(text: str, mask: Callable[[Case], np.ndarray], short: str = "") -> Hint:
    """A hint for "right everywhere except on the rows ``mask(ref_case)`` selects": the
    output equals the reference off the mask and differs on it."""

    def matches(ctx: HintContext) -> bool:
        if ctx.kind != "mismatch":
            return False
        actual = np.asarray(to_numpy_tree(ctx.actual), dtype=np.float64)
        expected = np.asarray(to_numpy_tree(ctx.expected), dtype=np.float64)
        rows = np.asarray(mask(ctx.ref_case), dtype=bool)
        if actual.shape != expected.shape or not rows.any():
            return False
        rows = np.broadcast_to(
            rows.reshape(rows.shape + (1,) * (actual.ndim - rows.ndim)), actual.shape
        )
        off_ok = _agree(np.where(rows, 0.0, actual), np.where(rows, 0.0, expected), ctx.tolerance)
        on_ok = _agree(np.where(rows, actual, 0.0), np.where(rows, expected, 0.0), ctx.tolerance)
        return off_ok and not on_ok

    return Hint(text, matches, None, short)


def input_hint(
    text: str, kinds: tuple[str, ...], predicate: Callable[[Case], bool], short: str = ""
) -> Hint:
    """A hint for a failure of one of ``kinds`` (e.g. ``raised``) on inputs where
    ``predicate(ref_case)`` holds, such as an image without GT boxes."""

    def matches(ctx: HintContext) -> bool:
        return ctx.kind in kinds and bool(predicate(ctx.ref_case))

    return Hint(text, matches, None, short)


# --------------------------------------------------------------------------------------
# get_fpn_location_coords(shape_per_fpn_level, strides_per_fpn_level, dtype, device)
# --------------------------------------------------------------------------------------


def _locations_mistake(
    *, transposed: bool = False, floor_half: bool = False, row_index: bool = False
):
    """The reference with a mistake made on purpose: ``transposed`` puts x as the slow index
    (row k is cell (h, w) with k = w*H + h); ``row_index`` keeps the row order but takes x
    from the row index h and y from the column index w; ``floor_half`` uses stride // 2."""

    def mistake(ref_case: Case, dtype: torch.dtype) -> dict[str, np.ndarray]:
        shapes, strides = ref_case.args[:2]
        result = {}
        for level, shape in shapes.items():
            stride = strides[level]
            one_level = ({level: shape}, {level: stride})
            if floor_half:  # the cell corners, then a whole-pixel half stride: exact
                points = reference_locations(*one_level, offset=0.0)[level] + int(stride) // 2
            else:
                points = reference_locations(*one_level)[level]
            if transposed:
                height, width = int(shape[-2]), int(shape[-1])
                points = points.reshape(height, width, 2).transpose(1, 0, 2).reshape(-1, 2)
            if row_index:  # row h*W + w holds (stride * (h + 0.5), stride * (w + 0.5))
                points = points[:, ::-1]
            result[level] = points
        return result

    return mistake


_HINT_TRANSPOSED = (
    "rows are in transposed order (x is the slow index): row k must be cell (h, w) with "
    "k = h*W + w, e.g. meshgrid(ys, xs, indexing='ij'), to line up with a head output "
    "flattened by permute(0, 2, 3, 1).reshape(B, H*W, C)"
)
_HINT_ROW_INDEX = (
    "x is taken from the row index h and y from the column index w: row k = h*W + w must be "
    "(x, y) = (stride * (w + 0.5), stride * (h + 0.5)); with meshgrid(..., indexing='ij') "
    "the first grid is the row (y) grid"
)
_HINT_STRIDE_FLOOR = (
    "offsets use stride // 2: the cell centre is stride * (index + 0.5), which differs for "
    "odd strides (stride 7: 3.5, not 3)"
)

LOCATIONS_HINTS = (
    mistake_hint(_HINT_ROW_INDEX, _locations_mistake(row_index=True), "x from the row index"),
    mistake_hint(
        _HINT_TRANSPOSED, _locations_mistake(transposed=True), "transposed location order"
    ),
    mistake_hint(_HINT_STRIDE_FLOOR, _locations_mistake(floor_half=True), "stride // 2 offsets"),
    mistake_hint(
        _HINT_ROW_INDEX + "; and " + _HINT_STRIDE_FLOOR,
        _locations_mistake(floor_half=True, row_index=True),
        "x from the row index + stride // 2 offsets",
    ),
    mistake_hint(
        _HINT_TRANSPOSED + "; and " + _HINT_STRIDE_FLOOR,
        _locations_mistake(transposed=True, floor_half=True),
        "transposed order + stride // 2 offsets",
    ),
)

LOCATIONS_PROBES = (
    Probe(
        "odd stride 7 on a 2x3 map",
        lambda: Case(({"p3": (1, 1, 2, 3)}, {"p3": 7}), {}),
    ),
    Probe(
        "a non-square map (2 rows, 3 columns), stride 8",
        lambda: Case(({"p3": (1, 1, 2, 3)}, {"p3": 8}), {}),
    ),
)


# --------------------------------------------------------------------------------------
# fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[N, 5])
# --------------------------------------------------------------------------------------


def _matching_mistake(*, inclusive: bool = False, tie: str = "min"):
    """The reference with a mistake made on purpose: ``inclusive`` size bounds
    (low <= m <= high); ``tie`` "max", the largest box wins; ``tie`` "f32", the course
    code's ``1e8 - area`` quality in the boxes' dtype, the first maximum winning."""

    def mistake(ref_case: Case, dtype: torch.dtype) -> dict[str, np.ndarray]:
        locations, strides, gt = ref_case.args[:3]
        ranges = default_size_ranges({level: strides[level] for level in locations})
        area_key: Callable[[float], float] | None = None
        if tie == "max":
            area_key = np.negative
        elif tie == "f32":
            np_dtype = _numpy_dtype(dtype)

            def area_key(area: float) -> float:
                return -float(np_dtype(np_dtype(1e8) - np_dtype(area)))

        count = int(np.prod(gt.shape[:-2], dtype=np.int64))
        images = gt.reshape(count, *gt.shape[-2:])
        result = {}
        for level, points in locations.items():
            low, high = ranges[level]
            if inclusive:  # low <= m <= high is low' < m < high' one float64 step further out
                low, high = np.nextafter(low, -np.inf), np.nextafter(high, np.inf)
            per_image = []
            for boxes in images:
                index = reference_match_image(
                    points, float(strides[level]), low, high, None, boxes, area_key=area_key
                )
                rows = np.full((len(points), 5), -1.0)
                rows[index >= 0] = boxes[index[index >= 0]]
                per_image.append(rows)
            result[level] = np.stack(per_image).reshape(*gt.shape[:-2], len(points), 5)
        return result

    return mistake


_HINT_INCLUSIVE = (
    "size bounds are inclusive: a location matches a level only when its largest distance "
    "m is strictly inside the range, low < m < high (m == 64 matches neither p3 nor p4)"
)
_HINT_MAX_AREA = (
    "ties between overlapping boxes go to the largest box: the smallest-area box must win "
    "(equal areas: the lowest box index)"
)
_HINT_F32_TRICK = (
    "the `1e8 - area` float32 quality ties areas within about 8 px^2 (float32 spacing at 1e8 "
    "is 8): compare areas exactly, e.g. argmin over area with non-candidates set to +inf"
)
_HINT_EMPTY_GT = (
    "fails on an image without real GT boxes: return a row of -1 for every location (FCOS "
    "crashed there too: https://github.com/tianzhi0549/FCOS/issues/190, "
    "https://github.com/tianzhi0549/FCOS/issues/312)"
)


def _without_real_boxes(ref_case: Case) -> bool:
    gt = np.asarray(ref_case.args[2])
    return gt.shape[-2] == 0 or bool((gt[..., 4] == -1).all())


MATCHING_HINTS = (
    mistake_hint(_HINT_INCLUSIVE, _matching_mistake(inclusive=True), "inclusive size bounds"),
    mistake_hint(_HINT_MAX_AREA, _matching_mistake(tie="max"), "max-area tie-break"),
    mistake_hint(_HINT_F32_TRICK, _matching_mistake(tie="f32"), "1e8 - area float32 trick"),
    mistake_hint(
        _HINT_INCLUSIVE + "; and " + _HINT_MAX_AREA,
        _matching_mistake(inclusive=True, tie="max"),
        "inclusive bounds + max-area tie-break",
    ),
    input_hint(_HINT_EMPTY_GT, ("raised", "output"), _without_real_boxes, "fails without GT boxes"),
)


def _match_probe(locations, gt, strides=None) -> Callable[[], Case]:
    strides = strides or {"p3": 8, "p4": 16, "p5": 32}

    def build() -> Case:
        locs = {
            level: np.array(locations.get(level, []), dtype=np.float64).reshape(-1, 2)
            for level in strides
        }
        return Case((locs, dict(strides), np.array(gt, dtype=np.float64).reshape(-1, 5)), {})

    return build


MATCHING_PROBES = (
    Probe(
        "largest distance exactly 64 (the p3/p4 size bound)",
        # Location (68, 68) in box (4, 4, 132, 132): all four distances are 64.
        _match_probe(
            {"p3": [[68, 68]], "p4": [[68, 68]], "p5": [[68, 68]]},
            [[4, 4, 132, 132, 3]],
        ),
    ),
    Probe(
        "nested boxes: the smaller one wins",
        # (20, 20) lies in both; areas 1600 and 400 -> box 1.
        _match_probe({"p3": [[20, 20]]}, [[0, 0, 40, 40, 1], [10, 10, 30, 30, 2]]),
    ),
    Probe(
        "an image whose GT rows are all padding (-1)",
        _match_probe({"p3": [[4, 4], [12, 4]], "p4": [[8, 8]]}, -np.ones((3, 5))),
    ),
    Probe(
        "areas 1681 and 1680: exact comparison, not 1e8 - area in float32",
        # 1e8 - 1681 and 1e8 - 1680 round to the same float32 (spacing 8): box 1 is smaller.
        _match_probe({"p3": [[20, 20]]}, [[0, 0, 41, 41, 1], [0, 0, 40, 42, 2]]),
        shared=False,
        departure="detops compares areas exactly, so the smaller box wins; float32 "
        "`1e8 - area` (the course code) cannot tell areas within about 8 px^2 apart and "
        "keeps the lower index",
        tag="area ties below float32 resolution",
    ),
    Probe(
        "image with zero GT rows (N = 0)",
        _match_probe({"p3": [[4, 4], [12, 4]], "p4": [[8, 8]]}, np.zeros((0, 5))),
        shared=False,
        departure="detops returns -1 rows for an image with zero GT rows; the course pads "
        "every image to 40 rows, so its code never sees N = 0",
        tag="zero GT rows",
    ),
    Probe(
        "a padding row (class -1) with real coordinates",
        _match_probe({"p3": [[20, 20]]}, [[0, 0, 40, 40, -1]]),
        shared=False,
        departure="detops treats every class -1 row as padding, whatever its coordinates; "
        "the course's padding rows are all -1, so its code only looks at coordinates",
        tag="class -1 rows with coordinates",
    ),
)


# --------------------------------------------------------------------------------------
# fcos_get_deltas_from_locations(locations[L, 2], gt_boxes[L, 4 or 5], stride: int)
# fcos_apply_deltas_to_locations(deltas[L, 4], locations[L, 2], stride: int)
# fcos_make_centerness_targets(deltas[L, 4])
# --------------------------------------------------------------------------------------


def _background_gt(ref_case: Case) -> np.ndarray:
    locations, gt = ref_case.args[0], ref_case.args[1]
    lead = np.broadcast_shapes(np.shape(locations)[:-1], np.shape(gt)[:-1])
    return np.broadcast_to((np.asarray(gt)[..., :4] == -1).all(axis=-1), lead)


def _deltas_unscaled(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference with stride 1."""
    locations, gt = ref_case.args[:2]
    return reference_get_deltas(locations, gt, 1)


DELTAS_HINTS = (
    masked_hint(
        "background rows (GT all -1) must give deltas (-1, -1, -1, -1)",
        _background_gt,
        "background deltas not -1",
    ),
    mistake_hint(
        "the deltas are not divided by the stride", _deltas_unscaled, "not divided by stride"
    ),
)

DELTAS_PROBES = (
    Probe(
        "one foreground and one background location, stride 8",
        lambda: Case(
            (
                np.array([[30.0, 40.0], [12.0, 4.0]]),
                np.array([[10.0, 15.0, 100.0, 115.0, 4.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]),
                8,
            ),
            {},
        ),
    ),
)


def _apply_unclamped(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference without its clamp. Decoding is linear in the deltas: the negative
    parts, decoded from the origin with the stride's sign flipped, add back what the clamp
    took away."""
    deltas, locations, stride = ref_case.args[:3]
    deltas = np.asarray(deltas, dtype=np.float64)
    clamped = reference_apply_deltas(deltas, locations, stride)
    negative = np.maximum(-deltas, 0.0)
    origin = np.zeros_like(np.asarray(locations, dtype=np.float64))
    return clamped + reference_apply_deltas(negative, origin, -np.asarray(stride))


_HINT_UNCLAMPED = (
    "deltas are not clamped before decoding: negative deltas (background, -1) must be "
    "clamped to 0 first, giving a zero-size box at the location"
)

APPLY_DELTAS_HINTS = (mistake_hint(_HINT_UNCLAMPED, _apply_unclamped, "deltas not clamped"),)

APPLY_DELTAS_PROBES = (
    Probe(
        "background deltas (-1, -1, -1, -1) decode to a zero-size box",
        lambda: Case(
            (
                np.array([[2.5, 3.125, 8.75, 9.375], [-1.0, -1.0, -1.0, -1.0]]),
                np.array([[30.0, 40.0], [12.0, 4.0]]),
                8,
            ),
            {},
        ),
    ),
)


def _all_background(ref_case: Case) -> np.ndarray:
    return (np.asarray(ref_case.args[0]) == -1).all(axis=-1)


def _centerness_unguarded(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference without its zero-denominator guard: 0 / 0 is NaN there."""
    deltas = np.asarray(ref_case.args[0], dtype=np.float64)
    left, top, right, bottom = np.moveaxis(deltas, -1, 0)
    zero_denominator = np.maximum(left, right) * np.maximum(top, bottom) == 0
    foreground = (deltas >= 0).all(axis=-1)
    return np.where(zero_denominator & foreground, np.nan, reference_centerness(deltas))


CENTERNESS_HINTS = (
    masked_hint(
        "the centerness of background locations (deltas -1, -1, -1, -1) must be -1",
        _all_background,
        "background centerness not -1",
    ),
    mistake_hint(
        "0 / 0 gives NaN: a zero denominator (location on a box edge) must give 0",
        _centerness_unguarded,
        "NaN at zero denominator",
    ),
)

CENTERNESS_PROBES = (
    Probe(
        "known values from the course notebook, third row background",
        # deltas of boxes (10,15,100,115), (30,20,40,30) at (30,40), (32,29), stride 8.
        lambda: Case(
            (
                np.array(
                    [[2.5, 3.125, 8.75, 9.375], [0.25, 1.125, 1.0, 0.125], [-1, -1, -1, -1]],
                    dtype=np.float64,
                ),
            ),
            {},
        ),
    ),
    Probe(
        "a location on a box edge (zero denominator)",
        lambda: Case((np.array([[0.0, 1.0, 0.0, 2.0]]),), {}),
        shared=False,
        departure="detops gives 0 where a delta is 0 (a location on a box edge); matching "
        "never produces one (it needs all four distances > 0), and 0 / 0 would be NaN",
        tag="zero denominator",
    ),
    Probe(
        "a row with one negative delta, (1, -1, 1, 1)",
        lambda: Case((np.array([[1.0, -1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]),), {}),
        shared=False,
        departure="detops gives -1 to any row with a negative delta (a location outside "
        "its box); matching never produces one: its background rows are all -1",
        tag="rows with one negative delta",
    ),
)


# --------------------------------------------------------------------------------------
# nms(boxes[N, 4], scores[N], iou_threshold) and class_spec_nms(..., class_ids[N], ...)
# --------------------------------------------------------------------------------------


def zero_union(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``[..., N, M]``: whether the union of the pair is 0 (two zero-area boxes), where
    IoU is 0 / 0."""
    b1, b2 = np.asarray(boxes1, dtype=np.float64), np.asarray(boxes2, dtype=np.float64)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return (area1[..., :, None] + area2[..., None, :]) == 0


def _just_below(threshold: float) -> float:
    # IoU >= t is IoU > t' for t' the float64 just below t.
    return float(np.nextafter(float(threshold), -np.inf))


def _nms_ge(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference suppressing at IoU == iou_threshold too."""
    a = named_arguments(ref_case, NMS_PARAMETERS)
    return reference_nms(a["boxes"], a["scores"], _just_below(a["iou_threshold"]))


def _class_nms_ge(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    a = named_arguments(ref_case, CLASS_NMS_PARAMETERS)
    return reference_class_nms(
        a["boxes"], a["scores"], a["class_ids"], _just_below(a["iou_threshold"])
    )


def _nms_never_suppresses(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference with an IoU threshold nothing exceeds: every box in score order."""
    a = named_arguments(ref_case, NMS_PARAMETERS)
    return reference_nms(a["boxes"], a["scores"], np.inf)


def offset_trick(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The course code's (and torchvision's) class-specific NMS: ``boxes + class_id *
    (max + 1)`` rounded to the input dtype, then the reference's plain NMS."""
    a = named_arguments(ref_case, CLASS_NMS_PARAMETERS)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    np_dtype = _numpy_dtype(dtype)
    classes = np.asarray(a["class_ids"]).reshape(-1).astype(np_dtype)
    top = boxes.astype(np_dtype).max()
    offsets = (classes * (top + np_dtype(1))).astype(np_dtype)
    shifted = (boxes.astype(np_dtype) + offsets[:, None]).astype(np_dtype)
    return reference_nms(shifted.astype(np.float64), a["scores"], a["iou_threshold"])


def _self_iou_loop_hangs(ref_case: Case) -> bool:
    """Whether the loop ``keep order[0]; order = order[~(iou(order[0], order) > t)]``, which
    relies on a box's IoU with itself (1 > t) to drop the kept box, runs forever."""
    a = named_arguments(ref_case, NMS_PARAMETERS)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(a["scores"], dtype=np.float64).reshape(-1)
    threshold = float(a["iou_threshold"])
    iou = np.where(zero_union(boxes, boxes), np.nan, reference_box_iou(boxes, boxes))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    for _ in range(len(order) + 1):
        if not order:
            return False
        first = order[0]
        order = [j for j in order if not iou[first, j] > threshold]
        if order and order[0] == first:
            return True
    return False


def _hang_hint(text: str, short: str) -> Hint:
    def matches(ctx: HintContext) -> bool:
        return ctx.kind == "timeout" and _self_iou_loop_hangs(ctx.ref_case)

    return Hint(text, matches, None, short)


_HINT_NMS_GE = (
    "suppresses at IoU == iou_threshold (`>=`): a box is suppressed only when its IoU with a "
    "kept box is > iou_threshold"
)
_HINT_OFFSET = (
    "the `boxes + class_id * (max + 1)` offset trick breaks with negative coordinates "
    "(max + 1 <= 0 puts classes on top of each other) and in float16/huge coordinates "
    "(rounding moves the boxes): run NMS per class, or offset by a span computed from min and max"
)
_HINT_NEVER_SUPPRESSES = (
    "nothing is ever suppressed: the result is every box in score order. Check that the "
    "boxes whose IoU with the kept box is > iou_threshold are really removed from the queue"
)
_HINT_SELF_IOU_HANG = (
    "hangs: the loop drops the kept box from the queue through its IoU with itself "
    "(1 > iou_threshold), but a zero-area box has IoU 0 / 0 = NaN with itself (and at "
    "iou_threshold 1.0, 1 > 1 is false), so it stays first forever; drop the kept box "
    "explicitly (order = order[1:][iou <= iou_threshold])"
)
_NAN_DEPARTURE = (
    "detops refuses a NaN score with ValueError; torchvision (and a plain sort) keeps the "
    "NaN-scored box first and lets it suppress others"
)
_HALF_DEPARTURE = (
    "detops computes float16 boxes in float32 and returns the same indices; torchvision's CPU "
    "kernel refuses float16"
)
_TIE_DEPARTURE = (
    "detops keeps equal scores in index order (a stable sort); torchvision leaves the order "
    "of ties unspecified"
)


def _nms_probe(boxes, scores, threshold, classes=None) -> Callable[[], Case]:
    def build() -> Case:
        b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.array(scores, dtype=np.float64).reshape(-1)
        if classes is None:
            return Case((b, s, threshold), {})
        return Case((b, s, np.array(classes, dtype=np.int64).reshape(-1), threshold), {})

    return build


NMS_HINTS = (
    mistake_hint(_HINT_NMS_GE, _nms_ge, ">= instead of >"),
    mistake_hint(_HINT_NEVER_SUPPRESSES, _nms_never_suppresses, "never suppresses"),
    _hang_hint(_HINT_SELF_IOU_HANG, "hangs: kept box removed by its self-IoU"),
)

_OVERLAPPING_PAIR = [[0, 0, 10, 10], [1, 1, 11, 11]]  # IoU 81 / 119
NMS_PROBES = (
    Probe(
        "ordinary suppression: IoU 0.68 > 0.5 is suppressed",
        _nms_probe([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5),
    ),
    Probe(
        "IoU exactly at the threshold (0.5) is kept",
        # (0,0,3,1) and (1,0,4,1): intersection 2, union 4 -> IoU 0.5, not > 0.5.
        _nms_probe([[0, 0, 3, 1], [1, 0, 4, 1]], [0.9, 0.8], 0.5),
    ),
    Probe(
        "a zero-area box among others",
        _nms_probe([[0, 0, 10, 10], [5, 5, 5, 5], [1, 1, 11, 11]], [0.9, 0.8, 0.7], 0.5),
    ),
    Probe(
        "two zero-area boxes (their IoU is 0 / 0)",
        _nms_probe([[0, 0, 0, 10], [5, 0, 5, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5),
        shared=False,
        departure="the IoU of two zero-area boxes is 0 / 0 = NaN, and NaN > iou_threshold "
        "is false: detops and torchvision keep both; a queue that keeps the boxes with "
        "IoU <= iou_threshold drops the later one (NaN <= t is false too)",
        tag="zero-area pair",
    ),
    Probe(
        "tied scores keep index order",
        _nms_probe([[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]], [0.5, 0.5, 0.5], 0.5),
        shared=False,
        departure=_TIE_DEPARTURE,
        tag="score ties out of index order",
    ),
    Probe(
        "a NaN score is refused",
        _nms_probe(_OVERLAPPING_PAIR, [np.nan, 0.9], 0.5),
        shared=False,
        departure=_NAN_DEPARTURE,
        tag="NaN score kept",
        refuse=True,
        control=_nms_probe(_OVERLAPPING_PAIR, [0.5, 0.9], 0.5),
        control_without="without the NaN (score 0.5 in its place)",
    ),
    Probe(
        "float16 boxes",
        _nms_probe([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5),
        dtype=torch.float16,
        shared=False,
        departure=_HALF_DEPARTURE,
        tag="float16",
        tolerance=Tolerance(0.0, 0.0),
    ),
    Probe(
        "no boxes",
        _nms_probe(np.zeros((0, 4)), np.zeros(0), 0.5),
        shared=False,
        departure="detops returns an empty int64 tensor for zero boxes",
        tag="no boxes",
    ),
)

CLASS_NMS_HINTS = (
    mistake_hint(_HINT_OFFSET, offset_trick, "class-offset trick"),
    mistake_hint(_HINT_NMS_GE, _class_nms_ge, ">= instead of >"),
    mistake_hint(_HINT_NEVER_SUPPRESSES, _nms_never_suppresses, "never suppresses"),
)

CLASS_NMS_PROBES = (
    Probe(
        "suppression within a class, none across classes",
        _nms_probe(
            [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], [0.9, 0.8, 0.7], 0.5, [0, 0, 1]
        ),
    ),
    Probe(
        "IoU exactly at the threshold within one class",
        _nms_probe([[0, 0, 3, 1], [1, 0, 4, 1]], [0.9, 0.8], 0.5, [2, 2]),
    ),
    Probe(
        "negative coordinates (max coordinate -1: the class offset is 0)",
        _nms_probe([[-10, -10, -1, -1], [-10, -10, -1, -1]], [0.9, 0.8], 0.5, [0, 1]),
        shared=False,
        departure="detops runs NMS per class, so classes never suppress each other; the "
        "`boxes + class_id * (max + 1)` offset trick (course code, torchvision) mixes them "
        "when the largest coordinate is below 0",
        tag="class-offset trick",
    ),
    Probe(
        "float16 boxes with 20 classes (offsets up to 20 * 1001 lose precision)",
        # class 19 holds two boxes with IoU 1/3 (both kept); offset by 19 * 1001 in
        # float16 (spacing 16) they round onto each other.
        _nms_probe(
            [[990, 990, 1000, 1000], [0, 0, 8, 8], [4, 0, 12, 8]],
            [0.7, 0.9, 0.8],
            0.5,
            [0, 19, 19],
        ),
        dtype=torch.float16,
        shared=False,
        tag="float16 / class-offset trick",
        departure="detops computes float16 boxes in float32, per class; the offset trick "
        "rounds float16 boxes onto each other and torchvision's CPU kernel refuses float16",
        tolerance=Tolerance(0.0, 0.0),
    ),
)


# --------------------------------------------------------------------------------------
# sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none")
# --------------------------------------------------------------------------------------


def focal_arguments(ref_case: Case) -> dict[str, Any]:
    """The focal loss's arguments by name, with the course's defaults."""
    return named_arguments(ref_case, FOCAL_PARAMETERS, **_FOCAL_DEFAULTS)


def _focal_swapped_alpha(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference with alpha weighting the other class (alpha -1, no weighting, stays)."""
    a = focal_arguments(ref_case)
    alpha = float(a["alpha"])
    swapped = 1.0 - alpha if alpha >= 0 else alpha
    return reference_focal_loss(a["inputs"], a["targets"], swapped, a["gamma"], a["reduction"])


def _empty_mean(ref_case: Case) -> bool:
    a = focal_arguments(ref_case)
    return a["reduction"] == "mean" and np.asarray(a["inputs"]).size == 0


def _focal_probe(inputs, targets, **kwargs) -> Callable[[], Case]:
    def build() -> Case:
        return Case(
            (np.array(inputs, dtype=np.float64), np.array(targets, dtype=np.float64)), kwargs
        )

    return build


FOCAL_HINTS = (
    mistake_hint(
        "alpha weights the wrong class: alpha_t = alpha * t + (1 - alpha) * (1 - t)",
        _focal_swapped_alpha,
        "alpha on the wrong class",
    ),
    input_hint(
        "the mean over an empty input is NaN (0 / 0), as in torchvision",
        ("mismatch",),
        _empty_mean,
        "NaN mean of empty input",
    ),
)

_FOCAL_OUTSIDE_PIPELINE = (
    "the course pipeline passes one-hot targets and alpha 0.25; soft targets and alpha -1 "
    "(no weighting) are outside it, and forms exact only for 0/1 targets (pt = exp(-ce), "
    "alpha_t by where(t == 1)) are correct there. detops and torchvision compute the "
    "formula for every target in [0, 1]"
)

FOCAL_PROBES = (
    Probe(
        "saturated logits +-1e4",
        _focal_probe([[1e4, -1e4, 1e4, -1e4]], [[1.0, 0.0, 0.0, 1.0]]),
    ),
    Probe(
        "gamma 0.5 at saturated logits",
        _focal_probe([[30.0, -30.0]], [[1.0, 0.0]], gamma=0.5),
    ),
    Probe(
        "large |x| with a soft target (x = -10000, t = 0.00137, no alpha, gamma 0)",
        _focal_probe([-10000.0], [float(np.float32(0.00137))], alpha=-1.0, gamma=0.0),
        shared=False,
        departure=_FOCAL_OUTSIDE_PIPELINE,
        tag="soft target",
    ),
    Probe(
        "mean over an empty input is 0",
        _focal_probe(np.zeros((0, 3)), np.zeros((0, 3)), reduction="mean"),
        shared=False,
        departure="detops returns 0 for the mean over an empty input; torchvision returns "
        "NaN (0 / 0). The course never calls the loss on an empty input",
        tag="empty mean",
    ),
)


# --------------------------------------------------------------------------------------
# box_iou(boxes1[N, 4], boxes2[M, 4]) and clip_boxes_to_image(boxes[N, 4], size=(H, W))
# --------------------------------------------------------------------------------------


def _iou_union_zero(ref_case: Case) -> np.ndarray:
    return zero_union(*ref_case.args[:2])


def _iou_plus_one(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference on boxes one pixel wider and taller: the legacy x2 - x1 + 1 areas."""
    grown = []
    for boxes in ref_case.args[:2]:
        boxes = np.array(boxes, dtype=np.float64)
        boxes[..., 2:4] += 1
        grown.append(boxes)
    return reference_box_iou(*grown)


def _iou_probe(boxes1, boxes2) -> Callable[[], Case]:
    def build() -> Case:
        return Case(
            (
                np.array(boxes1, dtype=np.float64).reshape(-1, 4),
                np.array(boxes2, dtype=np.float64).reshape(-1, 4),
            ),
            {},
        )

    return build


BOX_IOU_HINTS = (
    masked_hint(
        "a pair whose union is 0 (two zero-area boxes) gives NaN (0 / 0), as in "
        "torchvision: detops gives 0",
        _iou_union_zero,
        "NaN IoU for zero union",
    ),
    mistake_hint(
        "areas use the legacy +1 pixel convention (x2 - x1 + 1)",
        _iou_plus_one,
        "+1 pixel areas",
    ),
)

BOX_IOU_PROBES = (
    Probe(
        "touching, nested and overlapping boxes",
        _iou_probe([[0, 0, 2, 2], [0, 0, 4, 4]], [[2, 0, 4, 2], [1, 1, 3, 3]]),
    ),
    Probe(
        "zero-area boxes (union 0)",
        _iou_probe([[5, 5, 5, 5], [0, 0, 2, 2]], [[5, 5, 5, 5], [3, 3, 3, 9]]),
        shared=False,
        departure="detops gives IoU 0 to a pair whose union is 0; torchvision gives NaN (0 / 0)",
        tag="zero union",
    ),
)


def _clip_swapped(ref_case: Case, dtype: torch.dtype) -> np.ndarray:
    """The reference with size read as (width, height)."""
    boxes, size = ref_case.args[:2]
    return reference_clip(boxes, tuple(size)[::-1])


CLIP_HINTS = (
    mistake_hint(
        "size is read as (width, height): it is (height, width); x is clamped to "
        "[0, width], y to [0, height]",
        _clip_swapped,
        "(width, height) swapped",
    ),
)

CLIP_PROBES = (
    Probe(
        "a wide image (height 10, width 40)",
        lambda: Case((np.array([[-5.0, -5.0, 50.0, 50.0], [5.0, 2.0, 30.0, 8.0]]), (10, 40)), {}),
    ),
)
