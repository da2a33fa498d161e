"""verify's course API specs: the course code's per-image signatures, its probes and known
mistakes, for ``python -m detops verify --impl``.

A user's implementation follows the course code: ``fcos_match_locations_to_gt``
takes one image's ``(N, 5)`` boxes, ``fcos_get_deltas_from_locations`` takes an integer
stride, ``nms`` takes ``(boxes, scores, iou_threshold)``. Each :class:`SeedSpec` here says
how to call such a function on a case drawn from the registry entry of the same name (one
call per image where the entry's cases are batched) and how to assemble the results into
the output form of the detops op, so the entry's reference, comparison and tolerances
judge it.

Each spec also carries

* **hints**: known mistakes, each a *mistake reference*: the reference with that mistake
  made on purpose (NumPy). When a user's output differs from the reference but equals a
  mistake reference on the same input, the report names the mistake. Nothing is guessed
  from strings.
* **probes**: small hand-made inputs aimed at one edge (IoU exactly at the threshold,
  ordinary suppression, a NaN score, zero-area boxes, the class-offset trick in float16,
  ...) that random generation would rarely hit; each is inside the shared contract (a
  failure is a FAIL) or outside it (a DEPARTS, with one line on what detops does there).
* **domain**: which generated cases lie inside the shared contract (the inputs the
  course's pipeline produces, where the course code and torchvision agree on the answer).
* **error_bound**: the error model, the rounding a correct implementation in the tested
  dtype may add on top of the registry's tolerance.

Only the NumPy references and this module meet the user's code; the registry is read, never
changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reference.boxes import box_iou as reference_box_iou

from .._seed_names import SEED_NAMES
from ..testing.compare import Tolerance, compare_trees, to_numpy_tree
from ..testing.entry import case_to_torch
from ..testing.families.nms import iou_matrix
from ..testing.strategies import Case

__all__ = [
    "SEED_NAMES",
    "SEED_SPECS",
    "CallFailure",
    "Hint",
    "HintContext",
    "Probe",
    "SeedSpec",
    "collect_problems",
    "report_problem",
    "spec_by_name",
]


class CallFailure(Exception):
    """The function under test misbehaved: ``kind`` is one of ``raised``, ``timeout``,
    ``mutated`` or ``output`` (wrong type, shape, dtype or device). ``key`` names the
    failure's family for reports (``dtype``, ``device``, ``shape``, ...), default ``kind``."""

    def __init__(self, kind: str, message: str, key: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.key = key or kind

    def __reduce__(self):  # pickled across the worker process
        return (CallFailure, (self.kind, self.message, self.key))


# Problems that do not stop the values from being compared (a wrong dtype, a wrong device,
# an input modified in place) are collected while a call runs, so that a report can give
# them *and* wrong values. Outside :func:`collect_problems` they raise at once.
_PROBLEMS: list[tuple[str, str, str]] | None = None


@contextmanager
def collect_problems() -> Iterator[list[tuple[str, str, str]]]:
    """Collect ``(kind, key, message)`` of the soft problems reported inside the block."""
    global _PROBLEMS
    saved, found = _PROBLEMS, []
    _PROBLEMS = found
    try:
        yield found
    finally:
        _PROBLEMS = saved


def report_problem(kind: str, key: str, message: str) -> None:
    """A soft problem: collected inside :func:`collect_problems`, else raised."""
    if _PROBLEMS is None:
        raise CallFailure(kind, message, key)
    if (kind, key, message) not in _PROBLEMS:
        _PROBLEMS.append((kind, key, message))


@dataclass(frozen=True)
class HintContext:
    """What a hint detector sees about one failing input."""

    case: Case  # the case as generated (NumPy)
    ref_case: Case  # float64 arrays of exactly the values the function saw
    dtype: torch.dtype
    kind: str  # "mismatch", "raised", ...
    actual: Any  # the function's output in reference form (None unless kind == "mismatch")
    expected: Any
    tolerance: Tolerance


@dataclass(frozen=True)
class Hint:
    """A known mistake. ``matches(context)`` decides whether a failure is that mistake;
    ``refuted_by(context)``, given an input the function got right, says whether the mistake
    would have got it wrong (then the function does not make this mistake)."""

    text: str
    matches: Callable[[HintContext], bool]
    refuted_by: Callable[[HintContext], bool] | None = None
    short: str = ""  # a few words for the summary table


@dataclass(frozen=True)
class Probe:
    """A hand-made input, aimed at one edge of the contract.

    ``shared`` probes lie inside the shared contract (the course code and torchvision
    agree on the answer): a wrong answer there is a FAIL. Other probes test where detops
    deliberately goes further (NaN refusal, empty inputs, float16, ...): a difference there
    is a DEPARTS, listed with ``departure``, one line on what detops does and why.
    ``tolerance`` is used for a dtype the registry entry has no tolerance for. ``refuse``
    marks an input detops refuses (NaN scores): detops raises, whatever the reference
    would compute.
    """

    label: str
    case: Callable[[], Case]
    dtype: torch.dtype = torch.float32
    departure: str = ""
    tolerance: Tolerance | None = None
    refuse: bool = False
    tag: str = ""  # the departure in a few words, for the summary table
    shared: bool = True


@dataclass(frozen=True)
class SeedSpec:
    """How to check a user's course-signature function against a registry entry.

    Attributes:
        name: the course code's function name (looked up in the user's module).
        signature: the course signature, for reports and the README.
        call: ``call(fn, case, dtype, device)`` runs ``fn`` (already guarded against hangs
            and input mutation) on ``case`` and returns the output in the form the detops op
            returns; it raises :class:`CallFailure` for an output of the wrong type, dtype or
            device.
        entry_name: the registry entry whose strategy, reference and tolerances apply.
        prepare: maps a registry case to one the course signature can take (dropping
            options the course code lacks, so the reference uses their defaults); ``None``
            skips the case.
        hints: known mistakes, tried on the final (shrunk) failing input.
        probes: hand-made inputs, checked before the generated ones.
        domain: ``domain(ref_case, dtype)`` is None for a case inside the shared contract
            (the inputs the course's pipeline produces, where the course code and
            torchvision agree), else a few words on why it is outside. Generated cases
            stay inside; only probes go outside.
        error_bound: ``error_bound(ref_case, expected, dtype)``, the rounding error a
            correct implementation in ``dtype`` may make, per output element, on top of the
            entry's tolerance (the error model: it grows with the conditioning).
    """

    name: str
    signature: str
    call: Callable[[Callable[..., Any], Case, torch.dtype, str], Any]
    entry_name: str
    prepare: Callable[[Case], Case | None] | None = None
    hints: tuple[Hint, ...] = ()
    probes: tuple[Probe, ...] = ()
    domain: Callable[[Case, torch.dtype], str | None] | None = None
    error_bound: Callable[[Case, Any, torch.dtype], Any] | None = None


# --------------------------------------------------------------------------------------
# Output checks: a wrong type, dtype or device is a failure with a reason, not a crash.
# --------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def expect_tensor(
    value: object,
    what: str,
    *,
    dtypes: Sequence[torch.dtype] | None,
    device: torch.device | str,
    ndim: int | None = None,
) -> Tensor:
    """Check that ``value`` is a tensor of one of ``dtypes`` on ``device`` (device type;
    index ignored) with ``ndim`` dimensions.

    Not a tensor, the meta device or the wrong number of dims raise :class:`CallFailure`.
    A wrong dtype or (readable) device is a soft problem (:func:`report_problem`): the
    value is converted so that its values can still be judged."""
    if not isinstance(value, Tensor):
        raise CallFailure(
            "output", f"{what} must be a torch.Tensor, got {type(value).__name__}", "type"
        )
    if value.device.type != torch.device(device).type:
        message = f"{what} is on device {value.device}, expected {device}"
        if value.device.type == "meta":
            raise CallFailure("output", message, "device")
        report_problem("output", "device", message)
        value = value.to(device)
    if dtypes is not None and value.dtype not in tuple(dtypes):
        wanted = " or ".join(_dtype_name(d) for d in dtypes)
        report_problem(
            "output", "dtype", f"{what} has dtype {_dtype_name(value.dtype)}, expected {wanted}"
        )
        value = value.to(tuple(dtypes)[0])
    if ndim is not None and value.dim() != ndim:
        raise CallFailure(
            "output",
            f"{what} has shape {list(value.shape)} ({value.dim()} dims), expected {ndim} dims",
            "shape",
        )
    return value


