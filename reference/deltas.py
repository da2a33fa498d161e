"""NumPy reference for detops.deltas, written from the ops' contracts."""

from __future__ import annotations

import numpy as np


def _per_location_stride(stride, count):
    stride = np.asarray(stride, dtype=np.float64)
    return np.broadcast_to(stride.reshape(-1, 1) if stride.ndim else stride, (count, 1))


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    """(l, t, r, b) = (xc - x1, yc - y1, x2 - xc, y2 - yc) / stride, per location.

    Background rows give four -1s: with a class column, the rows whose class is -1; without
    one, the rows whose four coordinates are all exactly -1. ``stride`` is a number or one
    stride per location.
    """
    locations = np.asarray(locations, dtype=np.float64)
    rows = np.asarray(gt_boxes, dtype=np.float64)
    boxes = rows[..., :4]
    xc, yc = locations[..., 0], locations[..., 1]
    s = _per_location_stride(stride, boxes.shape[-2])[:, 0]
    deltas = np.stack(
        (
            (xc - boxes[..., 0]) / s,
            (yc - boxes[..., 1]) / s,
            (boxes[..., 2] - xc) / s,
            (boxes[..., 3] - yc) / s,
        ),
        axis=-1,
    )
    if rows.shape[-1] == 5:
        background = rows[..., 4] == -1
    else:
        background = np.all(boxes == -1, axis=-1)
    deltas[background] = -1.0
    return deltas


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    """(x1, y1, x2, y2) = (xc - l*s, yc - t*s, xc + r*s, yc + b*s), negative deltas as 0."""
    deltas = np.maximum(np.asarray(deltas, dtype=np.float64), 0.0)
    locations = np.asarray(locations, dtype=np.float64)
    xc, yc = locations[..., 0], locations[..., 1]
    s = _per_location_stride(stride, deltas.shape[-2])[:, 0]
    return np.stack(
        (
            xc - deltas[..., 0] * s,
            yc - deltas[..., 1] * s,
            xc + deltas[..., 2] * s,
            yc + deltas[..., 3] * s,
        ),
        axis=-1,
    )


def fcos_make_centerness_targets(deltas):
    """sqrt(min(l, r) * min(t, b) / (max(l, r) * max(t, b))) per row.

    Rows with a negative delta (background) give -1; a zero denominator gives 0.
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    flat = deltas.reshape(-1, 4)
    out = np.empty(len(flat))
    for i, (left, top, right, bottom) in enumerate(flat):
        if min(left, top, right, bottom) < 0:
            out[i] = -1.0
            continue
        denominator = max(left, right) * max(top, bottom)
        if denominator == 0:
            out[i] = 0.0
        else:
            out[i] = np.sqrt(min(left, right) * min(top, bottom) / denominator)
    return out.reshape(deltas.shape[:-1])
