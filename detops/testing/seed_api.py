"""The course code's per-image function signatures, for ``python -m detops verify --impl``.

A user's implementation follows the seed (the course code): ``fcos_match_locations_to_gt``
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
* **probes**: small hand-made inputs aimed at one known departure (IoU exactly at the
  threshold, a NaN score, zero-area boxes, the class-offset trick in float16, ...) that
  random generation would rarely hit.

Only the NumPy references and this module meet the user's code; the registry is read, never
changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._seed_names import SEED_NAMES
from .compare import Tolerance, compare_trees, to_numpy_tree
from .entry import case_to_torch
from .strategies import Case

__all__ = [
    "SEED_NAMES",
    "SEED_SPECS",
    "CallFailure",
    "Hint",
    "HintContext",
    "Probe",
    "SeedSpec",
    "spec_by_name",
]

class CallFailure(Exception):
    """The function under test misbehaved: ``kind`` is one of ``raised``, ``timeout``,
    ``mutated`` or ``output`` (wrong type, shape, dtype or device)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


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
    """A hand-made input aimed at one known departure.

    ``departure`` is printed when the probe fails in one of ``departure_kinds`` ways and no
    mistake hint explains it. ``tolerance`` is used for a dtype the registry entry has no
    tolerance for. ``refuse`` marks an input outside the contract (NaN scores): the function
    must raise (any exception), whatever the reference would compute.
    """

    label: str
    case: Callable[[], Case]
    dtype: torch.dtype = torch.float32
    departure: str = ""
    tolerance: Tolerance | None = None
    departure_kinds: tuple[str, ...] = ("mismatch", "accepted")
    refuse: bool = False
    tag: str = ""  # the departure in a few words, for the summary table


