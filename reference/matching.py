"""NumPy reference for detops.matching, written from the op's contract."""

from __future__ import annotations

import numpy as np


def default_size_ranges(strides_per_fpn_level):
    """Levels sorted by stride: low = 4*stride (0 for the finest), high = 8*stride (inf for
    the coarsest)."""
    strides = {name: float(s) for name, s in strides_per_fpn_level.items()}
    finest = min(strides.values(), default=0.0)
    coarsest = max(strides.values(), default=0.0)
    ranges = {}
    for name, stride in strides.items():
        low = 0.0 if stride == finest else 4.0 * stride
        high = np.inf if stride == coarsest else 8.0 * stride
        ranges[name] = (low, high)
    return ranges


def _match_image(points, stride, low, high, radius, boxes, area_key=None):
    """For one image and level: the index of the matched box per location, or -1.

    ``area_key`` (for verify's mistake references) ranks the candidates by
    ``area_key(area)`` instead of the area, smallest first."""
    x, y = points[:, 0], points[:, 1]
    best = np.full(len(points), -1)
    best_area = np.full(len(points), np.inf)
    for n, (x1, y1, x2, y2, cls) in enumerate(boxes):
        if cls == -1:  # padding never matches
            continue
        distances = np.stack((x - x1, y - y1, x2 - x, y2 - y))  # [4, L]
        candidate = distances.min(axis=0) > 0  # strictly inside
        m = distances.max(axis=0)
        candidate &= (low < m) & (m < high)  # strictly inside the size range
        if radius is not None:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            candidate &= np.maximum(np.abs(x - cx), np.abs(y - cy)) < radius * stride
        area = (x2 - x1) * (y2 - y1)
        if area_key is not None:
            area = area_key(area)
        # the smallest area wins; on equal areas the lower index (seen first) stays
        better = candidate & ((best == -1) | (area < best_area))
        best[better] = n
        best_area[better] = area
    return best


def fcos_match_locations_to_gt(
    locations_per_fpn_level,
    strides_per_fpn_level,
    gt_boxes,
    *,
    size_ranges=None,
    center_sampling_radius=None,
):
    """Each location's GT row ``(x1, y1, x2, y2, class)``, or a row of -1.

    A box is a candidate for location (x, y) of a level with stride s when the location is
    strictly inside it (all four distances > 0), m = the largest distance satisfies
    low < m < high, with center sampling max(|x - cx|, |y - cy|) < r * s, and its class is
    not -1. The smallest area (x2 - x1) * (y2 - y1) wins; equal areas go to the lowest
    index. ``gt_boxes`` is [N, 5] or [B, N, 5]; the result has the matching [L, 5] or
    [B, L, 5] per level, in float64.
    """
    ranges = default_size_ranges({k: strides_per_fpn_level[k] for k in locations_per_fpn_level})
    if size_ranges is not None:
        ranges.update({k: (float(v[0]), float(v[1])) for k, v in size_ranges.items()})
    gt = np.asarray(gt_boxes, dtype=np.float64)
    batched = gt.ndim == 3
    images = gt if batched else gt[None]
    result = {}
    for name, points in locations_per_fpn_level.items():
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        stride = float(strides_per_fpn_level[name])
        low, high = ranges[name]
        per_image = []
        for boxes in images:
            index = _match_image(points, stride, low, high, center_sampling_radius, boxes)
            rows = np.full((len(points), 5), -1.0)
            rows[index >= 0] = boxes[index[index >= 0]]
            per_image.append(rows)
        stacked = np.stack(per_image) if per_image else np.zeros((0, len(points), 5))
        result[name] = stacked if batched else stacked[0]
    return result
