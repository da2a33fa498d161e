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
from ..entry import BenchCase, BenchFunctions, OpEntry
from ..inputs import A4_STRIDES, COCO_STRIDES
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
        batched: True for ``gt_boxes [B, N, 5]``, False for ``[N, 5]`` (the seed's
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


# ------------------------------------------------------------ seed-style peers (benchmarks)
# The course code as it was written: one image at a time in Python, pairwise distances
# per level, the `1e8 - area` float32 trick, then deltas and centerness per image and
# level. Peers for timing only; detops does not share their ties (see the op docstring).


def seed_style_match(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    """Seed-style matching of ONE image (``gt_boxes [N, 5]``)."""
    order = sorted(strides_per_fpn_level, key=strides_per_fpn_level.get)
    matched_gt_boxes = {}
    for level_name, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level_name]
        x, y = centers.unsqueeze(dim=2).unbind(dim=1)
        x0, y0, x1, y1 = gt_boxes[:, :4].unsqueeze(dim=0).unbind(dim=2)
        pairwise_dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
        pairwise_dist = pairwise_dist.permute(1, 0, 2)  # (N, num_centers, 4)
        match_matrix = pairwise_dist.min(dim=2).values > 0
        pairwise_dist = pairwise_dist.max(dim=2).values
        lower_bound = stride * 4 if level_name != order[0] else 0
        upper_bound = stride * 8 if level_name != order[-1] else float("inf")
        match_matrix &= (pairwise_dist > lower_bound) & (pairwise_dist < upper_bound)
        gt_areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        match_matrix = match_matrix.to(torch.float32)
        match_matrix *= 1e8 - gt_areas[:, None]
        match_quality, matched_idxs = match_matrix.max(dim=0)
        matched_idxs[match_quality < 1e-5] = -1
        matched_boxes_this_level = gt_boxes[matched_idxs.clip(min=0)]
        matched_boxes_this_level[matched_idxs < 0, :] = -1
        matched_gt_boxes[level_name] = matched_boxes_this_level
    return matched_gt_boxes


def seed_style_deltas(locations, gt_boxes, stride):
    deltas = torch.empty_like(gt_boxes[:, :4])
    deltas[:, 0] = locations[:, 0] - gt_boxes[:, 0]
    deltas[:, 1] = locations[:, 1] - gt_boxes[:, 1]
    deltas[:, 2] = gt_boxes[:, 2] - locations[:, 0]
    deltas[:, 3] = gt_boxes[:, 3] - locations[:, 1]
    deltas = deltas / stride
    deltas[gt_boxes[:, :4].sum(dim=1) == -4] = -1
    return deltas


def seed_style_apply(deltas, locations, stride):
    deltas = deltas.clip(min=0) * stride
    return torch.stack(
        [
            locations[:, 0] - deltas[:, 0],
            locations[:, 1] - deltas[:, 1],
            locations[:, 0] + deltas[:, 2],
            locations[:, 1] + deltas[:, 3],
        ],
        dim=1,
    )


def seed_style_centerness(deltas):
    left, top, right, bottom = deltas.unbind(dim=1)
    centerness = torch.sqrt(
        (torch.min(left, right) / torch.max(left, right))
        * (torch.min(top, bottom) / torch.max(top, bottom))
    )
    centerness[deltas[:, 0] < 0] = -1
    return centerness


def seed_style_targets(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    """Seed-style target path for a batch: per image, match; per level, deltas and
    centerness."""
    targets = []
    for image_boxes in gt_boxes:
        matched = seed_style_match(locations_per_fpn_level, strides_per_fpn_level, image_boxes)
        per_level = {}
        for level, boxes in matched.items():
            stride = strides_per_fpn_level[level]
            level_deltas = seed_style_deltas(locations_per_fpn_level[level], boxes, stride)
            per_level[level] = (boxes, level_deltas, seed_style_centerness(level_deltas))
        targets.append(per_level)
    return targets


# ----------------------------------------------------------------------------- benchmarks


def benchmark_inputs(height, width, strides, rows, real, device="cpu", seed=0):
    """Locations, a GT batch ``[16, rows, 5]`` and the concatenated locations/strides.

    ``real`` is ``(low, high)``: each image has that many real boxes (uniformly drawn), at
    the front, followed by padding rows of -1. Boxes are integer-valued, 8 px to 90% of
    the image on each side.
    """
    from detops.locations import get_fpn_location_coords

    generator = torch.Generator().manual_seed(seed)
    shapes = {level: (-(-height // s), -(-width // s)) for level, s in strides.items()}
    locations = get_fpn_location_coords(shapes, strides, device=device)
    gt = torch.full((16, rows, 5), -1.0)
    size = torch.tensor([width, height], dtype=torch.float32)
    for b in range(16):
        count = int(torch.randint(real[0], real[1] + 1, (1,), generator=generator))
        wh = torch.rand(count, 2, generator=generator) * size * 0.9 + 8
        xy = torch.rand(count, 2, generator=generator) * (size - wh).clamp(min=1)
        cls = torch.randint(0, 20, (count, 1), generator=generator).float()
        gt[b, :count] = torch.cat([xy, xy + wh, cls], 1).round()
    gt = gt.to(device)
    flat_locations = torch.cat(list(locations.values()))
    flat_strides = torch.cat(
        [torch.full((len(loc),), float(strides[k]), device=device) for k, loc in locations.items()]
    )
    return locations, gt, flat_locations, flat_strides


def detops_targets(locations, strides, gt):
    """The detops target path as a user writes it: one batched match, then per level the
    deltas and the centerness (``{level: (boxes, deltas, centerness)}``)."""
    matched = matching.fcos_match_locations_to_gt(locations, strides, gt)
    targets = {}
    for level, boxes in matched.items():
        ltrb = deltas.fcos_get_deltas_from_locations(locations[level], boxes, strides[level])
        targets[level] = (boxes, ltrb, deltas.fcos_make_centerness_targets(ltrb))
    return targets


def reference_targets(locations, strides, gt):
    """:func:`detops_targets` with the NumPy references."""
    matched = ref_matching.fcos_match_locations_to_gt(locations, strides, gt)
    targets = {}
    for level, boxes in matched.items():
        ltrb = ref_deltas.fcos_get_deltas_from_locations(locations[level], boxes, strides[level])
        targets[level] = (boxes, ltrb, ref_deltas.fcos_make_centerness_targets(ltrb))
    return targets


def _numpy(value):
    if isinstance(value, dict):
        return {k: v.cpu().numpy().astype(np.float64) for k, v in value.items()}
    return value.cpu().numpy().astype(np.float64)


def _bench(kind, height, width, strides, rows, real, with_reference):
    """``setup(device)`` for one benchmark: detops, the seed-style peer and (at the small
    size) the NumPy reference of op ``kind``, on the same inputs."""

    def setup(device):
        locations, gt, flat_locations, flat_strides = benchmark_inputs(
            height, width, strides, rows, real, device
        )
        # The deltas/centerness benchmarks start from matched boxes (built here, untimed).
        matched = matching.fcos_match_locations_to_gt(locations, strides, gt)
        boxes = torch.cat(list(matched.values()), dim=1)
        ltrb = deltas.fcos_get_deltas_from_locations(flat_locations, boxes, flat_strides)
        levels = [(locations[k], matched[k], strides[k]) for k in matched]
        seed_ltrb = [[seed_style_deltas(loc, m[b], s) for loc, m, s in levels] for b in range(16)]
        np_locations, np_gt = _numpy(locations), _numpy(gt)
        np_flat = (_numpy(flat_locations), _numpy(flat_strides))

        if kind == "match":

            def ours():
                return matching.fcos_match_locations_to_gt(locations, strides, gt)

            def peer():
                return [seed_style_match(locations, strides, image) for image in gt]

            def ref():
                return ref_matching.fcos_match_locations_to_gt(np_locations, strides, np_gt)

        elif kind == "targets":

            def ours():
                return detops_targets(locations, strides, gt)

            def peer():
                return seed_style_targets(locations, strides, gt)

            def ref():
                return reference_targets(np_locations, strides, np_gt)

        elif kind == "deltas":

            def ours():
                return deltas.fcos_get_deltas_from_locations(flat_locations, boxes, flat_strides)

            def peer():
                return [
                    [seed_style_deltas(loc, m[b], s) for loc, m, s in levels] for b in range(16)
                ]

            np_boxes = _numpy(boxes)

            def ref():
                return ref_deltas.fcos_get_deltas_from_locations(np_flat[0], np_boxes, np_flat[1])

        elif kind == "apply":

            def ours():
                return deltas.fcos_apply_deltas_to_locations(ltrb, flat_locations, flat_strides)

            def peer():
                return [
                    [seed_style_apply(d, loc, s) for d, (loc, _, s) in zip(ds, levels, strict=True)]
                    for ds in seed_ltrb
                ]

            np_ltrb = _numpy(ltrb)

            def ref():
                return ref_deltas.fcos_apply_deltas_to_locations(np_ltrb, *np_flat)

        else:

            def ours():
                return deltas.fcos_make_centerness_targets(ltrb)

            def peer():
                return [[seed_style_centerness(d) for d in ds] for ds in seed_ltrb]

            np_ltrb = _numpy(ltrb)

            def ref():
                return ref_deltas.fcos_make_centerness_targets(np_ltrb)

        return BenchFunctions(detops=ours, peer=peer, reference=ref if with_reference else None)

    return setup


_SIZES = (
    ("A4 224x224 B16 N40(~8 real)", (224, 224, A4_STRIDES, 40, (4, 12)), True),
    ("COCO 800x1344 B16 N100", (800, 1344, COCO_STRIDES, 100, (100, 100)), False),
)
_OPS = (
    ("fcos_match_locations_to_gt", "match", "seed-style per-image loop"),
    ("fcos_targets", "targets", "seed-style per-image loop (match, deltas, centerness)"),
    ("fcos_get_deltas_from_locations", "deltas", "seed-style per image and level"),
    ("fcos_apply_deltas_to_locations", "apply", "seed-style per image and level"),
    ("fcos_make_centerness_targets", "centerness", "seed-style per image and level"),
)

BENCHMARKS = tuple(
    BenchCase(
        op,
        size,
        peer,
        _bench(kind, *spec, with_reference=small),
        quick=small,
        notes="fcos_targets is the path as a user writes it: one batched "
        "fcos_match_locations_to_gt, then per level fcos_get_deltas_from_locations and "
        "fcos_make_centerness_targets"
        if kind == "targets"
        else "",
    )
    for op, kind, peer in _OPS
    for size, spec, small in _SIZES
)