def _float_out(dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """Accepted output dtypes for floating inputs of ``dtype``: the same, or float32 for
    half types (computed in float32, as torchvision does)."""
    if dtype in (torch.float16, torch.bfloat16):
        return (dtype, torch.float32)
    return (dtype,)


def _number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _stride_groups(stride: object, count: int) -> list[tuple[int | float, Tensor | None]]:
    """Split a per-location stride ``Tensor[L]`` into ``(stride, indices)`` groups; a number
    stride is one group over everything (``indices=None``)."""
    if not isinstance(stride, Tensor):
        return [(_number(stride), None)]
    flat = stride.reshape(-1)
    if flat.numel() != count:
        flat = flat.expand(count // max(flat.numel(), 1), flat.numel()).reshape(-1)
    groups = []
    for value in torch.unique(flat):
        groups.append((_number(value), torch.nonzero(flat == value).reshape(-1)))
    return groups


def _broadcast_lead(*tensors: Tensor) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(*(t.shape[:-1] for t in tensors)))


def _per_location(
    fn: Callable[..., Any],
    first: Tensor,
    second: Tensor,
    stride: object,
    *,
    what: str,
    out_dtypes: tuple[torch.dtype, ...],
    device: str,
) -> Tensor:
    """Call ``fn(first_rows, second_rows, stride)`` once per distinct stride on the rows
    flattened over all leading dims, then reassemble ``[..., L, 4]``."""
    lead = _broadcast_lead(first, second)
    a = first.expand(*lead, first.shape[-1]).reshape(-1, first.shape[-1])
    b = second.expand(*lead, second.shape[-1]).reshape(-1, second.shape[-1])
    count = a.shape[0]
    if isinstance(stride, Tensor) and stride.dim() > 0:
        stride = stride.expand(lead) if stride.shape != lead else stride
    result: Tensor | None = None
    for value, index in _stride_groups(stride, count):
        rows_a = a if index is None else a[index]
        rows_b = b if index is None else b[index]
        piece = expect_tensor(fn(rows_a, rows_b, value), what, dtypes=out_dtypes, device=device)
        if tuple(piece.shape) != (rows_a.shape[0], 4):
            raise CallFailure(
                "output", f"{what} has shape {list(piece.shape)}, expected [{rows_a.shape[0]}, 4]"
            )
        if index is None:
            result = piece
        else:
            if result is None:
                result = torch.full((count, 4), float("nan"), dtype=piece.dtype, device=device)
            result[index] = piece
    if result is None:  # no locations at all
        result = torch.empty((0, 4), dtype=out_dtypes[0], device=device)
    return result.reshape(*lead, 4)


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

    return Hint(text, matches, refuted_by, short)


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


def _prepare_locations(case: Case) -> Case:
    shapes, strides = case.args[:2]
    # The course code passes feature shapes (B, C, H, W) and has no ``offset`` (it is 0.5).
    shapes4 = {level: tuple(s) if len(s) == 4 else (1, 1, *s) for level, s in shapes.items()}
    return Case((shapes4, dict(strides)), {})


def _call_locations(fn, case: Case, dtype: torch.dtype, device: str):
    shapes, strides = case.args
    out = fn({level: torch.Size(s) for level, s in shapes.items()}, dict(strides), dtype, device)
    if not isinstance(out, Mapping):
        raise CallFailure(
            "output", f"the result must be a dict of tensors, got {type(out).__name__}"
        )
    checked = {}
    for level in shapes:
        if level not in out:
            raise CallFailure("output", f"the result has no entry for level {level!r}")
        checked[level] = expect_tensor(
            out[level], f"result[{level!r}]", dtypes=(dtype,), device=device
        )
    return {level: checked.get(level, out[level]) for level in out}


def _locations_mistake(*, transposed: bool, floor_half: bool, row_index: bool = False):
    """The reference with a mistake made on purpose: ``transposed`` puts x as the slow index
    (row k is cell (h, w) with k = w*H + h); ``row_index`` keeps the row order but takes x
    from the row index h and y from the column index w; ``floor_half`` uses stride // 2."""

    def mistake(ref_case: Case, dtype: torch.dtype):
        shapes, strides = ref_case.args[:2]
        result = {}
        for level, shape in shapes.items():
            height, width = int(shape[-2]), int(shape[-1])
            stride = strides[level]
            offset = (int(stride) // 2) if floor_half else stride * 0.5
            ys = stride * np.arange(height, dtype=np.float64) + offset
            xs = stride * np.arange(width, dtype=np.float64) + offset
            if transposed:  # x is the slow index
                gx, gy = np.meshgrid(xs, ys, indexing="ij")
            elif row_index:  # x from the row (h), y from the column (w)
                gx, gy = np.meshgrid(ys, xs, indexing="ij")
            else:
                gy, gx = np.meshgrid(ys, xs, indexing="ij")
            result[level] = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=-1)
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


def _locations_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    shapes = ref_case.args[0]
    if any(int(s[-2]) * int(s[-1]) == 0 for s in shapes.values()):
        return "an empty feature map"
    return None


LOCATIONS = SeedSpec(
    name="get_fpn_location_coords",
    signature="get_fpn_location_coords(shape_per_fpn_level, strides_per_fpn_level, "
    "dtype=torch.float32, device='cpu') -> {level: Tensor[H*W, 2]}",
    call=_call_locations,
    entry_name="get_fpn_location_coords",
    prepare=_prepare_locations,
    domain=_locations_domain,
    hints=(
        mistake_hint(
            _HINT_ROW_INDEX,
            _locations_mistake(transposed=False, floor_half=False, row_index=True),
            "x from the row index",
        ),
        mistake_hint(
            _HINT_TRANSPOSED,
            _locations_mistake(transposed=True, floor_half=False),
            "transposed location order",
        ),
        mistake_hint(
            _HINT_STRIDE_FLOOR,
            _locations_mistake(transposed=False, floor_half=True),
            "stride // 2 offsets",
        ),
        mistake_hint(
            _HINT_ROW_INDEX + "; and " + _HINT_STRIDE_FLOOR,
            _locations_mistake(transposed=False, floor_half=True, row_index=True),
            "x from the row index + stride // 2 offsets",
        ),
        mistake_hint(
            _HINT_TRANSPOSED + "; and " + _HINT_STRIDE_FLOOR,
            _locations_mistake(transposed=True, floor_half=True),
            "transposed order + stride // 2 offsets",
        ),
    ),
    probes=(
        Probe(
            "odd stride 7 on a 2x3 map",
            lambda: Case(({"p3": (1, 1, 2, 3)}, {"p3": 7}), {}),
        ),
        Probe(
            "a non-square map (2 rows, 3 columns), stride 8",
            lambda: Case(({"p3": (1, 1, 2, 3)}, {"p3": 8}), {}),
        ),
    ),
)


# --------------------------------------------------------------------------------------
# fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[N, 5])
# --------------------------------------------------------------------------------------


def _prepare_matching(case: Case) -> Case | None:
    # The course code has neither ``size_ranges`` nor ``center_sampling_radius``: drop them
    # so the reference uses the defaults it hard-codes. Padding rows are all -1 in the
    # course's data: a class -1 row with real coordinates becomes such a row.
    locations, strides, gt = case.args[:3]
    gt = np.array(gt, dtype=np.float64, copy=True)
    gt[gt[..., 4] == -1] = -1.0
    return Case((locations, strides, gt), {})


_EPS32 = float(np.finfo(np.float32).eps)


def _f32_quality_ties(gt: np.ndarray) -> bool:
    """Whether two real rows have different areas that the course code's float32
    ``1e8 - area`` cannot tell apart."""
    for image in gt.reshape(-1, gt.shape[-2], 5) if gt.size else ():
        real = image[image[:, 4] != -1]
        area = (real[:, 2] - real[:, 0]) * (real[:, 3] - real[:, 1])
        quality = (np.float32(1e8) - area.astype(np.float32)).astype(np.float32)
        quality64 = (1e8 - area).astype(np.float32)
        differ = area[:, None] != area[None, :]
        if (differ & (quality[:, None] == quality[None, :])).any():
            return True
        if (differ & (quality64[:, None] == quality64[None, :])).any():
            return True
    return False


def _matching_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    gt = np.asarray(ref_case.args[2])
    if gt.shape[-2] == 0:
        return "an image with zero GT rows (the course pads every image to 40 rows)"
    padding = gt[..., 4] == -1
    if (padding & ~(gt[..., :4] == -1).all(axis=-1)).any():
        return "a padding row (class -1) with real coordinates"
    if _f32_quality_ties(gt):
        return "two GT areas closer than float32 resolves at 1e8"
    return None


def _call_matching(fn, case: Case, dtype: torch.dtype, device: str):
    locations, strides, gt = case_to_torch(case.args, dtype, device)
    count = int(np.prod(gt.shape[:-2], dtype=np.int64))
    images = [gt] if gt.dim() == 2 else list(gt.reshape(count, *gt.shape[-2:]))
    outputs = []
    for index, image_gt in enumerate(images):
        out = fn(dict(locations), dict(strides), image_gt.clone())
        if not isinstance(out, Mapping):
            raise CallFailure(
                "output", f"the result must be a dict of tensors, got {type(out).__name__}"
            )
        checked = {}
        for level, locs in locations.items():
            if level not in out:
                raise CallFailure("output", f"the result has no entry for level {level!r}")
            value = expect_tensor(
                out[level], f"result[{level!r}] (image {index})", dtypes=(dtype,), device=device
            )
            if tuple(value.shape) != (locs.shape[0], 5):
                raise CallFailure(
                    "output",
                    f"result[{level!r}] has shape {list(value.shape)}, expected "
                    f"[{locs.shape[0]}, 5] (one GT row per location)",
                )
            checked[level] = value
        outputs.append(checked)
    if gt.dim() == 2:
        return outputs[0]
    lead = gt.shape[:-2]
    return {
        level: torch.stack([o[level] for o in outputs]).reshape(*lead, locs.shape[0], 5)
        for level, locs in locations.items()
    }


def _default_bounds(strides: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    order = sorted(strides, key=lambda level: strides[level])
    bounds = {}
    for i, level in enumerate(order):
        low = 0.0 if i == 0 else 4.0 * strides[level]
        high = np.inf if i == len(order) - 1 else 8.0 * strides[level]
        bounds[level] = (low, high)
    return bounds


def _match_image(locs, gt, low, high, *, inclusive: bool, tie: str, np_dtype) -> np.ndarray:
    """One image, one level, with the mistakes switched on by the flags (vectorized)."""
    out = np.full((locs.shape[0], 5), -1.0)
    if gt.shape[0] == 0 or locs.shape[0] == 0:
        return out
    x, y = locs[:, 0:1], locs[:, 1:2]
    dist = np.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], axis=-1)
    m = dist.max(axis=-1)
    in_range = (m >= low) & (m <= high) if inclusive else (m > low) & (m < high)
    candidate = (dist.min(axis=-1) > 0) & in_range & (gt[:, 4] != -1)[None, :]
    area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    if tie == "f32":  # the course's ``1e8 - area`` quality in the boxes' dtype, first max wins
        quality = (np_dtype(1e8) - area.astype(np_dtype)).astype(np_dtype)
        score = np.where(candidate, quality, np_dtype(0)).astype(np.float64)
        best = score.argmax(axis=1)
        matched = score[np.arange(len(best)), best] >= 1e-5
    else:
        key = -area if tie == "min" else area
        score = np.where(candidate, key[None, :], -np.inf)
        best = score.argmax(axis=1)
        matched = candidate.any(axis=1)
    out[matched] = gt[best[matched]]
    return out


