"""Registry entries for the FCOS target ops: detops.matching and detops.deltas.

Strategies here aim at the contract's edges: integer-valued locations and boxes, boxes
built around a location with distances such as 0 (the location on an edge), ``4s`` and
``8s`` (``m`` exactly on a default size bound), boxes of equal area, padding rows anywhere
(some with real coordinates), odd strides, center sampling and explicit size ranges.
Most matching cases also hold a box built to match some location, so that the outputs
compared are rarely all -1.
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


def _matchable_levels(locations, strides, ranges) -> list[tuple[str, int, int]]:
    """``(level, lowest m, highest m)`` for the levels with locations whose size range
    holds an integer ``m`` (an open range ``(low, high)`` of at least two pixels)."""
    levels = []
    for name, loc in locations.items():
        low, high = ranges[name]
        lowest = math.floor(low) + 1
        # The coarsest level has no upper bound: up to 12 strides more (huge boxes).
        highest = math.ceil(high) - 1 if math.isfinite(high) else lowest + 12 * strides[name]
        if len(loc) and lowest <= highest:
            levels.append((name, lowest, highest))
    return levels


def _distance(draw, lowest: float, highest: float, stride: int) -> int:
    """An integer distance in ``[lowest, highest]``, often a multiple of the stride (so
    that on a grid another location lies exactly on that edge of the box)."""
    lowest, highest = math.ceil(lowest), math.floor(highest)
    multiples = range(-(-lowest // stride) * stride, highest + 1, stride)
    if multiples and draw(st.booleans()):
        return draw(st.sampled_from(multiples))
    return draw(st.integers(lowest, highest))


def _matchable_box(draw, locations, strides, ranges, radius) -> list[float] | None:
    """A box that makes one location a candidate: integer distances of at least 1, the
    largest ``m`` strictly inside the level's size range (from one pixel past ``low`` to
    one short of ``high``, tiny to huge), and with center sampling the box centre less
    than ``radius * stride`` from the location on both axes. None where no level has
    locations and a non-empty range.

    ``m`` is often one past ``low``, one short of ``high``, or ``high - stride`` (then
    the grid neighbour one stride further from that edge can have ``m`` exactly at
    ``high``); the distances are often multiples of the stride (grid neighbours exactly on
    an edge)."""
    levels = _matchable_levels(locations, strides, ranges)
    if not levels:
        return None
    name, lowest, highest = draw(st.sampled_from(levels))
    s = strides[name]
    x, y = locations[name][draw(st.integers(0, len(locations[name]) - 1))]
    low, high = ranges[name]
    special = sorted({v for v in (lowest, highest, high - s, low + s) if lowest <= v <= highest})
    m = (
        int(draw(st.sampled_from(special)))
        if draw(st.booleans())
        else _distance(draw, lowest, highest, s)
    )
    # Opposite distances d and e put the centre (e - d) / 2 from the location.
    reach = math.inf if radius is None else 2.0 * radius * s

    def opposite(d: int) -> float:
        """A distance in [1, m] less than ``reach`` from ``d``."""
        if reach == math.inf:
            return float(_distance(draw, 1, m, s))
        lower, upper = math.floor(d - reach) + 1, math.ceil(d + reach) - 1
        return float(_distance(draw, max(1, lower), min(m, upper), s))

    near = _distance(draw, 1, m, s)
    pair_m = [float(m), opposite(m)]
    pair_n = [float(near), opposite(near)]
    if draw(st.booleans()):
        pair_m.reverse()
    if draw(st.booleans()):
        pair_n.reverse()
    (left, right), (top, bottom) = (pair_m, pair_n) if draw(st.booleans()) else (pair_n, pair_m)
    return _f32(x - left, y - top, x + right, y + bottom)


@st.composite
def _gt_rows(draw, locations, strides, count: int, ranges, radius) -> np.ndarray:
    """``[count, 5]`` real GT rows, many of them aligned with a location of some level.

    Mostly one row (any of them) is built to match a location (``_matchable_box``), so
    that most cases match something; the other kinds aim at the edges."""
    levels = [name for name, loc in locations.items() if len(loc)]
    forced = draw(st.integers(0, count - 1)) if count and draw(st.integers(0, 5)) < 5 else -1
    rows: list[list[float]] = []
    for i in range(count):
        kinds = ["aligned", "aligned", "free", "same_area", "copy", "matchable"]
        kind = "matchable" if i == forced else draw(st.sampled_from(kinds))
        if rows and kind == "copy":  # an exact duplicate: equal areas, lower index wins
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
            continue
        matchable = None
        if kind == "matchable":
            matchable = _matchable_box(draw, locations, strides, ranges, radius)
        if matchable is not None:
            box = matchable
        elif kind in ("aligned", "matchable") and levels:
            name = draw(st.sampled_from(levels))
            x, y = locations[name][draw(st.integers(0, len(locations[name]) - 1))]
            s = strides[name]
            near = [0, 1, s / 2, s, 2 * s, 4 * s - 1, 4 * s, 4 * s + 1, 8 * s - 1, 8 * s, 8 * s + 1]
            distance = st.one_of(st.sampled_from(near), st.integers(1, 100))
            left, top, right, bottom = (float(draw(distance)) for _ in range(4))
            if draw(st.booleans()):  # m exactly on a bound of this level, or a default one
                bounds = {b for b in ranges[name] if 0 < b < math.inf} | {4 * s, 8 * s}
                m = float(draw(st.sampled_from(sorted(bounds))))
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
                if draw(st.booleans()):  # the same centre: both can match one location
                    x1, y1 = _f32(
                        (rows[-1][0] + rows[-1][2] - w) / 2, (rows[-1][1] + rows[-1][3] - h) / 2
                    )
            else:
                w = float(draw(st.integers(-2, 130)))
                h = float(draw(st.integers(-2, 130)))
            box = [x1, y1, *_f32(x1 + w, y1 + h)]
        rows.append(box + [float(draw(st.integers(0, 19)))])
    return np.array(rows, dtype=np.float64).reshape(count, 5)


@st.composite
def _padded_image(draw, locations, strides, rows: int, ranges, radius) -> np.ndarray:
    real = draw(st.integers(0, rows))
    if real == 0 and rows and draw(st.integers(0, 3)):  # fewer padding-only images
        real = draw(st.integers(1, rows))
    gt = np.full((rows, 5), -1.0)
    slots = sorted(draw(st.permutations(range(rows)))[:real])
    gt[slots] = draw(_gt_rows(locations, strides, real, ranges, radius))
    for slot in set(range(rows)) - set(slots):
        if draw(st.integers(0, 3)) == 0:  # padding with real coordinates: class -1 rules
            gt[slot, :4] = draw(_gt_rows(locations, strides, 1, ranges, radius))[0, :4]
    return gt


@st.composite
def match_cases(draw, batched: bool | None = None, options: bool = True) -> Case:
    """Cases for :func:`detops.fcos_match_locations_to_gt`.

    The options are drawn first so that most cases have a box that matches under them.

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
    level_ranges = ref_matching.default_size_ranges(strides)
    level_ranges.update(kwargs.get("size_ranges", {}))
    radius = kwargs.get("center_sampling_radius")
    rows = draw(st.integers(0, 6))
    if rows == 0 and draw(st.integers(0, 3)):  # fewer cases without GT rows
        rows = draw(st.integers(1, 6))
    if batched is None:
        batched = draw(st.booleans())
    if batched:
        images = draw(st.integers(1, 3))
        image = _padded_image(locations, strides, rows, level_ranges, radius)
        gt = np.stack([draw(image) for _ in range(images)])
    else:
        gt = draw(_padded_image(locations, strides, rows, level_ranges, radius))
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