@dataclass(frozen=True)
class SeedSpec:
    """How to check a user's seed-signature function against a registry entry.

    Attributes:
        name: the seed's function name (looked up in the user's module).
        signature: the seed signature, for reports and the README.
        call: ``call(fn, case, dtype, device)`` runs ``fn`` (already guarded against hangs
            and input mutation) on ``case`` and returns the output in the form the detops op
            returns; it raises :class:`CallFailure` for an output of the wrong type, dtype or
            device.
        entry_name: the registry entry whose strategy, reference and tolerances apply.
        prepare: maps a registry case to one the seed signature can take (dropping options
            the seed lacks, so the reference uses their defaults); ``None`` skips the case.
        hints: known mistakes, tried on the final (shrunk) failing input.
        probes: hand-made inputs, checked before the generated ones.
    """

    name: str
    signature: str
    call: Callable[[Callable[..., Any], Case, torch.dtype, str], Any]
    entry_name: str
    prepare: Callable[[Case], Case | None] | None = None
    hints: tuple[Hint, ...] = ()
    probes: tuple[Probe, ...] = ()


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
    """Raise :class:`CallFailure` unless ``value`` is a tensor of one of ``dtypes`` on
    ``device`` (device type; index ignored) with ``ndim`` dimensions."""
    if not isinstance(value, Tensor):
        raise CallFailure("output", f"{what} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in tuple(dtypes):
        wanted = " or ".join(_dtype_name(d) for d in dtypes)
        raise CallFailure(
            "output", f"{what} has dtype {_dtype_name(value.dtype)}, expected {wanted}"
        )
    if value.device.type != torch.device(device).type:
        raise CallFailure("output", f"{what} is on device {value.device}, expected {device}")
    if ndim is not None and value.dim() != ndim:
        raise CallFailure(
            "output",
            f"{what} has shape {list(value.shape)} ({value.dim()} dims), expected {ndim} dims",
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
    # The seed passes feature shapes (B, C, H, W) and has no ``offset`` (it is 0.5).
    shapes4 = {level: tuple(s) if len(s) == 4 else (1, 1, *s) for level, s in shapes.items()}
    return Case((shapes4, dict(strides)), {})


def _call_locations(fn, case: Case, dtype: torch.dtype, device: str):
    shapes, strides = case.args
    out = fn({level: torch.Size(s) for level, s in shapes.items()}, dict(strides), dtype, device)
    if not isinstance(out, Mapping):
        raise CallFailure(
            "output", f"the result must be a dict of tensors, got {type(out).__name__}"
        )
    for level in shapes:
        if level not in out:
            raise CallFailure("output", f"the result has no entry for level {level!r}")
        expect_tensor(out[level], f"result[{level!r}]", dtypes=(dtype,), device=device)
    return {level: out[level] for level in out}


def _locations_mistake(*, transposed: bool, floor_half: bool):
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
_HINT_STRIDE_FLOOR = (
    "offsets use stride // 2: the cell centre is stride * (index + 0.5), which differs for "
    "odd strides (stride 7: 3.5, not 3)"
)

LOCATIONS = SeedSpec(
    name="get_fpn_location_coords",
    signature="get_fpn_location_coords(shape_per_fpn_level, strides_per_fpn_level, "
    "dtype=torch.float32, device='cpu') -> {level: Tensor[H*W, 2]}",
    call=_call_locations,
    entry_name="get_fpn_location_coords",
    prepare=_prepare_locations,
    hints=(
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
    ),
)


# --------------------------------------------------------------------------------------
# fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[N, 5])
# --------------------------------------------------------------------------------------


def _prepare_matching(case: Case) -> Case | None:
    # The seed has neither ``size_ranges`` nor ``center_sampling_radius``: drop them so the
    # reference uses the defaults the seed hard-codes.
    return Case(tuple(case.args[:3]), {})


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
    if tie == "f32":  # the seed's ``1e8 - area`` quality in the boxes' dtype, first max wins
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
    "fails on an image without GT boxes (N == 0), as FCOS issues #190/#312: return all -1 rows"
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
            "areas 1681 and 1680: exact comparison, not 1e8 - area in float32",
            # 1e8 - 1681 and 1e8 - 1680 round to the same float32 (spacing 8): box 1 is smaller.
            _match_probe({"p3": [[20, 20]]}, [[0, 0, 41, 41, 1], [0, 0, 40, 42, 2]]),
        ),
        Probe(
            "image without GT boxes",
            _match_probe({"p3": [[4, 4], [12, 4]], "p4": [[8, 8]]}, np.zeros((0, 5))),
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


DELTAS = SeedSpec(
    name="fcos_get_deltas_from_locations",
    signature="fcos_get_deltas_from_locations(locations[L, 2], gt_boxes[L, 4 or 5], "
    "stride: int) -> Tensor[L, 4]",
    call=_call_get_deltas,
    entry_name="fcos_get_deltas_from_locations",
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
    hints=(
        masked_hint(
            "the centerness of background locations (deltas -1) must be -1",
            _centerness_background,
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
            "the issue's known values, third row background",
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
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(
        np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _greedy_nms(boxes, scores, threshold, *, suppress_equal=False, classes=None) -> np.ndarray:
    """Greedy NMS for mistake references: score descending, ties by lower index."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    iou = _iou_matrix(boxes)
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
    """The seed's (and torchvision's) ``boxes + class * (max + 1)`` then one plain NMS, with
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


def _nms_probe(boxes, scores, threshold, classes=None) -> Callable[[], Case]:
    def build() -> Case:
        b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.array(scores, dtype=np.float64).reshape(-1)
        if classes is None:
            return Case((b, s, threshold), {})
        return Case((b, s, np.array(classes, dtype=np.int64).reshape(-1), threshold), {})

    return build


_NAN_DEPARTURE = (
    "a NaN score is not refused: torchvision (and a plain sort) keeps the NaN-scored box "
    "first and lets it suppress others; detops raises ValueError"
)
_HALF_DEPARTURE = "float16 boxes are refused or mishandled (torchvision's CPU kernel refuses them)"
_TIE_DEPARTURE = "equal scores are not kept in index order (ties must go to the lower index)"

NMS = SeedSpec(
    name="nms",
    signature="nms(boxes[N, 4], scores[N], iou_threshold=0.5) -> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="nms",
    hints=(mistake_hint(_HINT_NMS_GE, _nms_ge, ">= instead of >"),),
    probes=(
        Probe(
            "IoU exactly at the threshold (0.5) is kept",
            # (0,0,3,1) and (1,0,4,1): intersection 2, union 4 -> IoU 0.5, not > 0.5.
            _nms_probe([[0, 0, 3, 1], [1, 0, 4, 1]], [0.9, 0.8], 0.5),
        ),
        Probe(
            "tied scores keep index order",
            _nms_probe([[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]], [0.5, 0.5, 0.5], 0.5),
            departure=_TIE_DEPARTURE,
            tag="score ties out of index order",
        ),
        Probe(
            "a NaN score is refused",
            _nms_probe([[0, 0, 10, 10], [1, 1, 11, 11]], [np.nan, 0.9], 0.5),
            departure=_NAN_DEPARTURE,
            tag="NaN score kept",
            refuse=True,
        ),
        Probe(
            "float16 boxes",
            _nms_probe([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5),
            dtype=torch.float16,
            departure=_HALF_DEPARTURE,
            tag="float16 refused",
            departure_kinds=("mismatch", "raised"),
            tolerance=Tolerance(0.0, 0.0),
        ),
        Probe("no boxes", _nms_probe(np.zeros((0, 4)), np.zeros(0), 0.5)),
    ),
)

CLASS_NMS = SeedSpec(
    name="class_spec_nms",
    signature="class_spec_nms(boxes[N, 4], scores[N], class_ids[N], iou_threshold=0.5) "
    "-> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="class_spec_nms",
    hints=(
        mistake_hint(_HINT_OFFSET, _offset_trick, "class-offset trick"),
        mistake_hint(_HINT_NMS_GE, _class_nms_ge, ">= instead of >"),
    ),
    probes=(
        Probe(
            "negative coordinates (max coordinate -1: the class offset is 0)",
            _nms_probe([[-10, -10, -1, -1], [-10, -10, -1, -1]], [0.9, 0.8], 0.5, [0, 1]),
            departure=_HINT_OFFSET,
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
            tag="float16 refused or offset trick",
            departure="float16 boxes with class offsets are refused (torchvision's CPU kernel "
            "has no float16 NMS) or rounded onto each other by the offset trick",
            departure_kinds=("mismatch", "raised"),
            tolerance=Tolerance(0.0, 0.0),
        ),
        Probe(
            "IoU exactly at the threshold within one class",
            _nms_probe([[0, 0, 3, 1], [1, 0, 4, 1]], [0.9, 0.8], 0.5, [2, 2]),
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


FOCAL = SeedSpec(
    name="sigmoid_focal_loss",
    signature="sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction='none')",
    call=_call_direct(_check_loss),
    entry_name="sigmoid_focal_loss",
    hints=(
        mistake_hint(
            "alpha weights the wrong class: alpha_t = alpha * t + (1 - alpha) * (1 - t)",
            _focal_swapped_alpha,
            "alpha on the wrong class",
        ),
        input_hint(
            "the mean over an empty input is NaN (0 / 0): it must be 0",
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
            "mean over an empty input is 0",
            _focal_probe(np.zeros((0, 3)), np.zeros((0, 3)), reduction="mean"),
            departure="the mean over an empty input is NaN (0 / 0); detops returns 0",
            tag="NaN mean of empty input",
        ),
        Probe(
            "saturated logits +-1e4",
            _focal_probe([[1e4, -1e4, 1e4, -1e4]], [[1.0, 0.0, 0.0, 1.0]]),
            departure="the loss is not finite at saturated logits",
            tag="not finite at saturated logits",
        ),
        Probe(
            "gamma 0.5 at saturated logits",
            _focal_probe([[30.0, -30.0]], [[1.0, 0.0]], gamma=0.5),
            departure="the loss is not finite at saturated logits with gamma < 1",
            tag="not finite for gamma < 1",
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


BOX_IOU = SeedSpec(
    name="box_iou",
    signature="box_iou(boxes1[N, 4], boxes2[M, 4]) -> Tensor[N, M]",
    call=_call_box_iou,
    entry_name="box_iou",
    hints=(
        masked_hint(
            "a pair whose union is 0 (two zero-area boxes) gives NaN (0 / 0): it must give 0",
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
            "zero-area boxes (union 0)",
            _iou_probe([[5, 5, 5, 5], [0, 0, 2, 2]], [[5, 5, 5, 5], [3, 3, 3, 9]]),
            departure="a pair with zero union gives NaN (torchvision); detops gives 0",
            tag="NaN IoU for zero union",
        ),
    ),
)


def _prepare_clip(case: Case) -> Case:
    boxes, size = case.args[:2]
    # The seed / torchvision contract is XYXY [..., 4]; five-column GT rows (class column
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
    raise KeyError(f"no seed function named {name!r}; known: {list(SEED_NAMES)}")