def _matching_mistake(*, inclusive: bool = False, tie: str = "min"):
    def mistake(ref_case: Case, dtype: torch.dtype):
        locations, strides, gt = ref_case.args[:3]
        bounds = _default_bounds({level: strides[level] for level in locations})
        np_dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(dtype, np.float32)
        count = int(np.prod(gt.shape[:-2], dtype=np.int64))
        images = gt.reshape(count, *gt.shape[-2:]) if gt.ndim > 2 else gt[None]
        result = {}
        for level, locs in locations.items():
            low, high = bounds[level]
            per_image = [
                _match_image(locs, g, low, high, inclusive=inclusive, tie=tie, np_dtype=np_dtype)
                for g in images
            ]
            stacked = np.stack(per_image)
            result[level] = (
                stacked[0] if gt.ndim == 2 else stacked.reshape(*gt.shape[:-2], len(locs), 5)
            )
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


def _match_probe(locations, gt, strides=None) -> Callable[[], Case]:
    strides = strides or {"p3": 8, "p4": 16, "p5": 32}

    def build() -> Case:
        locs = {
            level: np.array(locations.get(level, []), dtype=np.float64).reshape(-1, 2)
            for level in strides
        }
        return Case((locs, dict(strides), np.array(gt, dtype=np.float64).reshape(-1, 5)), {})

    return build


