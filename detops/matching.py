"""FCOS target assignment: the GT box each FPN location is responsible for.

How the work is kept small (the contract is in the docstring of
:func:`fcos_match_locations_to_gt`; this is only how it is met quickly):

* Every test compares a location coordinate with a per-box, per-level bound formed once
  in float64: ``x - x1 > 0`` is ``x > x1``, ``x2 - x < high`` is ``x > x2 - high``,
  ``|x - cx| < r*s`` is ``cx - r*s < x < cx + r*s``, and ``m > low`` fails exactly when
  the location lies in the closed box ``[x2 - low, x1 + low] x [y2 - low, y1 + low]``.
  So "candidate" is ``X(x) * Y(y) * (1 - Xin(x) * Yin(y))``: separable in x and y.
* Real boxes are sorted per image by ``(area, index)``; padding rows sort last and are
  cut off (on CPU, at the largest real-box count of the batch). The winner of a location
  is its first candidate in that order.
* Sorted box ``j`` of ``K`` carries the weight ``2**(K - 1 - j)``, so ``0.5`` plus the
  sum of the weights of a location's candidates is an exact float64 whose exponent field
  names the winner (``2**-1``: no candidate). Boxes go in groups of at most 52 so the
  sums stay exact.
* On CPU, a level whose locations form a row-major grid (what
  :func:`detops.get_fpn_location_coords` returns) tests its ``W`` x-values and ``H``
  y-values against every box once, and that sum for all ``H * W`` locations is one batched
  matrix product ``[B, H, K] @ [B, K, W]`` (a second one subtracts the inner box). The
  working set is ``O(B * K * (H + W))``, not ``O(B * K * H * W)``.
* Other location sets, and every level on CUDA (where no host read is wanted), test
  locations densely in chunks of at most ``_CHUNK_ELEMENTS`` (box, location) pairs.
* On CPU, when every level is a grid, the gt dtype is float32 or float64 and no image has
  more than 52 real boxes, the same steps run in NumPy (:mod:`detops._match_numpy`):
  at the course's scale the op is a few dozen small array operations, and NumPy's cost
  less (A4 batch on 2 cores, whole calls interleaved: 0.33 ms against 0.56 ms). The grid
  shapes remembered from the last call with the same level sizes are checked there in
  NumPy too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._cache import cached_constant
from ._checks import check_number, check_same_device, check_shape, is_dense_strided, is_finite
from ._match_numpy import match_grid_levels
from ._serial import plain_eager_mode, under_function_transform

__all__ = ["fcos_match_locations_to_gt", "default_size_ranges"]

_OP = "fcos_match_locations_to_gt"
_STRIDE = "a positive finite number"
_RADIUS = "None or a positive number"
_PAIR = "a (low, high) pair of numbers"

# Float dtypes the NumPy path (CPU, grid levels, <= 52 real boxes per image) takes; tests
# switch it off to run the torch path on CPU.
_NUMPY_DTYPES = (torch.float32, torch.float64)
_NUMPY_MATCH = True

# (box, location) pairs tested at once by the dense path, per device type.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}


def default_size_ranges(
    strides_per_fpn_level: Mapping[str, float],
) -> dict[str, tuple[float, float]]:
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


def _common_call(
    locations: object, strides: object, gt_boxes: object, size_ranges: object, radius: object
) -> bool:
    """The common call, recognised in a few attribute reads: arguments that
    :func:`_validate` accepts (dicts of plain tensors ``[L, 2]`` and of positive finite int
    or float strides, ``gt_boxes [N, 5]`` or ``[B, N, 5]``, all floating and on one
    device, no size ranges). Its checks take about 20 µs for three levels, a tenth of
    the course-scale match."""
    if not (
        type(locations) is dict
        and type(strides) is dict
        and type(gt_boxes) is Tensor
        and size_ranges is None
        and (radius is None or _positive_finite(radius))
        and is_dense_strided(gt_boxes)
        and gt_boxes.dim() in (2, 3)
        and gt_boxes.shape[-1] == 5
        and gt_boxes.is_floating_point()
    ):
        return False
    device = gt_boxes.device
    for name, loc in locations.items():
        stride = strides.get(name)
        if not (
            type(loc) is Tensor
            and is_dense_strided(loc)
            and loc.dim() == 2
            and loc.shape[1] == 2
            and loc.is_floating_point()
            and loc.device == device
            and _positive_finite(stride)
        ):
            return False
    return True


def _positive_finite(value: object) -> bool:
    """A Python int or float (not bool) in (0, inf), an int within the float range."""
    if type(value) is float:
        return 0 < value < math.inf
    return type(value) is int and 0 < value < _FLOAT_INT_MAX


_FLOAT_INT_MAX = 1 << 1000  # (ints from 2**1024 on do not convert to a float)


def _validate(
    locations: object, strides: object, gt_boxes: object, size_ranges: object, radius: object
) -> None:
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
    gt_boxes = check_shape(_OP, "gt_boxes", gt_boxes, "[N, 5] or [B, N, 5]", dtype="floating")
    missing = [name for name in locations if name not in strides]
    if missing:
        raise ValueError(
            f"{_OP}: strides_per_fpn_level must name every level of locations_per_fpn_level "
            f"({sorted(locations)}), got {sorted(strides)}"
        )
    for name, loc in locations.items():
        arg = f"locations_per_fpn_level[{name!r}]"
        loc = check_shape(_OP, arg, loc, "[L, 2]", dtype="floating")
        check_same_device(_OP, gt_boxes=gt_boxes, **{arg: loc})
        arg, value = f"strides_per_fpn_level[{name!r}]", strides[name]
        stride = check_number(_OP, arg, value, expected=_STRIDE, numpy_scalars=True)
        if not (stride > 0 and is_finite(stride)):  # a number: its repr is short
            raise ValueError(f"{_OP}: {arg} must be {_STRIDE}, got {value!r}")
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
            arg = f"size_ranges[{name!r}]"
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"{_OP}: {arg} must be {_PAIR}, got {type(pair).__name__}")
            low, high = (check_number(_OP, arg, v, expected=_PAIR) for v in pair)
            if not low <= high:  # (NaN fails it too) numbers: a short repr
                raise ValueError(f"{_OP}: {arg} must be (low, high) with low <= high, got {pair!r}")
    if radius is not None:
        value = check_number(
            _OP, "center_sampling_radius", radius, expected=_RADIUS, numpy_scalars=True
        )
        if not value > 0:
            raise ValueError(f"{_OP}: center_sampling_radius must be {_RADIUS}, got {radius!r}")


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
            anywhere. Degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) and boxes with a NaN
            coordinate contain no location.
        size_ranges (Mapping[str, (low, high)], optional): per-level bounds on ``m``,
            ``low <= high``; only names of ``locations_per_fpn_level``.
        center_sampling_radius (float, optional): the radius ``r`` in strides; None (the
            default) disables center sampling.

    Returns:
        dict[str, Tensor[L, 5] or Tensor[B, L, 5]]: per level, in the order of
        ``locations_per_fpn_level``, the matched GT row of every location (an exact copy of
        that row, class included), or a row of -1 where no box matches. Dtype and device
        are those of ``gt_boxes``. ``N = 0``, all-padding GT or an empty level give rows of
        -1 (or an empty tensor). A batched call equals stacking the per-image calls. The
        levels' tensors are contiguous views into one buffer. Autograd sees a gather, as
        the course code's ``gt_boxes[matched_idxs]``: each matched row's gradient reaches
        the GT row it copies, the -1 rows' none (on every path and device).

    Note:
        No Python loop runs over images, boxes or locations (one runs over levels, and
        over groups of 52 boxes when an image has more). Cost and memory: on CPU, padding
        rows are cut off at the largest real-box count K of the batch, and a level whose
        locations form a row-major grid (as :func:`detops.get_fpn_location_coords` makes
        them) costs ``O(B * K * (H + W))`` memory and one ``[B, H, K] @ [B, K, W]``
        product; other levels are tested in chunks of ``2**18`` (box, location) pairs.
        To do this the op reads a few integers back on CPU (K, and where the locations'
        y changes); there is no device to synchronise with there. On CUDA it reads
        nothing back: it keeps all ``N`` rows and tests every level in chunks.
    """
    if not _common_call(
        locations_per_fpn_level,
        strides_per_fpn_level,
        gt_boxes,
        size_ranges,
        center_sampling_radius,
    ):
        _validate(
            locations_per_fpn_level,
            strides_per_fpn_level,
            gt_boxes,
            size_ranges,
            center_sampling_radius,
        )
    names = list(locations_per_fpn_level)
    if not names:  # no level: nothing to match
        return {}
    ranges = default_size_ranges({name: strides_per_fpn_level[name] for name in names})
    if size_ranges is not None:
        ranges.update({k: (float(v[0]), float(v[1])) for k, v in size_ranges.items()})
    # The CPU path reads a few integers back (K, the grid shapes) and may run in NumPy;
    # under torch.compile, a trace or a torch.func transform the read-free path (CUDA's)
    # runs instead, as one graph with static output shapes, same result.
    on_cpu = gt_boxes.device.type == "cpu" and plain_eager_mode()
    batched = gt_boxes.dim() == 3
    matched = _match(
        locations_per_fpn_level,
        {name: float(strides_per_fpn_level[name]) for name in names},
        ranges,
        None if center_sampling_radius is None else float(center_sampling_radius),
        gt_boxes if batched else gt_boxes.unsqueeze(0),
        compact=on_cpu,
        detect_grid=on_cpu,
        chunk_elements=_CHUNK_ELEMENTS["cpu" if on_cpu else "cuda"],
    )
    if not batched:
        matched = {name: value[0] for name, value in matched.items()}
    return matched


