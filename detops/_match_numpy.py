"""The CPU path of :func:`detops.fcos_match_locations_to_gt` for grid levels, in NumPy.

At the course's scale (16 images, a dozen real boxes, 1029 locations) matching is a few
dozen array operations on arrays of a few thousand elements: their fixed cost, not the
arithmetic, sets the time. NumPy calls cost less than torch calls at this size, and
NumPy's comparisons run at full vector speed where torch's bool results are several times
slower. So this path writes the method of :mod:`detops.matching` (see its module
docstring: bounds per box formed in float64, boxes sorted by ``(area, index)``, weights
``2**(K - 1 - j)`` whose sum's exponent names the winner, one ``[B, H, K] @ [B, K, W]``
product per grid level) in NumPy, with the same float64 arithmetic, so its answer is the
torch path's bit for bit.

It serves CPU inputs in float32 or float64 whose levels are all row-major grids and whose
images have at most 52 real boxes (one weight group); :func:`detops.matching._match`
takes the torch path otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_BOXES", "match_grid_levels"]

# Real boxes per image this path handles: one group of weights 2**0 .. 2**51, whose sum
# plus 0.5 is exact in float64.
MAX_BOXES = 52

# One grid level: its x-values [W] and y-values [H] (float64), size range (low, high) and
# the centre sampling reach (radius * stride), or None.
Level = tuple[np.ndarray, np.ndarray, float, float, float | None]


def match_grid_levels(gt: np.ndarray, levels: list[Level]) -> np.ndarray | None:
    """Matched GT rows of every grid level, level-major in one buffer: level ``i`` fills
    rows ``[B * start_i, B * (start_i + H_i * W_i))`` as ``[B, H_i * W_i, 5]``.

    ``gt`` is ``[B, N, 5]`` (float32 or float64). Returns the buffer ``[B * sum(L), 5]``
    in ``gt``'s dtype, or None when some image has more than :data:`MAX_BOXES` real boxes.
    """
    batch, count, _ = gt.shape
    real = gt[..., 4] != -1
    kept = int(real.sum(1).max()) if batch * count else 0
    if kept > MAX_BOXES:
        return None
    sizes = [len(xs) * len(ys) for xs, ys, *_ in levels]
    out = np.empty((batch * sum(sizes), 5), dtype=gt.dtype)
    if kept == 0:
        out.fill(-1)
        return out
    # Padding rows become NaN boxes: NaN area (sorted last), and no location is inside.
    corners = gt[..., :4].astype(np.float64)
    corners[~real] = np.nan
    area = (corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1])
    order = np.argsort(area, axis=1, kind="stable")[:, :kept]  # by (area, index), NaN last
    images = np.arange(batch)[:, None]
    # Row b * (K + 1) + j of ``table`` is sorted box j of image b; j = K is a row of -1s.
    table = np.full((batch, kept + 1, 5), -1, dtype=gt.dtype)
    table[:, :kept] = gt[images, order]
    table = table.reshape(-1, 5)

    weights = np.exp2(np.arange(kept - 1, -1, -1, dtype=np.float64))[:, None]  # 2**(K-1-j)
    row_base = images[..., None] * (kept + 1) + kept + 1022
    x1, y1, x2, y2 = (corners[images, order, c][..., None] for c in range(4))  # [B, K, 1]
    start = 0
    for xs, ys, low, high, reach in levels:
        lower_x, upper_x = np.maximum(x1, x2 - high), np.minimum(x2, x1 + high)
        lower_y, upper_y = np.maximum(y1, y2 - high), np.minimum(y2, y1 + high)
        if reach is not None:
            centre_x, centre_y = (x1 + x2) * 0.5, (y1 + y2) * 0.5
            lower_x = np.maximum(lower_x, centre_x - reach)
            upper_x = np.minimum(upper_x, centre_x + reach)
            lower_y = np.maximum(lower_y, centre_y - reach)
            upper_y = np.minimum(upper_y, centre_y + reach)
        inside_x = (xs > lower_x) & (xs < upper_x)  # [B, K, W]
        inside_y = (ys > lower_y) & (ys < upper_y)  # [B, K, H]
        sums = np.matmul(_transposed(inside_y), inside_x * weights)  # [B, H, W]
        if low > 0:  # m > low fails exactly inside the closed inner box
            inner_x = inside_x & (xs >= x2 - low) & (xs <= x1 + low)
            inner_y = inside_y & (ys >= y2 - low) & (ys <= y1 + low)
            sums -= np.matmul(_transposed(inner_y), inner_x * weights)
        sums += 0.5
        # The biased exponent of 0.5 + sum is 1022 + e, e the bit length of the integer
        # sum: its leading bit is sorted box K - e, and e == 0 (no candidate) gives row K.
        picked = row_base - (sums.view(np.int64) >> 52)
        size = picked.size
        np.take(table, picked.reshape(-1), axis=0, out=out[start : start + size])
        start += size
    return out


def _transposed(factors: np.ndarray) -> np.ndarray:
    """``[..., K, S]`` bools as ``[..., S, K]`` float64 (the left operand of the product)."""
    return np.swapaxes(factors, -1, -2).astype(np.float64)