MATCHING = SeedSpec(
    name="fcos_match_locations_to_gt",
    signature="fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, "
    "gt_boxes[N, 5]) -> {level: Tensor[L, 5]}",
    call=_call_matching,
    entry_name="fcos_match_locations_to_gt",
    prepare=_prepare_matching,
    domain=_matching_domain,
    hints=(
        mistake_hint(_HINT_INCLUSIVE, _matching_mistake(inclusive=True), "inclusive size bounds"),
        mistake_hint(_HINT_MAX_AREA, _matching_mistake(tie="max"), "max-area tie-break"),
        mistake_hint(_HINT_F32_TRICK, _matching_mistake(tie="f32"), "1e8 - area float32 trick"),
        mistake_hint(
            _HINT_INCLUSIVE + "; and " + _HINT_MAX_AREA,
            _matching_mistake(inclusive=True, tie="max"),
            "inclusive bounds + max-area tie-break",
        ),
        input_hint(
            _HINT_EMPTY_GT,
            ("raised", "output"),
            lambda c: (
                np.asarray(c.args[2]).shape[-2] == 0
                or bool((np.asarray(c.args[2])[..., 4] == -1).all())
            ),
            "fails without GT boxes",
        ),
    ),
    probes=(
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
    ),
)


# --------------------------------------------------------------------------------------
# fcos_get_deltas_from_locations(locations[L, 2], gt_boxes[L, 4 or 5], stride: int)
# fcos_apply_deltas_to_locations(deltas[L, 4], locations[L, 2], stride: int)
# fcos_make_centerness_targets(deltas[L, 4])
# --------------------------------------------------------------------------------------


def _call_get_deltas(fn, case: Case, dtype: torch.dtype, device: str):
    (locations, gt, stride), kwargs = case_to_torch((case.args, case.kwargs), dtype, device)
    if kwargs:
        raise CallFailure("output", f"unexpected options {sorted(kwargs)}")  # pragma: no cover
    return _per_location(
        fn,
        locations,
        gt,
        stride,
        what="the deltas",
        out_dtypes=_float_out(dtype),
        device=device,
    )


def _call_apply_deltas(fn, case: Case, dtype: torch.dtype, device: str):
    deltas, locations, stride = case_to_torch(case.args, dtype, device)
    return _per_location(
        fn,
        deltas,
        locations,
        stride,
        what="the boxes",
        out_dtypes=_float_out(dtype),
        device=device,
    )


def _call_centerness(fn, case: Case, dtype: torch.dtype, device: str):
    (deltas,) = case_to_torch(case.args, dtype, device)
    flat = deltas.reshape(-1, 4)
    out = expect_tensor(fn(flat), "the centerness", dtypes=_float_out(dtype), device=device)
    if tuple(out.shape) != (flat.shape[0],):
        raise CallFailure(
            "output", f"the centerness has shape {list(out.shape)}, expected [{flat.shape[0]}]"
        )
    return out.reshape(deltas.shape[:-1])


def _stride_array(stride, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(stride, dtype=np.float64), shape)


def _background_gt(ref_case: Case) -> np.ndarray:
    locations, gt = ref_case.args[0], ref_case.args[1]
    lead = np.broadcast_shapes(np.shape(locations)[:-1], np.shape(gt)[:-1])
    return np.broadcast_to((np.asarray(gt)[..., :4] == -1).all(axis=-1), lead)


def _deltas_unscaled(ref_case: Case, dtype: torch.dtype):
    locations, gt, stride = ref_case.args[:3]
    lead = np.broadcast_shapes(locations.shape[:-1], gt.shape[:-1])
    x, y = locations[..., 0], locations[..., 1]
    out = np.stack([x - gt[..., 0], y - gt[..., 1], gt[..., 2] - x, gt[..., 3] - y], axis=-1)
    out = np.broadcast_to(out, lead + (4,)).copy()
    out[_background_gt(ref_case)] = -1.0
    return out


def _apply_unclamped(ref_case: Case, dtype: torch.dtype):
    deltas, locations, stride = ref_case.args[:3]
    lead = np.broadcast_shapes(deltas.shape[:-1], locations.shape[:-1])
    s = _stride_array(stride, lead)
    x, y = locations[..., 0], locations[..., 1]
    return np.stack(
        [
            x - deltas[..., 0] * s,
            y - deltas[..., 1] * s,
            x + deltas[..., 2] * s,
            y + deltas[..., 3] * s,
        ],
        axis=-1,
    )


