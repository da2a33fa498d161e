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

import functools

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
    sizes = tuple(len(xs) * len(ys) for xs, ys, *_ in levels)
    if kept == 0:
        return np.full((batch * sum(sizes), 5), -1, dtype=gt.dtype)
    # Padding rows become NaN boxes: NaN area (sorted last), and no location is inside.
    corners = gt[..., :4].astype(np.float64)
    corners[~real] = np.nan
    area = (corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1])
    order = np.argsort(area, axis=1, kind="stable")[:, :kept]  # by (area, index), NaN last
    images = np.arange(batch)[:, None]
    # Row b * (K + 1) + j of ``table`` is sorted box j of image b; j = K is a row of -1s.
    table = np.full((batch, kept + 1, 5), -1, dtype=gt.dtype)
    table[:, :kept] = gt[images, order]
    edges = corners[images, order]  # [B, K, 4]
    x1, y1, x2, y2 = (edges[..., c : c + 1] for c in range(4))  # [B, K, 1]
    weights = _weights(kept)
    # 0.5 + the weight sum of every location, level-major as the output.
    sums = np.empty(batch * sum(sizes))
    start = 0
    for (xs, ys, low, high, reach), size in zip(levels, sizes, strict=True):
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
        block = sums[start : start + batch * size].reshape(batch, len(ys), len(xs))
        np.matmul(_transposed(inside_y), inside_x * weights, out=block)  # [B, H, W]
        if low > 0:  # m > low fails exactly inside the closed inner box
            inner_x = inside_x & (xs >= x2 - low) & (xs <= x1 + low)
            inner_y = inside_y & (ys >= y2 - low) & (ys <= y1 + low)
            block -= np.matmul(_transposed(inner_y), inner_x * weights)
        start += batch * size
    sums += 0.5
    # The biased exponent of 0.5 + sum is 1022 + e, e the bit length of the integer sum:
    # its leading bit is sorted box K - e, and e == 0 (no candidate) gives row K. The row
    # numbers are formed in the sums' own memory: at this size, every new array is a cold
    # write (this op runs between a network's forward and backward passes).
    picked = sums.view(np.int64)
    np.right_shift(picked, 52, out=picked)
    np.subtract(_row_base(batch, kept, sizes), picked, out=picked)
    return np.take(table.reshape(-1, 5), picked, axis=0)


# Small per-shape constants, built once (the course's batch reuses one or two); read-only.
@functools.lru_cache(maxsize=MAX_BOXES)
def _weights(kept: int) -> np.ndarray:
    """``2**(K - 1 - j)`` for sorted box ``j``, as a ``[K, 1]`` column."""
    weights = np.exp2(np.arange(kept - 1, -1, -1, dtype=np.float64))[:, None]
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=64)
def _row_base(batch: int, kept: int, sizes: tuple[int, ...]) -> np.ndarray:
    """``b * (K + 1) + K + 1022`` for every location of image ``b``, level-major."""
    image = np.arange(batch, dtype=np.int64) * (kept + 1) + kept + 1022
    bases = np.concatenate([np.repeat(image, size) for size in sizes])
    bases.flags.writeable = False
    return bases


def _transposed(factors: np.ndarray) -> np.ndarray:
    """``[..., K, S]`` bools as ``[..., S, K]`` float64 (the left operand of the product)."""
    return np.swapaxes(factors, -1, -2).astype(np.float64)
