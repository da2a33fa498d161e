"""Registry entries for the FCOS target ops: detops.matching and detops.deltas.

Strategies here aim at the contract's edges: integer-valued locations and boxes, boxes
built around a location with distances such as 0 (the location on an edge), ``4s`` and
``8s`` (``m`` exactly on a default size bound), boxes of equal area, padding rows anywhere
(some with real coordinates), odd strides, center sampling and explicit size ranges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

import reference.deltas as ref_deltas
import reference.matching as ref_matching
from detops import deltas, matching

from ..compare import EXACT_TOLERANCES, Tolerance
from ..entry import OpEntry
from ..strategies import Case, floats32, fpn_locations, fpn_strides, ltrb_deltas

# One subtraction and one division (deltas); products, a division and a square root
# (centerness): a few float32 roundings relative to the result.
RELATIVE_TOLERANCES = {
    torch.float32: Tolerance(1e-6, 1e-6),
    torch.float64: Tolerance(1e-12, 1e-12),
}
# Decoding xc - l * s cancels: the error is relative to |l * s| (at most ~2000 here).
DECODE_TOLERANCES = {torch.float32: Tolerance(5e-4, 1e-6), torch.float64: Tolerance(1e-9, 1e-12)}


# ---------------------------------------------------------------------------- matching


def _f32(*values: float) -> list[float]:
    """Round to float32: every generated value must survive the cast to the tested dtype
    unchanged, so that the op and its reference see the same numbers."""
    return [float(np.float32(v)) for v in values]


def _coordinate(draw) -> float:
    """A box coordinate: integer-valued mostly, sometimes a float32 with a fraction."""
    if draw(st.booleans()):
        return float(draw(st.integers(-24, 120)))
    value = draw(floats32(-50.0, 150.0))
    return 0.0 if abs(value) < 2**-10 else value  # keep float64 bound sums exact


@st.composite
def _gt_rows(draw, locations, strides, count: int) -> np.ndarray:
    """``[count, 5]`` real GT rows, many of them aligned with a location of some level."""
    levels = [name for name, loc in locations.items() if len(loc)]
    rows: list[list[float]] = []
    for _ in range(count):
        kind = draw(st.sampled_from(["aligned", "aligned", "free", "same_area", "copy"]))
        if rows and kind == "copy":  # an exact duplicate: equal areas, lower index wins
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
            continue
        if kind == "aligned" and levels:
            name = draw(st.sampled_from(levels))
            x, y = locations[name][draw(st.integers(0, len(locations[name]) - 1))]
            s = strides[name]
            near = [0, 1, s / 2, s, 2 * s, 4 * s - 1, 4 * s, 4 * s + 1, 8 * s - 1, 8 * s, 8 * s + 1]
            distance = st.one_of(st.sampled_from(near), st.integers(1, 100))
            left, top, right, bottom = (float(draw(distance)) for _ in range(4))
            if draw(st.booleans()):  # m exactly on a default bound of this level
                m = float(draw(st.sampled_from([4 * s, 8 * s])))
                others = st.integers(1, int(m) - 1)
                sides = [m] + [float(draw(others)) for _ in range(3)]
                left, top, right, bottom = draw(st.permutations(sides))
            box = _f32(x - left, y - top, x + right, y + bottom)
        else:
            x1, y1 = _coordinate(draw), _coordinate(draw)
            if kind == "same_area" and rows:
                w = rows[-1][2] - rows[-1][0]
                h = rows[-1][3] - rows[-1][1]
                w, h = (h, w) if draw(st.booleans()) else (w, h)
            else:
                w = float(draw(st.integers(-2, 130)))
                h = float(draw(st.integers(-2, 130)))
            box = [x1, y1, *_f32(x1 + w, y1 + h)]
        rows.append(box + [float(draw(st.integers(0, 19)))])
    return np.array(rows, dtype=np.float64).reshape(count, 5)


@st.composite
def _padded_image(draw, locations, strides, rows: int) -> np.ndarray:
    real = draw(st.integers(0, rows))
    gt = np.full((rows, 5), -1.0)
    slots = sorted(draw(st.permutations(range(rows)))[:real])
    gt[slots] = draw(_gt_rows(locations, strides, real))
    for slot in set(range(rows)) - set(slots):
        if draw(st.integers(0, 3)) == 0:  # padding with real coordinates: class -1 rules
            gt[slot, :4] = draw(_gt_rows(locations, strides, 1))[0, :4]
    return gt


@st.composite
def match_cases(draw, batched: bool | None = None, options: bool = True) -> Case:
    """Cases for :func:`detops.fcos_match_locations_to_gt`.

    Args:
        batched: True for ``gt_boxes [B, N, 5]``, False for ``[N, 5]`` (the course code's
            per-image signature), None for both.
        options: whether ``size_ranges`` / ``center_sampling_radius`` may be drawn.
    """
    strides = draw(fpn_strides(max_levels=3))
    locations = draw(fpn_locations(strides, max_image=64))
    layout = draw(st.sampled_from(["grid", "grid", "shuffled", "scattered"]))
    for name, loc in locations.items():
        if layout == "shuffled":  # not row-major any more: the dense path on CPU
            loc = loc[draw(st.permutations(range(len(loc))))] if len(loc) else loc
        elif layout == "scattered":  # arbitrary points, some repeated
            count = draw(st.integers(0, 12))
            points = [(float(draw(st.integers(-8, 72))), float(draw(st.integers(-8, 72))))]
            points += [(_coordinate(draw), _coordinate(draw)) for _ in range(count)]
            loc = np.array(points, dtype=np.float64).reshape(-1, 2)
        locations[name] = np.ascontiguousarray(loc)
    rows = draw(st.integers(0, 6))
    if batched is None:
        batched = draw(st.booleans())
    if batched:
        images = draw(st.integers(1, 3))
        gt = np.stack([draw(_padded_image(locations, strides, rows)) for _ in range(images)])
    else:
        gt = draw(_padded_image(locations, strides, rows))
    kwargs = {}
    if options and draw(st.integers(0, 3)) == 0:
        kwargs["center_sampling_radius"] = draw(st.sampled_from([0.5, 1.0, 1.5, 2.5]))
    if options and draw(st.integers(0, 4)) == 0:
        names = draw(st.sets(st.sampled_from(sorted(strides)), min_size=1))
        ranges = {}
        for name in sorted(names):
            s = strides[name]
            low = draw(st.sampled_from([0.0, float(s), 2.0 * s, 4.0 * s]))
            high = draw(st.sampled_from([4.0 * s, 8.0 * s, 16.0 * s, math.inf]))
            ranges[name] = (low, max(low, high))
        kwargs["size_ranges"] = ranges
    return Case((locations, strides, gt), kwargs)


# ---------------------------------------------------------------------------- deltas


def _strides_for(draw, count: int):
    """A stride number, or one stride per location (int or float array)."""
    kind = draw(st.sampled_from(["number", "number", "per_location"]))
    if kind == "number":
        return draw(st.sampled_from([4, 7, 8, 12, 16, 32, 8.0]))
    values = [draw(st.sampled_from([4, 7, 8, 12, 16, 32])) for _ in range(count)]
    dtype = np.int64 if draw(st.booleans()) else np.float64
    return np.array(values, dtype=dtype).reshape(count)


@st.composite
def _locations_for(draw, count: int, batch: int | None):
    """``[L, 2]`` (or ``[B, L, 2]``) location coordinates, float32-exact."""
    shape = (count, 2) if batch is None or draw(st.booleans()) else (batch, count, 2)
    values = _f32(*(_coordinate(draw) + 50.0 for _ in range(int(np.prod(shape)))))
    return np.array(values, dtype=np.float64).reshape(shape)


@st.composite
def delta_cases(draw) -> Case:
    """Cases for :func:`detops.fcos_get_deltas_from_locations`."""
    count = draw(st.integers(0, 16))
    batch = draw(st.one_of(st.none(), st.integers(1, 2)))
    locations = draw(_locations_for(count, batch))
    columns = draw(st.sampled_from([4, 5]))
    shape = (count,) if batch is None else (batch, count)
    boxes = np.empty(shape + (columns,))
    flat = boxes.reshape(-1, columns)
    points = np.broadcast_to(locations, shape + (2,)).reshape(-1, 2)
    for i in range(len(flat)):
        kind = draw(st.sampled_from(["around", "around", "free", "background"]))
        if kind == "background":
            flat[i] = -1.0
            if columns == 5 and draw(st.booleans()):
                flat[i, 4] = float(draw(st.integers(0, 19)))
            continue
        if kind == "around":  # a box that contains its location (or has it on an edge)
            x, y = points[i]
            left, top, right, bottom = (float(draw(st.integers(0, 90))) for _ in range(4))
            flat[i, :4] = _f32(x - left, y - top, x + right, y + bottom)
        else:
            flat[i, :4] = [_coordinate(draw) for _ in range(4)]
            if draw(st.integers(0, 5)) == 0:  # a real box with some -1 coordinates
                flat[i, draw(st.integers(0, 3))] = -1.0
        if columns == 5:
            flat[i, 4] = float(draw(st.integers(-1, 19)))
    return Case((locations, boxes, _strides_for(draw, count)))


@st.composite
def apply_cases(draw) -> Case:
    """Cases for :func:`detops.fcos_apply_deltas_to_locations`."""
    count = draw(st.integers(0, 12))
    batch = draw(st.one_of(st.none(), st.integers(1, 2)))
    shape = (count,) if batch is None else (batch, count)
    values = draw(ltrb_deltas(int(np.prod(shape, dtype=int)), max_value=60.0))
    locations = draw(_locations_for(count, batch))
    return Case((values.reshape(shape + (4,)), locations, _strides_for(draw, count)))


@st.composite
def centerness_cases(draw) -> Case:
    """Cases for :func:`detops.fcos_make_centerness_targets`."""
    shape = draw(st.sampled_from([(), (2,), (1, 2)])) + (draw(st.integers(0, 12)),)
    values = draw(ltrb_deltas(int(np.prod(shape, dtype=int))))
    return Case((values.reshape(shape + (4,)),))


ENTRIES = (
    OpEntry(
        name="fcos_match_locations_to_gt",
        op=matching.fcos_match_locations_to_gt,
        reference=ref_matching.fcos_match_locations_to_gt,
        strategy=match_cases,
        tolerances=EXACT_TOLERANCES,
    ),
    OpEntry(
        name="fcos_get_deltas_from_locations",
        op=deltas.fcos_get_deltas_from_locations,
        reference=ref_deltas.fcos_get_deltas_from_locations,
        strategy=delta_cases,
        tolerances=RELATIVE_TOLERANCES,
    ),
    OpEntry(
        name="fcos_apply_deltas_to_locations",
        op=deltas.fcos_apply_deltas_to_locations,
        reference=ref_deltas.fcos_apply_deltas_to_locations,
        strategy=apply_cases,
        tolerances=DECODE_TOLERANCES,
    ),
    OpEntry(
        name="fcos_make_centerness_targets",
        op=deltas.fcos_make_centerness_targets,
        reference=ref_deltas.fcos_make_centerness_targets,
        strategy=centerness_cases,
        tolerances=RELATIVE_TOLERANCES,
    ),
)