def _centerness_background(ref_case: Case) -> np.ndarray:
    # Background deltas are (-1, -1, -1, -1); any negative delta is a location outside its
    # box, which the contract also treats as background.
    return (np.asarray(ref_case.args[0]) < 0).any(axis=-1)


def _centerness_unguarded(ref_case: Case, dtype: torch.dtype):
    d = np.asarray(ref_case.args[0], dtype=np.float64)
    lr_min, lr_max = np.minimum(d[..., 0], d[..., 2]), np.maximum(d[..., 0], d[..., 2])
    tb_min, tb_max = np.minimum(d[..., 1], d[..., 3]), np.maximum(d[..., 1], d[..., 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt((lr_min * tb_min) / (lr_max * tb_max))
    out[_centerness_background(ref_case)] = -1.0
    return out


def _eps(dtype: torch.dtype) -> float:
    """Unit roundoff of the precision a correct implementation computes in (half types are
    computed in float32, as torchvision does)."""
    return float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps)


def _prepare_deltas(case: Case) -> Case:
    # Matching outputs a GT row or a row of -1: a background row keeps class -1, a real row
    # a real class.
    locations, gt, stride = case.args[:3]
    gt = np.array(gt, dtype=np.float64, copy=True)
    background = (gt[..., :4] == -1).all(axis=-1)
    gt[background] = -1.0
    if gt.shape[-1] == 5:
        gt[..., 4] = np.where(~background & (gt[..., 4] == -1), 0.0, gt[..., 4])
    return Case((locations, gt, stride), dict(case.kwargs))


def _no_rows(array) -> bool:
    return int(np.prod(np.shape(array)[:-1], dtype=np.int64)) == 0


def _deltas_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    if _no_rows(ref_case.args[0]) or _no_rows(ref_case.args[1]):
        return "no locations"
    gt = np.asarray(ref_case.args[1])[..., :4]
    background = (gt == -1).all(axis=-1)
    partial = ~background & ((gt == -1).any(axis=-1) | (gt.sum(axis=-1) == -4))
    if partial.any():
        return "a GT row with some -1 coordinates, which matching never produces"
    return None


def _deltas_bound(ref_case: Case, expected, dtype: torch.dtype):
    # A float32 formula may divide first ((x / s) - (x1 / s)): the error is relative to the
    # coordinates, not to the difference.
    locations, gt, stride = ref_case.args[:3]
    lead = np.shape(expected)[:-1]
    loc = np.broadcast_to(np.abs(np.asarray(locations, dtype=np.float64)), lead + (2,))
    box = np.broadcast_to(np.abs(np.asarray(gt, dtype=np.float64)[..., :4]), lead + (4,))
    s = np.broadcast_to(np.abs(np.asarray(stride, dtype=np.float64)), lead)[..., None]
    scale = np.concatenate([loc, loc], axis=-1) + box
    return 4 * _eps(dtype) * scale / np.where(s > 0, s, 1.0)


def _apply_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    if _no_rows(ref_case.args[0]) or _no_rows(ref_case.args[1]):
        return "no locations"
    return None


def _centerness_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    if _no_rows(ref_case.args[0]):
        return "no locations"
    deltas = np.asarray(ref_case.args[0])
    background = (deltas == -1).all(axis=-1)
    if (~background & (deltas <= 0).any(axis=-1)).any():
        return "a row with a zero or negative delta, which matching never produces"
    return None


def _apply_bound(ref_case: Case, expected, dtype: torch.dtype):
    deltas, locations, stride = ref_case.args[:3]
    lead = np.shape(expected)[:-1]
    d = np.broadcast_to(np.clip(np.asarray(deltas, dtype=np.float64), 0, None), lead + (4,))
    loc = np.broadcast_to(np.abs(np.asarray(locations, dtype=np.float64)), lead + (2,))
    s = np.broadcast_to(np.abs(np.asarray(stride, dtype=np.float64)), lead)[..., None]
    return 4 * _eps(dtype) * (np.concatenate([loc, loc], axis=-1) + d * s)


def _prepare_centerness(case: Case) -> Case:
    # Matching gives a location either four positive distances (it must lie strictly
    # inside its box) or background (-1, -1, -1, -1).
    (deltas,) = case.args[:1]
    deltas = np.array(deltas, dtype=np.float64, copy=True)
    deltas[(deltas <= 0).any(axis=-1)] = -1.0
    return Case((deltas,), {})


def _centerness_bound(ref_case: Case, expected, dtype: torch.dtype):
    return 8 * _eps(dtype) * np.abs(np.asarray(expected, dtype=np.float64))


def _all_background(ref_case: Case) -> np.ndarray:
    return (np.asarray(ref_case.args[0]) == -1).all(axis=-1)


DELTAS = SeedSpec(
    name="fcos_get_deltas_from_locations",
    signature="fcos_get_deltas_from_locations(locations[L, 2], gt_boxes[L, 4 or 5], "
    "stride: int) -> Tensor[L, 4]",
    call=_call_get_deltas,
    entry_name="fcos_get_deltas_from_locations",
    prepare=_prepare_deltas,
    domain=_deltas_domain,
    error_bound=_deltas_bound,
    hints=(
        masked_hint(
            "background rows (GT all -1) must give deltas (-1, -1, -1, -1)",
            _background_gt,
            "background deltas not -1",
        ),
        mistake_hint(
            "the deltas are not divided by the stride", _deltas_unscaled, "not divided by stride"
        ),
    ),
    probes=(
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
    ),
)

_HINT_UNCLAMPED = (
    "deltas are not clamped before decoding: negative deltas (background, -1) must be "
    "clamped to 0 first, giving a zero-size box at the location"
)

APPLY_DELTAS = SeedSpec(
    name="fcos_apply_deltas_to_locations",
    signature="fcos_apply_deltas_to_locations(deltas[L, 4], locations[L, 2], stride: int) "
    "-> Tensor[L, 4]",
    call=_call_apply_deltas,
    entry_name="fcos_apply_deltas_to_locations",
    domain=_apply_domain,
    error_bound=_apply_bound,
    hints=(mistake_hint(_HINT_UNCLAMPED, _apply_unclamped, "deltas not clamped"),),
    probes=(
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
    ),
)

CENTERNESS = SeedSpec(
    name="fcos_make_centerness_targets",
    signature="fcos_make_centerness_targets(deltas[L, 4]) -> Tensor[L]",
    call=_call_centerness,
    entry_name="fcos_make_centerness_targets",
    prepare=_prepare_centerness,
    domain=_centerness_domain,
    error_bound=_centerness_bound,
    hints=(
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
    ),
    probes=(
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
    ),
)


# --------------------------------------------------------------------------------------
# nms(boxes[N, 4], scores[N], iou_threshold) and class_spec_nms(..., class_ids[N], ...)
# --------------------------------------------------------------------------------------


def _call_direct(out_check: Callable[[Any, Case, torch.dtype, str], Any]):
    def call(fn, case: Case, dtype: torch.dtype, device: str):
        args = case_to_torch(case.args, dtype, device)
        kwargs = case_to_torch(case.kwargs, dtype, device)
        return out_check(fn(*args, **kwargs), case, dtype, device)

    return call


def _check_indices(out, case: Case, dtype: torch.dtype, device: str):
    return expect_tensor(out, "the kept indices", dtypes=(torch.int64,), device=device, ndim=1)


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    return iou_matrix(boxes)  # the registry's float64 IoU (0 where the union is 0)


def _iou_bound(b1: np.ndarray, b2: np.ndarray, eps: float) -> np.ndarray:
    """The IoU error of a correct formula evaluated in a precision of unit roundoff ``eps``.

    Widths, heights, areas, the intersection and the union each carry one or two roundings
    relative to themselves (a difference of two coordinates the function received is
    rounded once, relative to the difference), the union never cancels (it is at least the
    larger area): a dozen roundings in all, relative to an IoU of at most 1."""
    b1 = np.asarray(b1, dtype=np.float64)[..., :, None, :]
    b2 = np.asarray(b2, dtype=np.float64)[..., None, :, :]
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    iw = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0, None)
    ih = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0, None)
    union = w1 * h1 + w2 * h2 - iw * ih
    return np.where(union > 0, 16 * eps, 0.0)


