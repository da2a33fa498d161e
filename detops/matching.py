"""FCOS target assignment: the GT box each FPN location is responsible for.

How the work is kept small (the contract is in the docstring of
:func:`fcos_match_locations_to_gt`; this is only how it is met quickly):

* Every test is a comparison of a location coordinate with a per-box, per-level bound
  computed once in float64: ``x - x1 > 0`` is ``x > x1``, ``x2 - x < high`` is
  ``x > x2 - high``, ``|x - cx| < r*s`` is ``cx - r*s < x < cx + r*s``, and ``m > low``
  fails exactly when the location lies in the closed rectangle
  ``[x2 - low, x1 + low] x [y2 - low, y1 + low]``. The location test is then separable in x
  and y.
* Boxes are sorted per image and level by ``(impossible, area, index)``, so the winner of a
  location is the *first* candidate in that order. Padding rows, degenerate boxes and boxes
  that cannot fit a level's size range sort last and, on CPU, are cut off (see Note in the
  op's docstring).
* The first candidate is found with one ``amax`` over a packed key: candidate ``j`` of
  ``nl`` carries the weight ``nl - j`` (``uint8`` while ``nl < 256``), a non-candidate 0.
* On CPU, a level whose locations form a row-major grid (what
  :func:`detops.get_fpn_location_coords` returns) tests its ``W`` x-values and ``H``
  y-values once per box, and builds the ``[B, nl, H, W]`` key with one broadcast ``&``
  (two more for the lower size bound). Other location sets use dense comparisons.
* The key is built in chunks of at most ``_CHUNK_ELEMENTS`` elements (rows of the grid,
  or slices of locations, and blocks of images), so the working set stays cache-sized on
  CPU and bounded on CUDA at any scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ._checks import check_floating, check_ndim, check_same_device, check_tensor, shape_str

__all__ = ["fcos_match_locations_to_gt", "default_size_ranges"]

_OP = "fcos_match_locations_to_gt"

# Elements of one [images, boxes, rows, columns] chunk of the packed key, per device type.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def default_size_ranges(strides_per_fpn_level: Mapping[str, float]) -> dict[str, tuple]:
    """The default ``(low, high)`` bound on ``m`` per level.

    ``low = 4 * stride`` and ``high = 8 * stride``, except that the finest level (smallest
    stride) has ``low = 0`` and the coarsest (largest stride) has ``high = inf``. For strides
    8/16/32 this is ``(0, 64), (64, 128), (128, inf)``. A single level gets ``(0, inf)``.
    """
    strides = {name: float(s) for name, s in strides_per_fpn_level.items()}
    if not strides:
        return {}
    finest, coarsest = min(strides.values()), max(strides.values())
    return {
        name: (0.0 if s == finest else 4.0 * s, math.inf if s == coarsest else 8.0 * s)
        for name, s in strides.items()
    }


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _validate(locations, strides, gt_boxes, size_ranges, radius) -> None:
    if not isinstance(locations, Mapping):
        raise TypeError(
            f"{_OP}: locations_per_fpn_level must be a mapping from level name to Tensor[L, 2], "
            f"got {type(locations).__name__}"
        )
    if not isinstance(strides, Mapping):
        raise TypeError(
            f"{_OP}: strides_per_fpn_level must be a mapping from level name to stride, "
            f"got {type(strides).__name__}"
        )
    check_tensor(_OP, "gt_boxes", gt_boxes)
    check_ndim(_OP, "gt_boxes", gt_boxes, (2, 3), "[N, 5] or [B, N, 5]")
    if gt_boxes.shape[-1] != 5:
        raise ValueError(
            f"{_OP}: gt_boxes must have shape [N, 5] or [B, N, 5] (x1, y1, x2, y2, class), "
            f"got {shape_str(gt_boxes)}"
        )
    check_floating(_OP, "gt_boxes", gt_boxes)
    missing = [name for name in locations if name not in strides]
    if missing:
        raise ValueError(
            f"{_OP}: strides_per_fpn_level must name every level of locations_per_fpn_level "
            f"({sorted(locations)}), got {sorted(strides)}"
        )
    for name, loc in locations.items():
        arg = f"locations_per_fpn_level[{name!r}]"
        check_tensor(_OP, arg, loc)
        if loc.dim() != 2 or loc.shape[-1] != 2:
            raise ValueError(f"{_OP}: {arg} must have shape [L, 2], got {shape_str(loc)}")
        check_floating(_OP, arg, loc)
        check_same_device(_OP, gt_boxes=gt_boxes, **{arg: loc})
        stride = strides[name]
        if not _number(stride) or not stride > 0 or math.isinf(stride):
            raise ValueError(
                f"{_OP}: strides_per_fpn_level[{name!r}] must be a positive finite number, "
                f"got {stride!r}"
            )
    if size_ranges is not None:
        if not isinstance(size_ranges, Mapping):
            raise TypeError(
                f"{_OP}: size_ranges must be a mapping from level name to (low, high), "
                f"got {type(size_ranges).__name__}"
            )
        unknown = sorted(set(size_ranges) - set(locations))
        if unknown:
            raise ValueError(
                f"{_OP}: size_ranges must only name levels of locations_per_fpn_level "
                f"({sorted(locations)}), got unknown levels {unknown}"
            )
        for name, pair in size_ranges.items():
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not all(_number(v) for v in pair)
            ):
                raise TypeError(
                    f"{_OP}: size_ranges[{name!r}] must be a (low, high) pair of numbers, "
                    f"got {pair!r}"
                )
            low, high = float(pair[0]), float(pair[1])
            if math.isnan(low) or math.isnan(high) or low > high:
                raise ValueError(
                    f"{_OP}: size_ranges[{name!r}] must be (low, high) with low <= high, "
                    f"got {pair!r}"
                )
    if radius is not None and (not _number(radius) or not radius > 0):
        raise ValueError(
            f"{_OP}: center_sampling_radius must be None or a positive number, got {radius!r}"
        )


def fcos_match_locations_to_gt(
    locations_per_fpn_level: Mapping[str, Tensor],
    strides_per_fpn_level: Mapping[str, int | float],
    gt_boxes: Tensor,
    *,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
    center_sampling_radius: float | None = None,
) -> dict[str, Tensor]:
    """Assign every FPN location the GT box it is responsible for (FCOS).

    A location ``(x, y)`` of a level with stride ``s`` and size range ``(low, high)`` is a
    *candidate* for the GT box ``(x1, y1, x2, y2)`` when all of these hold:

    * it lies strictly inside the box: ``min(x - x1, y - y1, x2 - x, y2 - y) > 0``
      (a location exactly on an edge does not match);
    * ``m = max(x - x1, y - y1, x2 - x, y2 - y)`` lies strictly inside the size range:
      ``low < m < high`` (so ``m`` exactly 64 matches neither ``(0, 64)`` nor ``(64, 128)``);
    * with ``center_sampling_radius=r``: ``max(|x - cx|, |y - cy|) < r * s`` with
      ``(cx, cy)`` the box centre (torchvision's and detectron2's FCOS rule);
    * the box's class is not -1 (padding rows never match).

    Size ranges default to :func:`default_size_ranges`: levels sorted by stride,
    ``low = 4 * s`` (0 for the finest level), ``high = 8 * s`` (inf for the coarsest); for
    strides 8/16/32 that is ``(0, 64), (64, 128), (128, inf)``. ``size_ranges`` overrides
    them for the levels it names.

    Among several candidates the box with the smallest area ``(x2 - x1) * (y2 - y1)`` wins,
    the area computed in float64 (exact for float32 boxes up to one float64 rounding of the
    product); equal areas go to the lowest box index. Note: the course code's
    ``1e8 - area`` trick in float32 rounds away differences below about 8 px² and can pick
    the larger of two nearly equal boxes; detops deliberately does not reproduce that.

    The comparisons are exact: every bound (``x2 - high``, ``cx - r*s``, ...) is formed in
    float64 and compared with the location in float64. For float32 (or float32-valued)
    coordinates these bounds are exact; for arbitrary float64 coordinates a bound can be
    one float64 rounding away from the real-number value.

    Args:
        locations_per_fpn_level (Mapping[str, Tensor[L, 2]]): ``(x, y)`` of each level's
            locations in absolute pixels, e.g. from :func:`detops.get_fpn_location_coords`.
        strides_per_fpn_level (Mapping[str, number]): stride in pixels of every level of
            ``locations_per_fpn_level`` (positive, finite).
        gt_boxes (Tensor[N, 5] or Tensor[B, N, 5]): rows ``(x1, y1, x2, y2, class)``, XYXY
            absolute pixels, floating dtype. Rows with class -1 are padding and may sit
            anywhere. Degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) contain no location.
        size_ranges (Mapping[str, (low, high)], optional): per-level bounds on ``m``,
            ``low <= high``; only names of ``locations_per_fpn_level``.
        center_sampling_radius (float, optional): the radius ``r`` in strides; None (the
            default) disables center sampling.

    Returns:
        dict[str, Tensor[L, 5] or Tensor[B, L, 5]]: per level, in the order of
        ``locations_per_fpn_level``, the matched GT row of every location (an exact copy of
        that row, class included), or a row of -1 where no box matches. Dtype and device
        are those of ``gt_boxes``. ``N = 0``, all-padding GT or an empty level give rows of
        -1 (or an empty tensor). A batched call equals stacking the per-image calls.

    Note:
        No Python loop runs over images, boxes or locations; one runs over levels and over
        chunks of a bounded working set (about ``2**18`` one-byte elements on CPU). On CPU
        the op reads a few integers back from the tensors it computes (how many boxes can
        match each level, and whether a level's locations form a grid) to skip padding rows
        and impossible boxes; on CPU this is not a device synchronisation. On CUDA it never
        synchronises: it works over all ``N`` rows with dense comparisons.
    """
    _validate(
        locations_per_fpn_level,
        strides_per_fpn_level,
        gt_boxes,
        size_ranges,
        center_sampling_radius,
    )
    names = list(locations_per_fpn_level)
    ranges = default_size_ranges({name: strides_per_fpn_level[name] for name in names})
    if size_ranges is not None:
        ranges.update({k: (float(v[0]), float(v[1])) for k, v in size_ranges.items()})
    on_cpu = gt_boxes.device.type == "cpu"
    batched = gt_boxes.dim() == 3
    matched = _match(
        locations_per_fpn_level,
        {name: float(strides_per_fpn_level[name]) for name in names},
        ranges,
        center_sampling_radius,
        gt_boxes if batched else gt_boxes.unsqueeze(0),
        compact=on_cpu,
        detect_grid=on_cpu,
        chunk_elements=_CHUNK_ELEMENTS["cpu" if on_cpu else "cuda"],
    )
    if not batched:
        matched = {name: value[0] for name, value in matched.items()}
    return matched


def _grid_shape(loc: Tensor) -> tuple[int, int] | None:
    """``(H, W)`` when ``loc[h*W + w] == (xs[w], ys[h])`` for every cell, else None.

    Reads one integer and two booleans back from the tensor (CPU only).
    """
    count = loc.shape[0]
    y = loc[:, 1]
    width = int((y != y[0]).view(torch.uint8).argmax()) or count
    if count % width:
        return None
    height = count // width
    grid = loc.view(height, width, 2)
    if torch.equal(grid[..., 0], grid[:1, :, 0].expand(height, width)) and torch.equal(
        grid[..., 1], grid[:, :1, 1].expand(height, width)
    ):
        return height, width
    return None


def _key_dtype(count: int) -> tuple[torch.dtype, int]:
    """The smallest integer dtype holding weights ``1..count``, and its all-ones value."""
    if count < 1 << 8:
        return torch.uint8, 255
    return (torch.int16 if count < 1 << 15 else torch.int32), -1


def _match(
    locations: Mapping[str, Tensor],
    strides: dict[str, float],
    ranges: dict[str, tuple[float, float]],
    radius: float | None,
    gt: Tensor,
    *,
    compact: bool,
    detect_grid: bool,
    chunk_elements: int,
) -> dict[str, Tensor]:
    """The batched op on ``gt [B, N, 5]``; ``compact``/``detect_grid`` read from the host."""
    names = list(locations)
    batch, count, _ = gt.shape
    device = gt.device
    levels = len(names)
    f64 = torch.float64
    top_left, bottom_right = gt[..., :4].to(f64).reshape(batch, count, 2, 2).unbind(2)
    consts = [[ranges[n][0] for n in names], [ranges[n][1] for n in names]]
    if radius is not None:
        consts.append([radius * strides[n] for n in names])
    consts = torch.tensor(consts, dtype=f64, device=device).view(len(consts), levels, 1, 1, 1)
    low, high = consts[0], consts[1]
    # Per level, image, box and axis (x, y): a location is a candidate when
    # lower < coordinate < upper on both axes, and not inner_lo <= coordinate <= inner_hi on
    # both axes (that closed box is where all four distances are <= low, i.e. m <= low).
    lower = torch.maximum(top_left, bottom_right - high)  # [Lv, B, N, 2]
    upper = torch.minimum(bottom_right, top_left + high)
    if radius is not None:
        centre = (top_left + bottom_right) * 0.5
        lower = torch.maximum(lower, centre - consts[2])
        upper = torch.minimum(upper, centre + consts[2])
    inner_lo, inner_hi = bottom_right - low, top_left + low
    covered = ((inner_lo <= lower) & (inner_hi >= upper)).all(-1)
    possible = (lower < upper).all(-1) & ~covered & (gt[..., 4] != -1)  # [Lv, B, N]
    area = (bottom_right - top_left).prod(-1)  # [B, N]
    # Candidates first, by (area, index): the stable sort keeps the lower index on ties.
    order = torch.sort(torch.where(possible, area, math.nan), dim=-1, stable=True).indices
    if compact and batch:
        kept = possible.sum(-1).amax(-1).tolist()  # boxes that can match, per level
    else:
        kept = [count if batch else 0] * levels
    width = max(kept, default=0)
    result = {}
    if width == 0:
        for name in names:
            result[name] = gt.new_full((batch, locations[name].shape[0], 5), -1)
        return result
    order = order[..., :width]
    bounds = torch.cat((lower, upper, inner_lo, inner_hi), dim=-1)  # [Lv, B, N, 8]
    bounds = torch.gather(bounds, 2, order.unsqueeze(-1).expand(levels, batch, width, 8))
    key_dtype, all_ones = _key_dtype(width)
    # Candidate j of level i carries the weight kept[i] - j; the axis-1 part is a mask.
    weights = [[[n - j if j < n else 0, all_ones] for j in range(width)] for n in kept]
    weights = torch.tensor(weights, dtype=key_dtype, device=device).view(levels, 1, width, 2, 1)
    # lookup[i, b, k]: row of ``table`` for key k; key 0 (no candidate) -> the -1 row.
    pick = [[width] + [n - k if k <= n else width for k in range(1, width + 1)] for n in kept]
    pick = torch.tensor(pick, device=device).unsqueeze(1).expand(levels, batch, width + 1)
    sentinel = order.new_full((levels, batch, 1), count)
    lookup = torch.gather(torch.cat((order, sentinel), dim=-1), 2, pick)
    lookup = lookup + torch.arange(batch, device=device).view(1, batch, 1) * (count + 1)
    table = torch.cat((gt, gt.new_full((batch, 1, 5), -1)), dim=1).reshape(-1, 5)

    grids = {}
    if detect_grid:
        for i, name in enumerate(names):
            if kept[i] and locations[name].shape[0]:
                grid = _grid_shape(locations[name])
                if grid is not None:
                    grids[name] = grid
    if grids:
        axis_key, axis_out, spans = _grid_axis_tests(
            {name: locations[name] for name in grids}, grids, bounds, weights, key_dtype
        )
    for i, name in enumerate(names):
        loc = locations[name]
        size, nl = loc.shape[0], kept[i]
        if nl == 0 or size == 0:
            result[name] = gt.new_full((batch, size, 5), -1)
            continue
        skip_inner = ranges[name][0] <= 0  # m > low <= 0 holds for every inside location
        if name in grids:
            (height, w_cols), (h_rows) = spans[name]
            x_key = axis_key[i, :, :nl, 0, w_cols].unsqueeze(2)  # [B, nl, 1, W]
            y_mask = axis_key[i, :, :nl, 1, h_rows].unsqueeze(3)  # [B, nl, H, 1]
            outside = None
            if not skip_inner:
                outside = (
                    axis_out[i, :, :nl, 0, w_cols].unsqueeze(2),
                    axis_out[i, :, :nl, 1, h_rows].unsqueeze(3),
                )
            key = _grid_key(x_key, y_mask, outside, chunk_elements)
        else:
            level_weights = weights[i, :, :nl, 0]  # [1, nl, 1]
            key = _dense_key(bounds[i, :, :nl], loc, level_weights, skip_inner, chunk_elements)
        rows = torch.gather(lookup[i], 1, key.view(batch, size).long())
        result[name] = table.index_select(0, rows.view(-1)).view(batch, size, 5)
    return result


def _grid_axis_tests(locations, grids, bounds, weights, key_dtype):
    """Per-axis tests of every grid level at once, on the grid's x and y values.

    Returns ``axis_key [Lv, B, nmax, 2, C]`` (x: the candidate weight where
    ``lower < x < upper``; y: all ones where ``lower < y < upper``), ``axis_out`` (all ones
    where the coordinate lies outside the closed inner interval) and, per level, the column
    slices of its x values and y values.
    """
    xs, ys, spans = [], [], {}
    x_end = y_end = 0
    for name, loc in locations.items():
        height, width = grids[name]
        xs.append(loc[:width, 0])
        ys.append(loc[::width, 1])
        spans[name] = ((height, slice(x_end, x_end + width)), slice(y_end, y_end + height))
        x_end, y_end = x_end + width, y_end + height
    columns = max(x_end, y_end)
    first = next(iter(locations.values()))
    xs.append(first.new_full((columns - x_end,), math.nan))
    ys.append(first.new_full((columns - y_end,), math.nan))
    coords = torch.cat(xs + ys).to(torch.float64).view(2, columns)
    b = bounds.unsqueeze(-1)  # [Lv, B, nmax, 8, 1]
    inside = (coords > b[..., 0:2, :]) & (coords < b[..., 2:4, :])
    axis_key = torch.where(inside, weights, 0)
    outside = (coords < b[..., 4:6, :]) | (coords > b[..., 6:8, :])
    axis_out = outside.to(key_dtype).neg_()
    return axis_key, axis_out, spans


def _grid_key(
    x_key: Tensor,
    y_mask: Tensor,
    outside: tuple[Tensor, Tensor] | None,
    chunk_elements: int,
) -> Tensor:
    """Packed key ``[B, H * W]`` of a grid level from its per-axis parts."""
    batch, nl, _, width = x_key.shape
    height = y_mask.shape[2]
    per_row = nl * width  # key elements of one image row
    images = min(batch, max(1, chunk_elements // max(1, per_row)))
    rows = min(height, max(1, chunk_elements // max(1, images * per_row)))
    if images == batch and rows == height:
        return _grid_chunk(x_key, y_mask, outside).view(batch, -1)
    key = torch.empty(batch, height, width, dtype=x_key.dtype, device=x_key.device)
    for b0 in range(0, batch, images):
        sl = slice(b0, b0 + images)
        for r0 in range(0, height, rows):
            rs = slice(r0, r0 + rows)
            part = None if outside is None else (outside[0][sl], outside[1][sl, :, rs])
            key[sl, rs] = _grid_chunk(x_key[sl], y_mask[sl, :, rs], part)
    return key.view(batch, -1)


def _grid_chunk(x_key: Tensor, y_mask: Tensor, outside: tuple[Tensor, Tensor] | None) -> Tensor:
    key = x_key & y_mask  # [b, nl, h, W]
    if outside is not None:
        key &= outside[0] | outside[1]
    return key.amax(1)


def _dense_key(
    bounds: Tensor, loc: Tensor, weights: Tensor, skip_inner: bool, chunk_elements: int
) -> Tensor:
    """Packed key ``[B, L]`` for arbitrary locations (and every level on CUDA)."""
    batch, nl, _ = bounds.shape
    size = loc.shape[0]
    xy = loc.to(torch.float64)
    b = bounds.unsqueeze(-1)  # [B, nl, 8, 1]
    step = max(1, chunk_elements // max(1, batch * nl))
    parts = []
    for s0 in range(0, size, step):
        xs, ys = xy[s0 : s0 + step, 0], xy[s0 : s0 + step, 1]
        ok = (xs > b[:, :, 0]) & (xs < b[:, :, 2]) & (ys > b[:, :, 1]) & (ys < b[:, :, 3])
        if not skip_inner:
            ok &= (xs < b[:, :, 4]) | (xs > b[:, :, 6]) | (ys < b[:, :, 5]) | (ys > b[:, :, 7])
        parts.append(torch.where(ok, weights, 0).amax(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
