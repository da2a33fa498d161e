"""verify's course API specs: the course code's per-image signatures, for
``python -m detops verify --impl``.

A user's implementation follows the course code: ``fcos_match_locations_to_gt``
takes one image's ``(N, 5)`` boxes, ``fcos_get_deltas_from_locations`` takes an integer
stride, ``nms`` takes ``(boxes, scores, iou_threshold)``. Each :class:`SeedSpec` here says
how to call such a function on a case drawn from the registry entry of the same name (one
call per image where the entry's cases are batched) and how to assemble the results into
the output form of the detops op, so the entry's reference, comparison and tolerances
judge it.

Each spec also carries

* **domain**: which generated cases lie inside the shared contract (the inputs the
  course's pipeline produces, where the course code and torchvision agree on the answer).
* **error_bound**: the error model, the rounding a correct implementation in the tested
  dtype may add on top of the registry's tolerance.
* **probes** and **hints** (known mistakes), from :mod:`detops.verify.probes`.

Only the NumPy references and verify meet the user's code; the registry is read, never
changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor

from reference.matching import default_size_ranges
from reference.nms import class_spec_nms as reference_class_nms

from .._seed_names import SEED_NAMES
from ..testing.entry import OpEntry, case_to_torch
from ..testing.families.nms import iou_matrix
from ..testing.strategies import Case
from . import probes
from .probes import (
    CLASS_NMS_PARAMETERS,
    NMS_PARAMETERS,
    Hint,
    Probe,
    focal_arguments,
    named_arguments,
    offset_trick,
    zero_union,
)

__all__ = [
    "SEED_NAMES",
    "SEED_SPECS",
    "CallFailure",
    "Problem",
    "SeedSpec",
    "collect_problems",
    "expect_tensor",
    "report_problem",
    "spec_by_name",
]

# A problem that does not stop the values from being compared: (kind, key, message).
Problem = tuple[str, str, str]


class CallFailure(Exception):
    """The function under test misbehaved: ``kind`` is one of ``raised``, ``timeout``,
    ``mutated`` or ``output`` (wrong type, shape, dtype or device). ``key`` names the
    failure's family for reports (``dtype``, ``device``, ``shape``, ...), default ``kind``.
    ``problems`` holds the soft problems (:func:`report_problem`) found before it."""

    def __init__(self, kind: str, message: str, key: str = "", problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.key = key or kind
        self.problems = list(problems)

    def __reduce__(self):  # pickled across the worker process
        return (CallFailure, (self.kind, self.message, self.key, self.problems))


# Problems that do not stop the values from being compared (a wrong dtype, a wrong device,
# an input modified in place) are collected while a call runs, so that a report can give
# them *and* wrong values. Outside :func:`collect_problems` they raise at once.
_PROBLEMS: list[Problem] | None = None


@contextmanager
def collect_problems() -> Iterator[list[Problem]]:
    """Collect ``(kind, key, message)`` of the soft problems reported inside the block."""
    global _PROBLEMS
    saved = _PROBLEMS
    found: list[Problem] = []
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

    def generated_cases(self, entry: OpEntry, dtype: torch.dtype) -> st.SearchStrategy[Case]:
        """The cases verify generates for this function in ``dtype``: ``entry``'s, made
        course-shaped by ``prepare`` and kept inside the shared contract by ``domain``."""
        strategy = entry.strategy()
        if self.prepare is not None:
            prepared = strategy.map(self.prepare).filter(lambda case: case is not None)
            strategy = cast("st.SearchStrategy[Case]", prepared)  # the None cases are gone
        domain = self.domain
        if domain is None:
            return strategy

        def inside(case: Case) -> bool:
            try:
                return domain(entry.reference_inputs(case, dtype), dtype) is None
            except Exception:  # a case the domain cannot read is not one the course makes
                return False

        return strategy.filter(inside)

    def hint(self, short: str) -> Hint:
        """The known mistake named ``short`` in the summary table."""
        for hint in self.hints:
            if hint.short == short:
                return hint
        known = [hint.short for hint in self.hints]
        raise KeyError(f"{self.name}: no known mistake {short!r}; known: {known}")

    def probe(self, label: str) -> Probe:
        """The probe labelled ``label``."""
        for probe in self.probes:
            if probe.label == label:
                return probe
        known = [probe.label for probe in self.probes]
        raise KeyError(f"{self.name}: no probe {label!r}; known: {known}")


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


def _stride_groups(stride: Tensor | float, count: int) -> list[tuple[int | float, Tensor | None]]:
    """Split a per-location stride ``Tensor[L]`` into ``(stride, indices)`` groups; a number
    stride is one group over everything (``indices=None``)."""
    if not isinstance(stride, Tensor):
        return [(_number(stride), None)]
    flat = stride.reshape(-1)
    if flat.numel() != count:
        flat = flat.expand(count // max(flat.numel(), 1), flat.numel()).reshape(-1)
    groups: list[tuple[int | float, Tensor | None]] = []
    for value in torch.unique(flat):
        groups.append((_number(float(value)), torch.nonzero(flat == value).reshape(-1)))
    return groups


def _broadcast_lead(*tensors: Tensor) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(*(t.shape[:-1] for t in tensors)))


def _per_location(
    fn: Callable[..., Any],
    first: Tensor,
    second: Tensor,
    stride: Tensor | float,
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


def _eps(dtype: torch.dtype) -> float:
    """Unit roundoff of the precision a correct implementation computes in (half types are
    computed in float32, as torchvision does)."""
    return float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps)


def _no_rows(array: Any) -> bool:
    return int(np.prod(np.shape(array)[:-1], dtype=np.int64)) == 0


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
    hints=probes.LOCATIONS_HINTS,
    probes=probes.LOCATIONS_PROBES,
)


# --------------------------------------------------------------------------------------
# fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[N, 5])
# --------------------------------------------------------------------------------------


def _prepare_matching(case: Case) -> Case | None:
    # The course code has neither ``size_ranges`` nor ``center_sampling_radius``: drop them
    # so the reference uses the defaults it hard-codes. Padding rows are all -1 in the
    # course's data: a class -1 row with real coordinates becomes such a row.
    # The course's matcher names its levels (see _course_size_ranges): two generated
    # levels p3 and p4 become p3 and p5, where its ranges are detops' (one level has none).
    locations, strides, gt = case.args[:3]
    gt = np.array(gt, dtype=np.float64, copy=True)
    gt[gt[..., 4] == -1] = -1.0
    if list(locations) == ["p3", "p4"] and list(strides) == ["p3", "p4"]:
        locations = {"p3": locations["p3"], "p5": locations["p4"]}
        strides = {"p3": strides["p3"], "p5": strides["p4"]}
    return Case((locations, strides, gt), {})


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


def _size_bound_ties(locations: Mapping[str, Any], strides: Mapping[str, Any], gt, dtype) -> bool:
    """Whether a location inside a real box lies at a largest distance m from it within
    rounding error of a level's size bound, but not on it: there a distance computed in
    ``dtype`` (one subtraction, rounded relative to m) can fall on either side. (m exactly
    on the bound is exact in any dtype.)"""
    ranges = default_size_ranges({level: strides[level] for level in locations})
    slack = 2 * _eps(dtype)
    count = int(np.prod(gt.shape[:-2], dtype=np.int64))
    for image in gt.reshape(count, *gt.shape[-2:]):
        boxes = image[image[:, 4] != -1]
        for level, points in locations.items():
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            x, y = points[:, None, 0], points[:, None, 1]
            distances = np.stack(
                [x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], axis=-1
            )
            inside = distances.min(axis=-1, initial=np.inf) > 0
            largest = distances.max(axis=-1, initial=-np.inf)
            for bound in ranges[level]:
                gap = abs(largest - bound)
                if 0 < bound < np.inf and (inside & (gap > 0) & (gap <= slack * bound)).any():
                    return True
    return False


def _course_size_ranges(strides: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The size ranges of the course's matcher, which names its levels: ``p3`` has no lower
    bound and ``p5`` no upper one (``stride * 4`` and ``stride * 8`` otherwise)."""
    return {
        level: (
            0.0 if level == "p3" else 4.0 * float(s),
            float("inf") if level == "p5" else 8.0 * float(s),
        )
        for level, s in strides.items()
    }