def _greedy_nms(boxes, scores, threshold, *, suppress_equal=False, classes=None) -> np.ndarray:
    """Greedy NMS for mistake references: score descending, ties by lower index."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iou = reference_box_iou(b, b)
    kept: list[int] = []
    for i in order:
        suppressed = False
        for k in kept:
            if classes is not None and classes[k] != classes[i]:
                continue
            if iou[i, k] > threshold or (suppress_equal and iou[i, k] == threshold):
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def _nms_args(ref_case: Case):
    names = ("boxes", "scores", "iou_threshold")
    values = dict(zip(names, ref_case.args, strict=False))
    values.update(ref_case.kwargs)
    return values


def _nms_ge(ref_case: Case, dtype: torch.dtype):
    a = _nms_args(ref_case)
    return _greedy_nms(a["boxes"], a["scores"], float(a["iou_threshold"]), suppress_equal=True)


def _class_nms_args(ref_case: Case):
    names = ("boxes", "scores", "class_ids", "iou_threshold")
    values = dict(zip(names, ref_case.args, strict=False))
    values.update(ref_case.kwargs)
    return values


def _class_nms_ge(ref_case: Case, dtype: torch.dtype):
    a = _class_nms_args(ref_case)
    return _greedy_nms(
        a["boxes"],
        a["scores"],
        float(a["iou_threshold"]),
        suppress_equal=True,
        classes=np.asarray(a["class_ids"]).reshape(-1),
    )


def _offset_trick(ref_case: Case, dtype: torch.dtype):
    """The course code's (and torchvision's) ``boxes + class * (max + 1)`` then one plain NMS, with
    the offset boxes rounded to the input dtype."""
    a = _class_nms_args(ref_case)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    np_dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(dtype, np.float32)
    classes = np.asarray(a["class_ids"]).reshape(-1).astype(np_dtype)
    top = boxes.astype(np_dtype).max()
    offsets = (classes * (top + np_dtype(1))).astype(np_dtype)
    shifted = (boxes.astype(np_dtype) + offsets[:, None]).astype(np_dtype)
    return _greedy_nms(shifted.astype(np.float64), a["scores"], float(a["iou_threshold"]))


_HINT_NMS_GE = (
    "suppresses at IoU == iou_threshold (`>=`): a box is suppressed only when its IoU with a "
    "kept box is > iou_threshold"
)
_HINT_OFFSET = (
    "the `boxes + class_id * (max + 1)` offset trick breaks with negative coordinates "
    "(max + 1 <= 0 puts classes on top of each other) and in float16/huge coordinates "
    "(rounding moves the boxes): run NMS per class, or offset by a span computed from min and max"
)


def _nms_never_suppresses(ref_case: Case, dtype: torch.dtype):
    a = _nms_args(ref_case)
    scores = np.asarray(a["scores"], dtype=np.float64).reshape(-1)
    return np.array(sorted(range(len(scores)), key=lambda i: (-scores[i], i)), dtype=np.int64)


def _self_iou_loop_hangs(ref_case: Case) -> bool:
    """Whether the loop ``keep order[0]; order = order[~(iou(order[0], order) > t)]``, which
    relies on a box's IoU with itself (1 > t) to drop the kept box, runs forever."""
    a = _nms_args(ref_case)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(a["scores"], dtype=np.float64).reshape(-1)
    threshold = float(a["iou_threshold"])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(
        boxes[:, None, 0], boxes[None, :, 0]
    )
    ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(
        boxes[:, None, 1], boxes[None, :, 1]
    )
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area[:, None] + area[None, :] - inter)  # NaN for a zero union
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


def _class_nms_never_suppresses(ref_case: Case, dtype: torch.dtype):
    return _nms_never_suppresses(ref_case, dtype)


