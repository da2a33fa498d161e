"""NumPy reference for detops.locations."""

from __future__ import annotations

import numpy as np


def get_fpn_location_coords(shape_per_fpn_level, strides_per_fpn_level, *, offset=0.5):
    """Cell (h, w) of a level with stride s is the point (s*(w+offset), s*(h+offset)).

    Rows are listed with h as the slow index: row k = h*W + w. Returns float64 arrays.
    """
    result = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2], shape[-1]
        stride = strides_per_fpn_level[level]
        rows = []
        for h in range(height):
            for w in range(width):
                rows.append((stride * (w + offset), stride * (h + offset)))
        result[level] = np.array(rows, dtype=np.float64).reshape(height * width, 2)
    return result