# Boxes per weight group: a sum of distinct powers of two below 2**52, plus 0.5, is exact
# in float64 and has the leading bit of the sum (or 2**-1 when the sum is 0).
_GROUP = 52

_Groups = tuple[tuple[int, int], ...]  # [a, b) ranges of sorted boxes, at most _GROUP each
_Shape = tuple[int, int] | None  # a level's grid (H, W), or None where it is not a grid
_Bounds = tuple[Tensor, Tensor, Tensor, Tensor]  # lower, upper, inner_lo, inner_hi


@cached_constant(maxsize=128)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small tensor of Python numbers, built once per (values, dtype, device).

    Callers never modify it in place.
    """
    return torch.tensor(values, dtype=dtype, device=device)


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
    sizes = [locations[n].shape[0] for n in names]
    batch, count, _ = gt.shape
    recorded = gt.requires_grad and torch.is_grad_enabled()  # (NumPy would drop the graph)
    if compact and detect_grid and _NUMPY_MATCH and gt.dtype in _NUMPY_DTYPES and not recorded:
        by_numpy = _match_numpy(locations, strides, ranges, radius, gt, names, sizes)
        if by_numpy is not None:
            return by_numpy
    device = gt.device
    f64 = torch.float64
    real = gt[..., 4:] != -1  # [B, N, 1]
    # Padding rows become NaN boxes: NaN area (sorted last), and no location is inside.
    corners = torch.where(real, gt[..., :4].to(f64), math.nan)  # [B, N, 4]
    area = (corners[..., 2:] - corners[..., :2]).prod(-1)  # [B, N], the ordering key
    order = torch.sort(area, dim=-1, stable=True).indices  # by (area, index), NaN last
    if compact:  # the most real boxes in one image; later sorted rows never match
        kept = int(real.sum(1).amax()) if batch * count else 0
    else:
        kept = count if batch else 0
    if kept == 0:
        return {name: gt.new_full((batch, n, 5), -1) for name, n in zip(names, sizes, strict=True)}
    order = order[:, :kept]
    edges = torch.gather(corners.permute(2, 0, 1), 2, order.expand(4, batch, kept))
    rows = torch.gather(gt, 1, order.unsqueeze(-1).expand(batch, kept, 5))
    # Row b * (kept + 1) + j of ``table`` is sorted box j of image b; j = kept is -1s.
    table = torch.cat((rows, gt.new_full((batch, 1, 5), -1)), dim=1).view(-1, 5)
    groups = tuple((a, min(a + _GROUP, kept)) for a in range(0, kept, _GROUP))

    # Bounds per level, axis (x, y), image and box: a location is a candidate when
    # lower < coordinate < upper on both axes, and not inner_lo <= coordinate <= inner_hi
    # on both axes (there all four distances are <= low, i.e. m <= low).
    consts = [tuple(ranges[n][1] for n in names), tuple(ranges[n][0] for n in names)]
    if radius is not None:
        consts.append(tuple(radius * strides[n] for n in names))
    high, low, *reach = (
        _constant(tuple(consts), f64, device).view(-1, len(names), 1, 1, 1).unbind(0)
    )
    top_left, bottom_right = edges[:2], edges[2:]  # [2, B, kept]
    lower = torch.maximum(top_left, bottom_right - high)  # [Lv, 2, B, kept]
    upper = torch.minimum(bottom_right, top_left + high)
    if radius is not None:
        centre = (top_left + bottom_right) * 0.5
        lower = torch.maximum(lower, centre - reach[0])
        upper = torch.minimum(upper, centre + reach[0])
    inner_lo, inner_hi = bottom_right - low, top_left + low
    bounds = (lower, upper, inner_lo, inner_hi)

    # ``sums[g]``: 0.5 + the weight sum of group g at every location, level-major:
    # level i fills the contiguous block [B * start_i, B * (start_i + L_i)) as [B, L_i].
    total = batch * sum(sizes)
    # (Under torch.func transforms the blocks are concatenated instead of written into
    # place: vmap refuses to write batched locations' sums into an unbatched buffer.)
    pieces: list[list[Tensor]] | None = [[] for _ in groups] if under_function_transform() else None
    sums = [corners.new_empty(total) for _ in groups] if pieces is None else []
    grids: dict[str, tuple[int, int]] = {}  # the grid levels' (H, W)
    bits: Tensor | None = None
    grid_rows: dict[int, tuple[int, int]] = {}  # level -> its first rows of ``bits``
    shapes, index, coords = _grid_shapes(locations, sizes) if detect_grid else ([], None, None)
    if index is not None and coords is not None:  # some level is a grid
        grids = {name: shape for name, shape in zip(names, shapes, strict=True) if shape}
        # Rows of bits from the first grid level that tests the inner box onwards (all
        # later grid levels must test it too, as with the default ranges in stride order).
        needs = [i for i, n in enumerate(names) if shapes[i] and ranges[n][0] > 0]
        later = [i for i, n in enumerate(names) if shapes[i] and i > (needs or [0])[0]]
        first_inner = None
        if needs:
            first_inner = index.rows[needs[0]][0] if set(later) <= set(needs) else 0
        bits = _grid_axis_bits(coords, index, tuple(shapes), bounds, groups, first_inner)
        grid_rows = index.rows
    start = 0
    for i, name in enumerate(names):
        block = slice(batch * start, batch * (start + sizes[i]))
        start += sizes[i]
        if sizes[i] == 0:
            continue
        inner = ranges[name][0] > 0  # m > low <= 0 holds for every inside location
        if bits is not None and name in grids:
            height, width = grids[name]
            targets = [
                t.as_strided((batch, height, width), (height * width, width, 1), block.start)
                for t in sums
            ]
            _grid_sums(bits, grid_rows[i], groups, inner, targets)
        else:
            level_bounds = (lower[i], upper[i], inner_lo[i], inner_hi[i])
            parts = _dense_sums(level_bounds, locations[name], groups, inner, chunk_elements)
            if pieces is not None:
                for listed, part in zip(pieces, parts, strict=True):
                    listed.append(part.reshape(-1))
                continue
            for target, part in zip(sums, parts, strict=True):
                target[block] = part.view(-1)
    if pieces is not None:
        sums = [torch.cat(listed) if listed else corners.new_empty(0) for listed in pieces]
    picked = _decode(sums, groups, batch, kept, tuple(sizes), device)
    matched = torch.embedding(table, picked)  # [B * sum(L), 5], level-major
    result = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        result[name] = matched.as_strided((batch, size, 5), (size * 5, 5, 1), batch * start * 5)
        start += size
    return result


def _match_numpy(
    locations: Mapping[str, Tensor],
    strides: dict[str, float],
    ranges: dict[str, tuple[float, float]],
    radius: float | None,
    gt: Tensor,
    names: list[str],
    sizes: list[int],
) -> dict[str, Tensor] | None:
    """:func:`_match` by :func:`detops._match_numpy.match_grid_levels` (CPU), or None
    where that path does not apply (a level that is not a grid, more than 52 real boxes
    in an image)."""
    grid = _numpy_grid_levels(locations, sizes) if all(sizes) else None
    if grid is None:
        return None
    shapes, rows, values = grid
    levels = []
    for i, (name, (height, width)) in enumerate(zip(names, shapes, strict=True)):
        x_row, y_row = rows[i]
        low, high = ranges[name]
        reach = None if radius is None else radius * strides[name]
        xs, ys = values[x_row : x_row + width], values[y_row : y_row + height]
        levels.append((xs, ys, low, high, reach))
    buffer = match_grid_levels(gt.detach().numpy(), levels)
    if buffer is None:
        return None
    matched = torch.from_numpy(buffer)
    result, start, batch = {}, 0, gt.shape[0]
    for name, size in zip(names, sizes, strict=True):
        result[name] = matched.as_strided((batch, size, 5), (size * 5, 5, 1), batch * start * 5)
        start += size
    return result


_NumpyGrid = tuple[list[tuple[int, int]], dict[int, tuple[int, int]], np.ndarray]


@functools.lru_cache(maxsize=16)
def _numpy_grid_index(
    sizes: tuple[int, ...], shapes: tuple[_Shape, ...]
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """NumPy views of :func:`_grid_index`'s rebuild and coords indices (CPU), and its
    rows (never modified)."""
    index = _grid_index(sizes, shapes, torch.device("cpu"))
    return index.rebuild.numpy(), index.coords.numpy(), index.rows


_NUMPY_LOCATION_DTYPES = (torch.float32, torch.float64)


def _numpy_grid_levels(locations: Mapping[str, Tensor], sizes: list[int]) -> _NumpyGrid | None:
    """For the NumPy path: every level's ``(H, W)``, the levels' first rows in the
    coordinates, and the grid x-values and y-values (float64), or None when some level is
    not a grid. The shapes of the last call with these level sizes are checked in NumPy
    (one comparison of all locations with the grids they imply); otherwise
    :func:`_grid_shapes` searches, and records them for the next call."""
    key = tuple(sizes)
    hint = _SHAPE_HINTS.get(key)
    if (
        hint is not None
        and all(hint)
        and all(loc.dtype in _NUMPY_LOCATION_DTYPES for loc in locations.values())
    ):
        shapes = [shape for shape in hint if shape]
        rebuild, coords, rows = _numpy_grid_index(key, hint)
        flat = np.concatenate([loc.detach().numpy() for loc in locations.values()]).reshape(-1)
        if np.array_equal(flat[rebuild], flat):
            return shapes, rows, flat[coords].astype(np.float64)
    found, index, values = _grid_shapes(locations, sizes)
    if index is None or values is None or not all(found):
        return None
    return [shape for shape in found if shape], index.rows, values.numpy()


def _weights(groups: _Groups) -> list[float]:
    """Sorted box j of the group ``[a, b)`` weighs ``2**(b - 1 - j)``."""
    return [2.0 ** (b - 1 - j) for a, b in groups for j in range(a, b)]


@cached_constant(maxsize=16)
def _row_base(
    batch: int, kept: int, sizes: tuple[int, ...], shift: int, device: torch.device
) -> Tensor:
    """``b * (kept + 1) + shift`` for every level-major location of image b
    (``[B * sum(L)]``; never modified in place)."""
    image = torch.arange(batch, device=device) * (kept + 1) + shift
    return torch.cat([image.repeat_interleave(size) for size in sizes])


def _decode(
    sums: list[Tensor],
    groups: _Groups,
    batch: int,
    kept: int,
    sizes: tuple[int, ...],
    device: torch.device,
) -> Tensor:
    """Rows of ``table`` from each group's ``0.5 + weight sum``.

    The biased float64 exponent of ``0.5 + sum`` is ``1022 + e`` where ``e`` is the bit
    length of the integer sum: in group ``[a, b)`` its leading bit comes from box
    ``b - e``, and ``e == 0`` means no candidate in that group. The first group with a
    candidate wins; the last group's ``e == 0`` lands on row ``kept``, the -1 row.
    """
    exponents = [total.view(torch.int64) >> 52 for total in sums]  # 1022 + e
    picked = _row_base(batch, kept, sizes, groups[-1][1] + 1022, device) - exponents[-1]
    for (_, end), exponent in zip(reversed(groups[:-1]), reversed(exponents[:-1]), strict=True):
        base = _row_base(batch, kept, sizes, end + 1022, device)
        picked = torch.where(exponent > 1022, base - exponent, picked)
    return picked


class _GridIndex(NamedTuple):
    coords: Tensor  # [S]: flat indices of every grid level's x-values, then its y-values
    owner: Tensor  # [S]: row (2 * level + axis) of the bounds each coordinate is tested with
    rebuild: Tensor  # [2 * sum(L)]: for each flat entry, the flat entry it must equal
    rows: dict[int, tuple[int, int]]  # level -> (first x row, first y row) in ``coords``


@cached_constant(maxsize=16)
def _grid_index(
    sizes: tuple[int, ...], shapes: tuple[_Shape, ...], device: torch.device
) -> _GridIndex:
    """Index tensors for the grid levels ``shapes`` (``(H, W)`` or None per level).

    ``flat`` is all locations as ``[x0, y0, x1, y1, ...]``. ``rebuild`` maps every entry
    of a grid level to the entry of its grid's first row (x) or first column (y), and every
    entry of another level to itself, so ``flat[rebuild] == flat`` exactly when the grid
    levels are the grids ``shapes`` says.
    """
    coords: list[int] = []
    owner: list[int] = []
    rebuild: list[int] = []
    rows: dict[int, tuple[int, int]] = {}
    start = 0
    for level, (size, shape) in enumerate(zip(sizes, shapes, strict=True)):
        if not shape:
            rebuild.extend(range(2 * start, 2 * (start + size)))
            start += size
            continue
        height, width = shape
        x_row = len(coords)
        coords.extend(range(2 * start, 2 * (start + width), 2))
        y_row = len(coords)
        coords.extend(range(2 * start + 1, 2 * (start + size), 2 * width))
        owner.extend([2 * level] * width + [2 * level + 1] * height)
        for k in range(size):
            rebuild.extend((coords[x_row + k % width], coords[y_row + k // width]))
        rows[level] = (x_row, y_row)
        start += size

    def as_tensor(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return _GridIndex(as_tensor(coords), as_tensor(owner), as_tensor(rebuild), rows)


# The grid shapes last found for a tuple of level sizes: a hint, always verified.
_SHAPE_HINTS: dict[tuple[int, ...], tuple[_Shape, ...]] = {}


def _grid_shapes(
    locations: Mapping[str, Tensor], sizes: list[int]
) -> tuple[list[_Shape], _GridIndex | None, Tensor | None]:
    """Per level, ``(H, W)`` if its rows are ``(xs[k % W], ys[k // W])`` (else None); with
    the grid index and the grid levels' x-values and y-values (float64), or None.

    Candidate shapes come from the last call with the same level sizes, or else from the
    positions where y changes between consecutive rows. One comparison of all locations
    with the grids rebuilt from their first row and first column then confirms every
    level at once (a failed hint falls back to the search). Reads at most the change
    positions and two booleans back from the tensors (CPU only).
    """
    if not any(sizes):
        return [None] * len(sizes), None, None
    flat = torch.cat(list(locations.values())).to(torch.float64).view(-1)
    key = tuple(sizes)
    hint = _SHAPE_HINTS.get(key)
    if hint is not None and any(hint):
        index = _grid_index(key, hint, flat.device)
        if torch.equal(flat.index_select(0, index.rebuild), flat):
            return list(hint), index, flat.index_select(0, index.coords)
    shapes = _search_shapes(flat, sizes)
    if any(shapes):
        index = _grid_index(key, tuple(shapes), flat.device)
        if not torch.equal(flat.index_select(0, index.rebuild), flat):
            shapes = _verify_each(flat, sizes, shapes)  # some level is not a grid: find it
    if len(_SHAPE_HINTS) > 64:
        _SHAPE_HINTS.clear()
    _SHAPE_HINTS[key] = tuple(shapes)
    if not any(shapes):
        return shapes, None, None
    index = _grid_index(key, tuple(shapes), flat.device)
    return shapes, index, flat.index_select(0, index.coords)


def _search_shapes(flat: Tensor, sizes: list[int]) -> list[_Shape]:
    """Candidate ``(H, W)`` per level from the positions where y changes: a level is a
    candidate grid when its rows start exactly every W locations."""
    shapes: list[_Shape] = [None] * len(sizes)
    ys = flat[1::2]
    changes = torch.nonzero(ys[1:] != ys[:-1]).view(-1).tolist()  # row k starts at c + 1
    start = position = 0
    for level, size in enumerate(sizes):
        end = start + size
        starts = []
        while position < len(changes) and changes[position] + 1 < end:
            starts.append(changes[position] + 1 - start)
            position += 1
        if position < len(changes) and changes[position] + 1 == end:
            position += 1  # the step from this level to the next one
        width = starts[0] if starts else size
        if size and starts == list(range(width, size, width)) and size % width == 0:
            shapes[level] = (size // width, width)
        start = end
    return shapes


def _verify_each(flat: Tensor, sizes: list[int], shapes: list[_Shape]) -> list[_Shape]:
    """Keep the shapes whose rows all equal their first row."""
    start = 0
    kept: list[_Shape] = []
    for size, shape in zip(sizes, shapes, strict=True):
        if shape:
            height, width = shape
            later = flat.as_strided((height - 1, width), (2 * width, 2), 2 * (start + width))
            earlier = flat.as_strided((height - 1, width), (2 * width, 2), 2 * start)
            shape = shape if torch.equal(later, earlier) else None
        kept.append(shape)
        start += size
    return kept


def _grid_axis_bits(
    coords: Tensor,
    index: _GridIndex,
    shapes: tuple[_Shape, ...],
    bounds: _Bounds,
    groups: _Groups,
    first_inner: int | None,
) -> Tensor:
    """Per-axis tests of every grid level at once, as weighted float64 factors.

    Row r of the result tests coordinate ``coords[r]`` (an x-value or a y-value of some
    grid level) against every image and box: ``bits [2 (variant), S, B, kept]``. On x rows
    variant 0 is ``X * weight`` and variant 1 ``X * Xin * weight``; on y rows variant 0 is
    ``Y`` and variant 1 ``-(Y * Yin)``, so that per level
    ``Y0 @ X0 + Y1 @ X1 = sum_j weight_j * X * Y * (1 - Xin * Yin)``. Image and box are
    the innermost dimensions (``B * kept`` long) so the elementwise kernels run long rows.
    Variant 1 is filled from row ``first_inner`` on (None: nowhere); levels that test no
    inner box never read it.
    """
    levels, _, batch, kept = bounds[0].shape
    per_row = torch.stack(bounds, dim=2).view(levels * 2, 4, batch * kept)
    lower, upper, inner_lo, inner_hi = per_row.index_select(0, index.owner).unbind(1)
    coords = coords.unsqueeze(1)  # [S, 1]
    inside = (coords > lower) & (coords < upper)  # [S, B * kept]
    factors = _factors(shapes, groups, batch, coords.device)  # [2, S, B * kept]
    bits = coords.new_empty(2, len(coords), batch * kept)
    # (uint8 views: the bool-times-float kernel is several times slower on CPU)
    torch.mul(inside.view(torch.uint8), factors[0], out=bits[0])
    if first_inner is not None:  # variant 1 only on the rows of levels that read it
        rows = slice(first_inner, None)
        inner = inside[rows] & (coords[rows] >= inner_lo[rows]) & (coords[rows] <= inner_hi[rows])
        torch.mul(inner.view(torch.uint8), factors[1, rows], out=bits[1, rows])
    return bits.view(2, len(coords), batch, kept)


@cached_constant(maxsize=16)
def _factors(
    shapes: tuple[_Shape, ...], groups: _Groups, batch: int, device: torch.device
) -> Tensor:
    """``[2 (variant), S, B * kept]``: the factor of every (image, box) column on every
    row of ``bits`` (x rows: the box weight; y rows: 1, and -1 for variant 1)."""
    weights = torch.tensor(_weights(groups), dtype=torch.float64, device=device).repeat(batch)
    is_x = torch.tensor(
        [
            x
            for height, width in (s for s in shapes if s)
            for x in [True] * width + [False] * height
        ],
        device=device,
    ).unsqueeze(1)
    ones = torch.ones_like(weights)
    return torch.stack((torch.where(is_x, weights, ones), torch.where(is_x, weights, -ones)))


def _grid_sums(
    bits: Tensor, first_rows: tuple[int, int], groups: _Groups, inner: bool, targets: list[Tensor]
) -> None:
    """Write ``0.5 + weight sum`` of each group at a grid level into ``targets [B, H, W]``."""
    x_row, y_row = first_rows
    _, _, batch, kept = bits.shape
    s_variant, s_row, s_batch, _ = bits.stride()
    half = _constant((((0.5,),),), torch.float64, bits.device)  # [1, 1, 1]
    for (a, b), out in zip(groups, targets, strict=True):
        height, width = out.shape[1:]
        for variant in (0, 1) if inner else (0,):
            # y factors [B, H, n] (row-major), x factors [B, n, W] (column-major)
            shift = bits.storage_offset() + variant * s_variant + a
            y = bits.as_strided((batch, height, b - a), (s_batch, s_row, 1), shift + y_row * s_row)
            x = bits.as_strided((batch, b - a, width), (s_batch, 1, s_row), shift + x_row * s_row)
            if variant == 0:
                torch.baddbmm(half, y, x, out=out)
            else:
                out.baddbmm_(y, x)


def _dense_sums(
    bounds: _Bounds, loc: Tensor, groups: _Groups, inner: bool, chunk: int
) -> list[Tensor]:
    """``0.5 + weight sum`` ``[B, L]`` of each group, for any locations."""
    lower, upper, inner_lo, inner_hi = (b.permute(1, 2, 0).unsqueeze(2) for b in bounds)
    batch, kept = lower.shape[:2]  # bounds now [B, kept, 1, 2]
    weights = _constant(tuple(_weights(groups)), torch.float64, loc.device)
    xy = loc.to(torch.float64)
    step = max(1, chunk // max(1, batch * kept))
    sums = []
    for s0 in range(0, xy.shape[0], step):
        part = xy[s0 : s0 + step]  # [l, 2]
        candidate = ((part > lower) & (part < upper)).all(-1)  # [B, kept, l]
        if inner:
            candidate &= ((part < inner_lo) | (part > inner_hi)).any(-1)
        sums.append([weights[a:b] @ candidate[:, a:b].to(torch.float64) for a, b in groups])
    return [torch.cat([part[g] for part in sums], dim=-1).add_(0.5) for g in range(len(groups))]