def _nms_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    a = _class_nms_args(ref_case) if len(ref_case.args) >= 4 else _nms_args(ref_case)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(a["scores"], dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        return "no boxes"
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return "NaN or infinite values"
    if len(np.unique(scores)) != len(scores):
        return "tied scores"
    iou = _iou_matrix(boxes)
    bound = _iou_bound(boxes, boxes, _eps(dtype))
    off = ~np.eye(len(boxes), dtype=bool)
    if (off & (np.abs(iou - float(a["iou_threshold"])) <= bound)).any():
        return "an IoU within rounding error of the threshold"
    return None


def _class_nms_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    reason = _nms_domain(ref_case, dtype)
    if reason is not None:
        return reason
    from reference.nms import class_spec_nms as reference_class_nms

    a = _class_nms_args(ref_case)
    expected = reference_class_nms(a["boxes"], a["scores"], a["class_ids"], a["iou_threshold"])
    trick = _offset_trick(ref_case, dtype)
    if not np.array_equal(np.asarray(expected).reshape(-1), np.asarray(trick).reshape(-1)):
        return "the class-offset trick (course code, torchvision) gives another answer"
    return None


def _nms_probe(boxes, scores, threshold, classes=None) -> Callable[[], Case]:
    def build() -> Case:
        b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.array(scores, dtype=np.float64).reshape(-1)
        if classes is None:
            return Case((b, s, threshold), {})
        return Case((b, s, np.array(classes, dtype=np.int64).reshape(-1), threshold), {})

    return build


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

NMS = SeedSpec(
    name="nms",
    signature="nms(boxes[N, 4], scores[N], iou_threshold=0.5) -> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="nms",
    domain=_nms_domain,
    hints=(
        mistake_hint(_HINT_NMS_GE, _nms_ge, ">= instead of >"),
        mistake_hint(_HINT_NEVER_SUPPRESSES, _nms_never_suppresses, "never suppresses"),
        _hang_hint(_HINT_SELF_IOU_HANG, "hangs: kept box removed by its self-IoU"),
    ),
    probes=(
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
            "tied scores keep index order",
            _nms_probe([[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]], [0.5, 0.5, 0.5], 0.5),
            shared=False,
            departure=_TIE_DEPARTURE,
            tag="score ties out of index order",
        ),
        Probe(
            "a NaN score is refused",
            _nms_probe([[0, 0, 10, 10], [1, 1, 11, 11]], [np.nan, 0.9], 0.5),
            shared=False,
            departure=_NAN_DEPARTURE,
            tag="NaN score kept",
            refuse=True,
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
    ),
)

CLASS_NMS = SeedSpec(
    name="class_spec_nms",
    signature="class_spec_nms(boxes[N, 4], scores[N], class_ids[N], iou_threshold=0.5) "
    "-> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="class_spec_nms",
    domain=_class_nms_domain,
    hints=(
        mistake_hint(_HINT_OFFSET, _offset_trick, "class-offset trick"),
        mistake_hint(_HINT_NMS_GE, _class_nms_ge, ">= instead of >"),
        mistake_hint(_HINT_NEVER_SUPPRESSES, _class_nms_never_suppresses, "never suppresses"),
    ),
    probes=(
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
    ),
)


# --------------------------------------------------------------------------------------
# sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none")
# --------------------------------------------------------------------------------------


def _check_loss(out, case: Case, dtype: torch.dtype, device: str):
    return expect_tensor(out, "the loss", dtypes=_float_out(dtype), device=device)


def _focal_args(ref_case: Case):
    names = ("inputs", "targets", "alpha", "gamma", "reduction")
    values = {"alpha": 0.25, "gamma": 2.0, "reduction": "none"}
    values.update(dict(zip(names, ref_case.args, strict=False)))
    values.update(ref_case.kwargs)
    return values


def _focal_swapped_alpha(ref_case: Case, dtype: torch.dtype):
    a = _focal_args(ref_case)
    x = np.asarray(a["inputs"], dtype=np.float64)
    t = np.asarray(a["targets"], dtype=np.float64)
    alpha, gamma = float(a["alpha"]), float(a["gamma"])
    p = np.exp(-np.logaddexp(0.0, -x))  # sigmoid without overflow
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = ((1 - alpha) * t + alpha * (1 - t)) * loss
    if a["reduction"] == "mean":
        return np.asarray(loss.mean() if loss.size else 0.0)
    if a["reduction"] == "sum":
        return np.asarray(loss.sum())
    return loss


def _focal_probe(inputs, targets, **kwargs) -> Callable[[], Case]:
    def build() -> Case:
        return Case(
            (np.array(inputs, dtype=np.float64), np.array(targets, dtype=np.float64)), kwargs
        )

    return build


def _focal_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    a = _focal_args(ref_case)
    x = np.asarray(a["inputs"], dtype=np.float64)
    if x.size == 0:
        return "an empty input"
    if not np.isfinite(x).all():
        return "NaN or infinite logits"
    return None


def _focal_bound(ref_case: Case, expected, dtype: torch.dtype):
    """The error model of the focal loss in a precision of unit roundoff ``eps``.

    ``ce = max(x, 0) - x * t + log1p(exp(-|x|))`` cancels: its error is about
    ``eps * |x|``, however small ``ce`` is (torchvision at x = -10000, t = 0.00137 gives
    13.7001953 for 13.6999995). ``1 - p_t`` has an absolute error of about ``eps``, which
    ``(1 - p_t) ** gamma`` turns into ``gamma * (1 - p_t) ** (gamma - 1) * eps``. Each
    element: ``4 * eps * |alpha_t| * ((1 + |x|) * (1 - p_t) ** gamma + ce * that)`` plus
    a few roundings of the result; a sum adds ``n * eps * sum |loss|``; a mean divides
    both by ``n``."""
    a = _focal_args(ref_case)
    x = np.asarray(a["inputs"], dtype=np.float64)
    t = np.asarray(a["targets"], dtype=np.float64)
    alpha, gamma = float(a["alpha"]), float(a["gamma"])
    eps = _eps(dtype)
    p = np.exp(-np.logaddexp(0.0, -x))
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    q = np.clip(1 - (p * t + (1 - p) * (1 - t)), 0.0, None)
    weight = np.abs(alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else np.ones_like(x)
    modulating = q**gamma
    if gamma > 0:
        dmod = gamma * np.maximum(q, eps) ** (gamma - 1) * eps
    else:
        dmod = np.zeros_like(x)
    loss = weight * ce * modulating
    element = 4 * weight * ((1 + np.abs(x)) * modulating * eps + ce * dmod) + 4 * eps * loss
    if a["reduction"] == "none":
        return element
    total = element.sum() + x.size * eps * np.abs(loss).sum()
    if a["reduction"] == "mean":
        return np.asarray(total / max(x.size, 1))
    return np.asarray(total)


FOCAL = SeedSpec(
    name="sigmoid_focal_loss",
    signature="sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction='none')",
    call=_call_direct(_check_loss),
    entry_name="sigmoid_focal_loss",
    domain=_focal_domain,
    error_bound=_focal_bound,
    hints=(
        mistake_hint(
            "alpha weights the wrong class: alpha_t = alpha * t + (1 - alpha) * (1 - t)",
            _focal_swapped_alpha,
            "alpha on the wrong class",
        ),
        input_hint(
            "the mean over an empty input is NaN (0 / 0), as in torchvision",
            ("mismatch",),
            lambda c: (
                _focal_args(c)["reduction"] == "mean"
                and np.asarray(_focal_args(c)["inputs"]).size == 0
            ),
            "NaN mean of empty input",
        ),
    ),
    probes=(
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
        ),
        Probe(
            "mean over an empty input is 0",
            _focal_probe(np.zeros((0, 3)), np.zeros((0, 3)), reduction="mean"),
            shared=False,
            departure="detops returns 0 for the mean over an empty input; torchvision returns "
            "NaN (0 / 0). The course never calls the loss on an empty input",
            tag="empty mean",
        ),
    ),
)


# --------------------------------------------------------------------------------------
# box_iou(boxes1[N, 4], boxes2[M, 4]) and clip_boxes_to_image(boxes[N, 4], size=(H, W))
# --------------------------------------------------------------------------------------


def _call_box_iou(fn, case: Case, dtype: torch.dtype, device: str):
    boxes1, boxes2 = case_to_torch(case.args, dtype, device)
    lead = tuple(torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2]))
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    count = int(np.prod(lead, dtype=np.int64))
    a = boxes1.expand(*lead, n, 4).reshape(count, n, 4)
    b = boxes2.expand(*lead, m, 4).reshape(count, m, 4)
    if boxes1.is_floating_point():
        out_dtypes = _float_out(dtype) if boxes1.dtype == dtype else (torch.float32,)
    else:
        out_dtypes = (torch.float32,)
    pieces = []
    for i in range(a.shape[0]):
        piece = expect_tensor(fn(a[i], b[i]), "the IoU matrix", dtypes=out_dtypes, device=device)
        if tuple(piece.shape) != (n, m):
            raise CallFailure(
                "output", f"the IoU matrix has shape {list(piece.shape)}, expected [{n}, {m}]"
            )
        pieces.append(piece)
    if not pieces:
        return torch.empty((*lead, n, m), dtype=out_dtypes[0], device=device)
    return torch.stack(pieces).reshape(*lead, n, m)


