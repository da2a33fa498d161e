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
    Infinite coordinates give NaN areas and bounds (``inf - inf``, ``inf * 0``) as in the
    torch path, without NumPy's RuntimeWarning: a NaN bound admits no location.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return _match_grid_levels(gt, levels)


def _match_grid_levels(gt: np.ndarray, levels: list[Level]) -> np.ndarray | None:
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
    np.copyto(corners, np.nan, where=~real[..., None])
    area = (corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1])
    order = np.argsort(area, axis=1, kind="stable")[:, :kept]  # by (area, index), NaN last
    images = np.arange(batch)[:, None]
    # Row b * (K + 1) + j of ``table`` is sorted box j of image b; j = K is a row of -1s.
    table = np.full((batch, kept + 1, 5), -1, dtype=gt.dtype)
    table[:, :kept] = gt[images, order]
    # The sorted boxes' edges as [top-left / bottom-right, x / y, 1, B * K]: long rows.
    edges = np.ascontiguousarray(corners[images, order].reshape(-1, 4).T).reshape(2, 2, 1, -1)
    inside, inner, first_inner = _axis_factors(edges, levels, batch, kept)
    # 0.5 + the weight sum of every location, level-major as the output.
    sums = np.empty(batch * sum(sizes))
    start = 0
    for level, ((xs, ys, low, _, _), size) in enumerate(zip(levels, sizes, strict=True)):
        block = sums[start : start + batch * size].reshape(batch, len(ys), len(xs))
        left, right = _level_operands(inside, level, len(xs), len(ys))
        np.matmul(left, right, out=block)
        if low > 0:  # m > low fails exactly inside the closed inner box
            left, right = _level_operands(inner, level - first_inner, len(xs), len(ys))
            block -= np.matmul(left, right)
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
    """``2**(K - 1 - j)`` for sorted box ``j``, ``[K]``."""
    weights = np.exp2(np.arange(kept - 1, -1, -1, dtype=np.float64))
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=64)
def _row_base(batch: int, kept: int, sizes: tuple[int, ...]) -> np.ndarray:
    """``b * (K + 1) + K + 1022`` for every location of image ``b``, level-major."""
    image = np.arange(batch, dtype=np.int64) * (kept + 1) + kept + 1022
    bases = np.concatenate([np.repeat(image, size) for size in sizes])
    bases.flags.writeable = False
    return bases


def _axis_factors(
    edges: np.ndarray, levels: list[Level], batch: int, kept: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per axis (x, y), level, grid value (padded to the longest axis; for ``inner``, the
    longest of its levels), image and sorted box ``[2, Lv, S, B, K]``: whether the value
    lies inside the box's candidate interval on that axis (``inside``), and inside its
    closed inner interval too (``inner``, only for the levels from the first whose ``low``
    is above 0: before it the inner interval is empty), as float64 factors; the x factors
    carry the box weights. Returns ``inside``, ``inner`` and that first level.

    ``edges`` is ``[2, 2, 1, B * K]``: (top-left, bottom-right) x (x, y). Per level and
    axis, with ``(lo, hi)`` the box's edges on that axis, the candidate interval is
    ``(max(lo, hi - high), min(hi, lo + high))``, narrowed to ``(centre - reach, centre +
    reach)`` with centre sampling, and the inner interval is ``[hi - low, lo + low]``: the
    torch path's bounds, in float64, formed once per level and axis. Padding values are
    NaN, inside nothing.
    """
    top_left, bottom_right = edges[0][:, None], edges[1][:, None]  # [2, 1, 1, B * K]
    high, low, reach = _level_constants(tuple((h, lo, r) for _, _, lo, h, r in levels))
    lower = np.maximum(top_left, bottom_right - high)  # [2, Lv, 1, B * K]
    upper = np.minimum(bottom_right, top_left + high)
    if reach is not None:
        centre = (top_left + bottom_right) * 0.5
        lower = np.maximum(lower, centre - reach)
        upper = np.minimum(upper, centre + reach)
    longest = max(max(len(level[0]), len(level[1])) for level in levels)
    values = np.full((2, len(levels), longest, 1), np.nan)
    for i, (xs, ys, *_) in enumerate(levels):
        values[0, i, : len(xs), 0] = xs
        values[1, i, : len(ys), 0] = ys
    inside = values > lower  # [2, Lv, S, B * K]
    inside &= values < upper
    # The inner interval is empty where low is 0: from the first level with low > 0 on,
    # padded only to the longest axis among those levels (coarser: shorter axes).
    first = next((i for i, level in enumerate(levels) if level[2] > 0), len(levels))
    span = max((max(len(level[0]), len(level[1])) for level in levels[first:]), default=0)
    later = values[:, first:, :span]
    inner = later >= bottom_right - low[first:]
    inner &= later <= top_left + low[first:]
    inner &= inside[:, first:, :span]
    weights = _weights(kept)
    factors = []
    for bools in (inside, inner):
        factor = bools.astype(np.float64).reshape(bools.shape[:3] + (batch, kept))
        factor[0] *= weights
        factors.append(factor)
    return factors[0], factors[1], first


def _level_operands(
    factors: np.ndarray, level: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[B, H, K]`` y factors and ``[B, K, W]`` x factors of one level (views, in layouts
    that BLAS takes)."""
    return (
        factors[1, level, :height].transpose(1, 0, 2),
        factors[0, level, :width].transpose(1, 2, 0),
    )


@functools.lru_cache(maxsize=64)
def _level_constants(
    ranges: tuple[tuple[float, float, float | None], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(high, low, reach)`` per level as ``[Lv, 1, 1]`` columns (read-only; reach None
    without centre sampling), from ``(high, low, reach)`` per level."""

    def column(i: int) -> np.ndarray:
        values = np.array([level[i] for level in ranges], dtype=np.float64).reshape(-1, 1, 1)
        values.flags.writeable = False
        return values

    return column(0), column(1), None if ranges[0][2] is None else column(2)
