"""Benchmarks of the FCOS target ops (detops.matching, detops.deltas): the course-style
(course code) peers, the benchmark inputs and the cases."""

from __future__ import annotations

import numpy as np
import torch

import reference.deltas as ref_deltas
import reference.matching as ref_matching
from detops import deltas, matching
from detops.testing.inputs import A4_STRIDES, COCO_STRIDES

from ._case import BenchCase, BenchFunctions

# ------------------------------------------------------------ course-style peers (benchmarks)
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


def detops_targets(locations, strides, gt, matching_module=matching, deltas_module=deltas):
    """The detops target path as a user writes it: one batched match, then per level the
    deltas and the centerness (``{level: (boxes, deltas, centerness)}``). With the
    reference modules (:func:`reference_targets`) it is the same path in NumPy."""
    matched = matching_module.fcos_match_locations_to_gt(locations, strides, gt)
    targets = {}
    for level, boxes in matched.items():
        ltrb = deltas_module.fcos_get_deltas_from_locations(locations[level], boxes, strides[level])
        targets[level] = (boxes, ltrb, deltas_module.fcos_make_centerness_targets(ltrb))
    return targets


def reference_targets(locations, strides, gt):
    """:func:`detops_targets` with the NumPy references."""
    return detops_targets(locations, strides, gt, ref_matching, ref_deltas)


def _numpy(value):
    if isinstance(value, dict):
        return {k: v.cpu().numpy().astype(np.float64) for k, v in value.items()}
    return value.cpu().numpy().astype(np.float64)


def _bench(kind, height, width, strides, rows, real, with_reference):
    """``setup(device)`` for one benchmark: detops, the course-style peer and (at the small
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
_NOTES = {
    "match": "one batched call: every location of the three levels against each image's "
    "GT rows (real boxes first, then -1 padding); forward only",
    "targets": "the target path as a user writes it: one batched fcos_match_locations_to_gt, "
    "then per level fcos_get_deltas_from_locations and fcos_make_centerness_targets",
    "deltas": "one call on the 16 images' matched GT rows of all levels ([16, L, 5]) with the "
    "stride per location; forward only",
    "apply": "one call decoding those deltas ([16, L, 4]) at their locations with the stride "
    "per location; forward only",
    "centerness": "one call on those deltas ([16, L, 4]); forward only",
}
_OPS = (
    ("fcos_match_locations_to_gt", "match", "course-style per-image loop"),
    ("fcos_targets", "targets", "course-style per-image loop (match, deltas, centerness)"),
    ("fcos_get_deltas_from_locations", "deltas", "course-style per image and level"),
    ("fcos_apply_deltas_to_locations", "apply", "course-style per image and level"),
    ("fcos_make_centerness_targets", "centerness", "course-style per image and level"),
)

BENCHMARKS = tuple(
    BenchCase(
        op,
        size,
        peer,
        _bench(kind, *spec, with_reference=small),
        quick=small,
        notes=_NOTES[kind],
    )
    for op, kind, peer in _OPS
    for size, spec, small in _SIZES
)