def _iou_union_zero(ref_case: Case) -> np.ndarray:
    b1, b2 = (np.asarray(v, dtype=np.float64) for v in ref_case.args[:2])
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return (area1[..., :, None] + area2[..., None, :]) == 0


def _iou_plus_one(ref_case: Case, dtype: torch.dtype):
    b1, b2 = (np.asarray(v, dtype=np.float64) for v in ref_case.args[:2])
    b1 = b1[..., :, None, :]
    b2 = b2[..., None, :, :]
    area1 = (b1[..., 2] - b1[..., 0] + 1) * (b1[..., 3] - b1[..., 1] + 1)
    area2 = (b2[..., 2] - b2[..., 0] + 1) * (b2[..., 3] - b2[..., 1] + 1)
    iw = np.clip(
        np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]) + 1, 0, None
    )
    ih = np.clip(
        np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]) + 1, 0, None
    )
    inter = iw * ih
    return inter / (area1 + area2 - inter)


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


def _box_iou_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    b1, b2 = (np.asarray(v, dtype=np.float64) for v in ref_case.args[:2])
    if b1.shape[-2] == 0 or b2.shape[-2] == 0:
        return "no boxes"
    if _iou_union_zero(ref_case).any():
        return "two zero-area boxes at the same point (union 0)"
    return None


def _box_iou_bound(ref_case: Case, expected, dtype: torch.dtype):
    b1, b2 = ref_case.args[:2]
    return np.broadcast_to(_iou_bound(b1, b2, _eps(dtype)), np.shape(expected))


BOX_IOU = SeedSpec(
    name="box_iou",
    signature="box_iou(boxes1[N, 4], boxes2[M, 4]) -> Tensor[N, M]",
    call=_call_box_iou,
    entry_name="box_iou",
    domain=_box_iou_domain,
    error_bound=_box_iou_bound,
    hints=(
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
    ),
    probes=(
        Probe(
            "touching, nested and overlapping boxes",
            _iou_probe([[0, 0, 2, 2], [0, 0, 4, 4]], [[2, 0, 4, 2], [1, 1, 3, 3]]),
        ),
        Probe(
            "zero-area boxes (union 0)",
            _iou_probe([[5, 5, 5, 5], [0, 0, 2, 2]], [[5, 5, 5, 5], [3, 3, 3, 9]]),
            shared=False,
            departure="detops gives IoU 0 to a pair whose union is 0; torchvision gives NaN "
            "(0 / 0)",
            tag="zero union",
        ),
    ),
)


def _prepare_clip(case: Case) -> Case:
    boxes, size = case.args[:2]
    # The course / torchvision contract is XYXY [..., 4]; five-column GT rows (class column
    # and padding kept) are a detops extension.
    return Case((np.asarray(boxes)[..., :4], tuple(int(v) for v in size)), {})


def _call_clip(fn, case: Case, dtype: torch.dtype, device: str):
    boxes, size = case_to_torch(case.args, dtype, device)
    flat = boxes.reshape(-1, 4)
    out = expect_tensor(
        fn(flat, tuple(size)), "the clipped boxes", dtypes=(boxes.dtype,), device=device
    )
    if tuple(out.shape) != tuple(flat.shape):
        raise CallFailure(
            "output", f"the clipped boxes have shape {list(out.shape)}, expected {list(flat.shape)}"
        )
    return out.reshape(boxes.shape)


def _clip_swapped(ref_case: Case, dtype: torch.dtype):
    boxes, size = ref_case.args[:2]
    height, width = size
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0, height)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, width)
    return out


CLIP = SeedSpec(
    name="clip_boxes_to_image",
    signature="clip_boxes_to_image(boxes[N, 4], size=(height, width)) -> Tensor[N, 4]",
    call=_call_clip,
    entry_name="clip_boxes_to_image",
    prepare=_prepare_clip,
    hints=(
        mistake_hint(
            "size is read as (width, height): it is (height, width); x is clamped to "
            "[0, width], y to [0, height]",
            _clip_swapped,
            "(width, height) swapped",
        ),
    ),
    probes=(
        Probe(
            "a wide image (height 10, width 40)",
            lambda: Case(
                (np.array([[-5.0, -5.0, 50.0, 50.0], [5.0, 2.0, 30.0, 8.0]]), (10, 40)), {}
            ),
        ),
    ),
)


SEED_SPECS: tuple[SeedSpec, ...] = (
    LOCATIONS,
    MATCHING,
    DELTAS,
    APPLY_DELTAS,
    CENTERNESS,
    NMS,
    CLASS_NMS,
    FOCAL,
    BOX_IOU,
    CLIP,
)


def spec_by_name(name: str) -> SeedSpec:
    for spec in SEED_SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"no course function named {name!r}; known: {list(SEED_NAMES)}")