def _matching_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    locations, strides, gt = ref_case.args[:3]
    gt = np.asarray(gt)
    if gt.shape[-2] == 0:
        return "an image with zero GT rows (the course pads every image to 40 rows)"
    levels = {level: strides[level] for level in locations}
    if _course_size_ranges(levels) != default_size_ranges(levels):
        return (
            "levels other than the course's p3 (finest) to p5 (coarsest): its matcher "
            "names them for the size ranges, detops orders them by stride"
        )
    padding = gt[..., 4] == -1
    if (padding & ~(gt[..., :4] == -1).all(axis=-1)).any():
        return "a padding row (class -1) with real coordinates"
    if _f32_quality_ties(gt):
        return "two GT areas closer than float32 resolves at 1e8"
    if _size_bound_ties(locations, strides, gt, dtype):
        return "a largest distance within rounding error of a size bound"
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


MATCHING = SeedSpec(
    name="fcos_match_locations_to_gt",
    signature="fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, "
    "gt_boxes[N, 5]) -> {level: Tensor[L, 5]}",
    call=_call_matching,
    entry_name="fcos_match_locations_to_gt",
    prepare=_prepare_matching,
    domain=_matching_domain,
    hints=probes.MATCHING_HINTS,
    probes=probes.MATCHING_PROBES,
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


def _centerness_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    if _no_rows(ref_case.args[0]):
        return "no locations"
    deltas = np.asarray(ref_case.args[0])
    background = (deltas == -1).all(axis=-1)
    if (~background & (deltas <= 0).any(axis=-1)).any():
        return "a row with a zero or negative delta, which matching never produces"
    return None


def _centerness_bound(ref_case: Case, expected, dtype: torch.dtype):
    return 8 * _eps(dtype) * np.abs(np.asarray(expected, dtype=np.float64))


DELTAS = SeedSpec(
    name="fcos_get_deltas_from_locations",
    signature="fcos_get_deltas_from_locations(locations[L, 2], gt_boxes[L, 4 or 5], "
    "stride: int) -> Tensor[L, 4]",
    call=_call_get_deltas,
    entry_name="fcos_get_deltas_from_locations",
    prepare=_prepare_deltas,
    domain=_deltas_domain,
    error_bound=_deltas_bound,
    hints=probes.DELTAS_HINTS,
    probes=probes.DELTAS_PROBES,
)

APPLY_DELTAS = SeedSpec(
    name="fcos_apply_deltas_to_locations",
    signature="fcos_apply_deltas_to_locations(deltas[L, 4], locations[L, 2], stride: int) "
    "-> Tensor[L, 4]",
    call=_call_apply_deltas,
    entry_name="fcos_apply_deltas_to_locations",
    domain=_apply_domain,
    error_bound=_apply_bound,
    hints=probes.APPLY_DELTAS_HINTS,
    probes=probes.APPLY_DELTAS_PROBES,
)

CENTERNESS = SeedSpec(
    name="fcos_make_centerness_targets",
    signature="fcos_make_centerness_targets(deltas[L, 4]) -> Tensor[L]",
    call=_call_centerness,
    entry_name="fcos_make_centerness_targets",
    prepare=_prepare_centerness,
    domain=_centerness_domain,
    error_bound=_centerness_bound,
    hints=probes.CENTERNESS_HINTS,
    probes=probes.CENTERNESS_PROBES,
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


def _nms_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    parameters = CLASS_NMS_PARAMETERS if len(ref_case.args) >= 4 else NMS_PARAMETERS
    a = named_arguments(ref_case, parameters)
    boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(a["scores"], dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        return "no boxes"
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return "NaN or infinite values"
    if len(np.unique(scores)) != len(scores):
        return "tied scores"
    off = ~np.eye(len(boxes), dtype=bool)
    if (off & zero_union(boxes, boxes)).any():
        # NaN IoU: torchvision never suppresses on it, the course's queue (keep IoU <= t)
        # drops the later box
        return "two zero-area boxes (IoU 0 / 0)"
    iou = iou_matrix(boxes)  # the registry's vectorized float64 IoU: this runs on every case
    bound = _iou_bound(boxes, boxes, _eps(dtype))
    if (off & (np.abs(iou - float(a["iou_threshold"])) <= bound)).any():
        return "an IoU within rounding error of the threshold"
    return None


def _class_nms_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    reason = _nms_domain(ref_case, dtype)
    if reason is not None:
        return reason
    a = named_arguments(ref_case, CLASS_NMS_PARAMETERS)
    expected = reference_class_nms(a["boxes"], a["scores"], a["class_ids"], a["iou_threshold"])
    trick = offset_trick(ref_case, dtype)
    if not np.array_equal(np.asarray(expected).reshape(-1), np.asarray(trick).reshape(-1)):
        return "the class-offset trick (course code, torchvision) gives another answer"
    return None


NMS = SeedSpec(
    name="nms",
    signature="nms(boxes[N, 4], scores[N], iou_threshold=0.5) -> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="nms",
    domain=_nms_domain,
    hints=probes.NMS_HINTS,
    probes=probes.NMS_PROBES,
)

CLASS_NMS = SeedSpec(
    name="class_spec_nms",
    signature="class_spec_nms(boxes[N, 4], scores[N], class_ids[N], iou_threshold=0.5) "
    "-> Tensor[K] int64",
    call=_call_direct(_check_indices),
    entry_name="class_spec_nms",
    domain=_class_nms_domain,
    hints=probes.CLASS_NMS_HINTS,
    probes=probes.CLASS_NMS_PROBES,
)


# --------------------------------------------------------------------------------------
# sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none")
# --------------------------------------------------------------------------------------


def _check_loss(out, case: Case, dtype: torch.dtype, device: str):
    return expect_tensor(out, "the loss", dtypes=_float_out(dtype), device=device)


def _focal_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    a = focal_arguments(ref_case)
    x = np.asarray(a["inputs"], dtype=np.float64)
    if x.size == 0:
        return "an empty input"
    if not np.isfinite(x).all():
        return "NaN or infinite logits"
    # The course pipeline passes one-hot targets and alpha 0.25: forms exact only there
    # (pt = exp(-ce), alpha_t by where(t == 1)) are correct for it.
    t = np.asarray(a["targets"], dtype=np.float64)
    if not np.isin(t, (0.0, 1.0)).all():
        return "soft targets (the course passes one-hot targets)"
    if float(a["alpha"]) < 0:
        return "alpha -1 (the course passes 0.25)"
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
    a = focal_arguments(ref_case)
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
    hints=probes.FOCAL_HINTS,
    probes=probes.FOCAL_PROBES,
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


def _box_iou_domain(ref_case: Case, dtype: torch.dtype) -> str | None:
    b1, b2 = (np.asarray(v, dtype=np.float64) for v in ref_case.args[:2])
    if b1.shape[-2] == 0 or b2.shape[-2] == 0:
        return "no boxes"
    if zero_union(b1, b2).any():
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
    hints=probes.BOX_IOU_HINTS,
    probes=probes.BOX_IOU_PROBES,
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


CLIP = SeedSpec(
    name="clip_boxes_to_image",
    signature="clip_boxes_to_image(boxes[N, 4], size=(height, width)) -> Tensor[N, 4]",
    call=_call_clip,
    entry_name="clip_boxes_to_image",
    prepare=_prepare_clip,
    hints=probes.CLIP_HINTS,
    probes=probes.CLIP_PROBES,
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
