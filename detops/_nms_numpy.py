"""Greedy NMS with groups (classes, images) for finite boxes on CPU, in NumPy.

At a few hundred boxes the cost of NMS is the fixed cost per array operation, not arithmetic: a
NumPy call costs about 0.5 µs, a torch call 2-3 µs, so the same steps written in NumPy
beat detops' torch path 2-4x and come about even with ``torchvision.ops.batched_nms``'s
single kernel call (about 16 µs by itself) on class-offset boxes, which is not exact.
NumPy's float32/float64 elementwise arithmetic is IEEE arithmetic, so the IoU below is
torchvision's kernel arithmetic bit for bit (see the :mod:`detops.nms` docstring):
``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))`` and
``iou = inter / ((area_i + area_j) - inter)``, compared with ``>`` against the threshold
as :func:`detops.nms._threshold_in` gives it.

With several groups, clustered boxes (a detector's candidates: NMS keeps a few percent)
are first resolved in rounds, all groups at once: each group's best box left is kept and
suppresses its group's boxes; the rounds stop when they remove few boxes. Clustered
boxes take a few rounds, a fixed number of NumPy calls each; torchvision's kernel pays
``kept * N`` per group and ``batched_nms`` one kernel call on class-offset boxes, inexact.

Up to four groups need no rounds: with non-negative coordinates (or negative ones that
leave the groups apart, see ``_apart_once_mirrored``), mirrored into a quadrant each
(exact, see ``_mirrored``), a few hundred boxes (up to 1500
clustered ones) go to one kernel call, as ``batched_nms``'s offset boxes do, without its
rounding; more go to the kernel once per group, or to the caller's path where its cost
model prefers that (see ``_MIRROR_ALWAYS_MAX``). Where the group ids are two
consecutive values, :func:`mirrored_call` does this in torch ops only, before any NumPy
call: the kernel call runs quicker after torch ops than after NumPy's (see
``_mirrored_pair``).

What the rounds leave (scattered boxes: NMS keeps most of them) is resolved in Python
over the pairs above the threshold (usually a few per box): box ``j`` is suppressed by a
kept, higher-scored box ``i`` of its group. The pairs arrive sorted by ``i``, so when box
``i``'s pairs come up, whether ``i`` itself is kept is already settled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._serial import numpy_view

__all__ = [
    "CLASS_NMS_MAX_BOXES",
    "CLUSTER_HITS",
    "NUMPY_NMS_MAX_BOXES",
    "best_box_hits",
    "kept_share",
    "kernel_per_group",
    "mirrored_call",
    "numpy_greedy_nms",
    "top_hits",
]

# Up to this many boxes class_spec_nms and batched_nms_per_image take this path on CPU
# outright (measured on 2 cores: 0.24 ms here vs 0.47 ms on the sparse path at 500).
NUMPY_NMS_MAX_BOXES = 768
# Up to this many, class_spec_nms still takes it, but asks the caller before running the
# kernel on large groups (measured on 2 cores, 20 classes, here vs the sparse path:
# scattered 0.40 vs 1.04 ms at 1000 boxes, 2.2 vs 2.6 at 3000, 4.6 vs 3.4 at 5000;
# clustered 0.86 vs 1.38 at 3000, 1.29 vs 1.93 at 5000).
CLASS_NMS_MAX_BOXES = 3000
# Up to this many boxes the pairs of a group are read from an N x N mask (same group and
# i < j, in score order); above, they are listed per group after a sort by group, which
# takes more calls but no N^2 work (measured on 2 cores, whole class_spec_nms calls, mask
# vs listed: 20 classes 32.5 vs 41.0 µs at 64 boxes, 34.6 vs 41.5 at 80, 44.4 vs 47.2 at
# 112; 2 classes 66.3 vs 69.3 at 80, 81.8 vs 76.9 at 96; 1 class 83.6 vs 83.4 at 80).
_ALL_PAIRS_MAX = 80
# Up to this many boxes, where at least 1 / _DENSE_SHARE of all pairs share a group (few
# groups), the IoU of every pair is computed at once as a matrix instead of pair by pair
# (1 class: 48.5 vs 52.9 µs at 50 boxes, 39.4 vs 41.1 at 32; pair by pair from the mask
# at 20 classes: 26.4 vs 39.1 at 50).
_DENSE_MAX = 56
_DENSE_SHARE = 3
# Up to this many pairs above the threshold the greedy loop goes pair by pair in Python;
# above, box by box with one NumPy assignment per kept box (bounded by N, not by pairs).
_PAIR_LOOP_MAX = 512
# With more than this many pairs per group (few, large classes) the groups are run
# through the kernel one at a time instead: a kernel call costs 20 µs and more, a pair
# here about 0.025 µs. Measured on 2 cores in whole calls, kernel vs pairs: even at 3000
# to 4000 pairs a group (1 class of 80 boxes: 84 vs 82 µs, 4 of 90: 318 vs 308, 1 of 90:
# 80 vs 94); 20 classes of 38: 803 vs 337 µs; 2 of 150: 256 vs 350.
_PAIRS_PER_KERNEL_CALL = 3000


def numpy_greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    threshold: float,
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
    kernel_ok: Callable[..., bool] | None = None,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Tensor | None:
    """Kept indices by descending score (ties: lower index first), or None when an input
    value is not finite (the caller then takes its own path, which handles NaN and inf),
    or when the groups are large enough for ``kernel`` and ``kernel_ok()`` says that the
    caller's own path is cheaper (the kernel's cost grows with ``kept * n`` per group).

    ``boxes`` [N, 4] and ``scores`` [N] are CPU float32/float64 (same dtype), N >= 1;
    ``groups`` [N] integer or None (one group); ``threshold`` is ``iou_threshold``
    already in the boxes' dtype (``_threshold_in``). Boxes of different groups never
    suppress each other. ``kernel(boxes, scores, iou_threshold)`` is plain NMS with the
    same answer (torchvision's kernel), used one group at a time where groups are large.
    Groups are first resolved in rounds (:func:`_head_rounds`) while that pays; where
    boxes are left that neither the pairs nor the kernel should take, ``finish(indices)``
    (the caller's path on those boxes alone) gives the positions of the kept ones in
    ``indices``; without ``finish``, None.
    """
    b, s = numpy_view(boxes), numpy_view(scores)
    with np.errstate(all="ignore"):  # overflow and 0 / 0 are part of the contract
        # One reduction: NaN or inf anywhere makes it non-finite (so does an overflow,
        # which only sends the call down the caller's path, correct too).
        if not math.isfinite(sum((s @ b).tolist())):
            return None
        g = None if groups is None else numpy_view(groups)
        if b.shape[0] <= _ALL_PAIRS_MAX or g is None:
            return torch.from_numpy(_all_pairs(b, s, g, threshold).astype(np.int64, copy=False))
        low, high = int(g.min()), int(g.max())
        if low == high:  # one group: plain NMS, which the kernel does in one call
            if kernel_ok is not None and not kernel_ok():
                return None
            return kernel(boxes, scores, iou_threshold)
        quadrant, groups_present = _quadrants(g, low, high)
        if quadrant is not None:
            limit = _MIRROR_TWO_ALWAYS_MAX if groups_present == 2 else _MIRROR_ALWAYS_MAX
            mirrorable = float(b.min()) >= 0 or _apart_once_mirrored(
                b, (quadrant & _AXIS_BITS) != 0
            )
            if mirrorable or b.shape[0] > _MIRROR_ALWAYS_MAX:  # (else the rounds and pairs)
                return _few_groups(
                    b,
                    s,
                    quadrant,
                    limit,
                    mirrorable,
                    scores,
                    threshold,
                    iou_threshold,
                    kernel,
                    kernel_ok,
                )
        routes = _Routes(threshold, iou_threshold, kernel, kernel_ok)
        rounds = True
        if b.shape[0] > CLASS_NMS_MAX_BOXES and top_hits(b, s, threshold, g) < CLUSTER_HITS:
            # No sign of clusters, too many boxes for the pairs: no rounds, and the
            # kernel once per group or the caller's path, without sorting for nothing.
            if kernel_ok is not None and not kernel_ok():
                return None
            rounds = False
        order, grouped = _by_group(s, g)  # by group, then descending score, then index
        planes = np.ascontiguousarray(b.take(order, axis=0).T)  # [4, N]: x1, y1, x2, y2
        wh = planes[2:] - planes[:2]
        area = wh[0] * wh[1]
        bounds = _group_starts(grouped)
        heads = alive = _NONE
        few_groups_left = False
        tried = rounds and b.shape[0] >= _ROUND_GROUP_SIZE * (bounds.shape[0] - 1)
        if tried:
            heads, alive, few_groups_left = _head_rounds(planes, area, grouped, threshold)
        if heads.shape[0] == 0:  # no rounds: the pairs, or the kernel per group
            if tried:  # the group heads suppressed few boxes: a scattered input
                routes = routes._replace(share=_SCATTERED_SHARE)
            kept = _group_pairs(s, order, grouped, planes, area, routes, bounds)
        else:
            kept = order.take(heads)
            found = None
            if few_groups_left:  # clusters, and many rounds to go: the kernel per group
                rest = order.take(alive)
                found = _kernel_per_group(
                    np.ascontiguousarray(planes.take(alive, axis=1).T),
                    s.take(rest),
                    rest,
                    _group_starts(grouped.take(alive)).tolist(),
                    routes.iou_threshold,
                    routes.kernel,
                )
            if found is None and alive.shape[0]:  # the rest, still in group and score order
                rest = order.take(alive)
                found = _group_pairs(
                    s,
                    rest,
                    grouped.take(alive),
                    planes.take(alive, axis=1),
                    area.take(alive),
                    routes,
                )
                if found is None and finish is not None:
                    found = rest.take(finish(rest))
                if found is None:
                    return None
            if found is not None:
                kept = np.concatenate((kept, found))
        return None if kept is None else torch.from_numpy(_by_score(kept, s))


# Up to this many boxes of at most four groups go to one mirrored kernel call whatever
# they look like (measured on 2 cores against the rounds and pairs, 2 classes: clustered
# 64 vs 116 µs at 200 boxes, 78 vs 150 at 300 with 3 classes; scattered 163 vs 224 at
# 200, 298 vs 321 at 300); above, up to _MIRROR_CLUSTERED_MAX, where the best box
# suppresses a cluster (best_box_hits). Otherwise the kernel once per group: one call
# pays ``kept * N`` over all groups, one per group a 1 / groups share of that (scattered
# boxes keep most of them), for the price of sorting by group and merging by score
# (measured on 2 cores, whole calls, per group vs mirrored vs the rounds and pairs:
# clustered, 2 classes, 1000 boxes 348 vs 281 vs 343 µs, 2000: 700 vs 717 vs 751;
# 3 classes, 3000: 1142 vs 1592 vs 1854; scattered, 2 classes, 400: 428 vs 396 vs 540,
# 700: 918 vs 1034 vs 1029; 4 classes, 1000: 1068 vs 2060 vs 1906). Scattered boxes above
# NUMPY_NMS_MAX_BOXES go to the kernel per group only where the caller's cost model, given
# the share a scattered input keeps, prefers it to its own path (2 classes, 1000 boxes:
# kernel 1688, the sparse path 1240 µs; 2000: 5998 vs 2600).
_MIRROR_ALWAYS_MAX = 300
_MIRROR_CLUSTERED_MAX = 1500
# Two groups in opposite quadrants cost the kernel what ``batched_nms``'s one call on
# offset boxes costs it, so up to this many boxes (where batched_nms makes that call)
# they take the call without the best_box_hits check (about 20 µs at 400 boxes, 30-70 in
# a whole call at 1000; scattered, 2 classes, 400 boxes: mirrored 409 against 443 µs per
# group; 700: 1052 against 942; 1000 boxes, interleaved with batched_nms: mirrored 2961,
# per group 2976, batched_nms 3045).
_MIRROR_TWO_ALWAYS_MAX = 1000
# The share of boxes that NMS keeps where the best box suppresses few (random_detections:
# 40-90%), for the cost model.
_SCATTERED_SHARE = 0.75
# Group ids spanning more values are not ranked for mirroring (an array as long as the
# span).
_MIRROR_SPAN = 1024


def _few_groups(
    b: np.ndarray,
    s: np.ndarray,
    quadrant: np.ndarray,
    limit: int,
    mirrorable: bool,
    scores: Tensor,
    threshold: float,
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
    kernel_ok: Callable[..., bool] | None,
) -> Tensor | None:
    """NMS of more than _ALL_PAIRS_MAX boxes in at most four groups (``quadrant``, from
    :func:`_quadrants`) by one mirrored kernel call (``mirrorable``: no negative
    coordinate, or groups apart once mirrored; up to ``limit`` boxes, more where
    clustered) or the kernel once per group (see _MIRROR_ALWAYS_MAX); None where the
    caller's own path is cheaper. Where not mirrorable, the best box's hits (a sign of
    clusters) decide whether the caller's cost model is asked, whatever the size."""
    n = b.shape[0]
    hits = 0 if mirrorable and n <= limit else best_box_hits(b, s, threshold, quadrant)
    clustered = hits >= CLUSTER_HITS
    if mirrorable and (n <= limit or (clustered and n <= _MIRROR_CLUSTERED_MAX)):
        return kernel(torch.from_numpy(_mirrored(b, quadrant)), scores, iou_threshold)
    if kernel_ok is not None and hits < 2 * CLUSTER_HITS:  # (as nms: a sure sign of clusters)
        share = None if clustered else _SCATTERED_SHARE
        if not kernel_ok(share=share):
            return None
    # (the quadrants as int8, which NumPy radix-sorts)
    by_group = _by_group_kernel(b, s, quadrant.astype(np.int8), iou_threshold, kernel)
    return torch.from_numpy(by_group)


def best_box_hits(b: np.ndarray, s: np.ndarray, t: float, g: np.ndarray | None = None) -> int:
    """How many other boxes (of its group, with ``g``) the best-scored box would suppress:
    :func:`top_hits` of one box (about 13 µs at a few hundred boxes, 31 µs at 5000, warm;
    see :func:`_above`)."""
    best = int(s.argmax())
    above = _above(np.ascontiguousarray(b.T), best, t)
    if g is not None:
        above &= g == g[best]
    above[best] = False  # (an empty box does not overlap itself)
    return int(np.count_nonzero(above))


# The boxes of quadrant q (one per group, _quadrants) go to one kernel call with their x
# (q & 1) and y (q & 2) coordinates negated, the corners swapped so that each box stays
# (x1, y1, x2, y2): a negated x column is -x2, -x1. Negation is exact, and min, max and
# differences only change sign, so each IoU the kernel computes within a group is the
# unmirrored one bit for bit; boxes with non-negative coordinates in different quadrants
# never intersect (IoU 0), nor do others that _apart_once_mirrored passes. Each
# quadrant's columns that take the negated, swapped value:
_SWAPPED_INDEX = np.array([2, 3, 0, 1])
_NEGATED_ROWS = np.array(
    [[False] * 4, [True, False, True, False], [False, True, False, True], [True] * 4]
)
for _table in (_SWAPPED_INDEX, _NEGATED_ROWS):
    _table.flags.writeable = False
_SWAPPED_COLUMNS = torch.from_numpy(_SWAPPED_INDEX.copy())  # (for torch; never modified)


def _quadrants(g: np.ndarray, low: int, high: int) -> tuple[np.ndarray | None, int]:
    """The quadrant (0-3) of each box, one per group, where there are at most four
    groups (ids ``low`` to ``high``; ranked by a bincount where they span fewer than
    _MIRROR_SPAN values, else by a sort), and how many groups there are; None (and 0)
    where there are more. Two groups take opposite
    quadrants: apart on both axes, as class-offset boxes are. (In adjacent quadrants the
    boxes of two groups still overlap on one axis, and the kernel's ``max(0, overlap)``
    there goes either way at random: the same call took 20% longer on 500 scattered boxes
    in 2 classes, 9% on 1000 clustered ones.)"""
    if high - low == 1:  # the common two classes, without counting them
        return (g - low) * 3, 2
    if high - low >= _MIRROR_SPAN:  # ids far apart: ranked by a sort instead
        if len(set(g[:: max(1, g.shape[0] // 64)].tolist())) > 4:  # (most inputs of many)
            return None, 0
        ids, rank = np.unique(g, return_inverse=True)
        if ids.shape[0] > 4:
            return None, 0
        return np.array(_QUADRANTS[ids.shape[0]]).take(rank), ids.shape[0]
    offset = g.astype(np.intp) - low  # (in int8, ids 128 apart would wrap around)
    present = np.flatnonzero(np.bincount(offset))
    if present.shape[0] > 4:
        return None, 0
    quadrant = np.zeros(high - low + 1, dtype=np.intp)
    quadrant[present] = _QUADRANTS[present.shape[0]]
    return quadrant.take(offset), present.shape[0]


_QUADRANTS = {2: (0, 3), 3: (0, 1, 2), 4: (0, 1, 2, 3)}  # by the number of groups
_AXIS_BITS = np.array([[1], [2]])  # a quadrant's bits: x negated, y negated


def _apart_once_mirrored(b: np.ndarray, negated: np.ndarray) -> bool:
    """Whether boxes of different quadrants stay apart once mirrored (:func:`_mirrored`)
    where some coordinate is negative: on each axis, the lowest coordinate of the boxes
    that keep their sign there plus the lowest of those negated there is at least 0.
    ``negated`` [2, N] bool: whether box ``n`` is negated on x (row 0), on y (row 1).
    (Two boxes of different quadrants differ on an axis where one is negated: its
    coordinates there are then at most the other's lowest, so the kernel's
    ``max(0, min(x2) - max(x1))`` is 0, and so is their IoU. A rounded sum has the exact
    sum's sign.) Boxes a little outside the image often pass: their class's boxes lie
    near one border, the other classes' away from it. (In NumPy, on contiguous rows.)"""
    planes = np.ascontiguousarray(b.T)
    lowest = np.minimum(planes[:2], planes[2:])  # [2, N]: each box's lowest x and y
    kept = np.where(negated, np.inf, lowest).min(1)
    flipped = np.where(negated, lowest, np.inf).min(1)
    return bool((kept + flipped >= 0).all())


def _mirrored(b: np.ndarray, quadrant: np.ndarray) -> np.ndarray:
    """``b`` [N, 4] (non-negative, or passed by _apart_once_mirrored) with box ``i``
    moved to quadrant ``quadrant[i]`` (0-3) as above: plain NMS of the result is NMS
    within quadrants, exactly. (In NumPy, after the NumPy path's checks: torch's
    mirroring there left the kernel call slower, 177 against 156 µs at 200 clustered
    boxes of 4 classes, interleaved.)"""
    flipped = b.take(_SWAPPED_INDEX, axis=1)
    np.negative(flipped, out=flipped)
    return np.where(_NEGATED_ROWS.take(quadrant, axis=0), flipped, b)


def _mirrored_pair(boxes: Tensor, second: Tensor) -> Tensor:
    """:func:`_mirrored` of two groups in torch ops, into quadrants 0 and 3 (``second``:
    [N] bool, the boxes of quadrant 3). After torch ops alone, the kernel call runs
    quicker than after NumPy's (measured interleaved with ``batched_nms``, whose offset
    is torch ops too: 200 / 500 / 1000 clustered boxes, 131 / 140 / 299 µs against 155 /
    154 / 316 with NumPy's checks and mirroring)."""
    flipped = boxes.index_select(1, _SWAPPED_COLUMNS).neg_()
    return torch.where(second.unsqueeze(1), flipped, boxes)


# mirrored_call takes two consecutive group ids, up to this many boxes (where
# torchvision.ops.batched_nms makes the same one call on class-offset boxes). (Ids two or
# three apart could hold two groups or more: which, and so which quadrants, takes
# counting, which the NumPy path does; the torch route put ids 0 and 2 in adjacent
# quadrants, 455 against 374 µs for ids 0 and 1 at 300 scattered boxes.)
_MIRROR_CALL_MAX_BOXES = _MIRROR_TWO_ALWAYS_MAX
# ... and from this many (fewer go to the all-pairs path, quicker at that size; a copy,
# so that tests forcing other NumPy routes through _ALL_PAIRS_MAX leave it alone).
_MIRROR_CALL_MIN_BOXES = _ALL_PAIRS_MAX + 1


def mirrored_call(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
) -> Tensor | None:
    """Greedy NMS within two groups as one ``kernel`` call on mirrored boxes (see
    :func:`_mirrored_pair`: opposite quadrants, apart on both axes), in torch ops (and,
    for negative coordinates, a NumPy check where torch's quick one fails), where the
    group ids are two consecutive values, from ``_MIRROR_CALL_MIN_BOXES`` up to
    ``_MIRROR_CALL_MAX_BOXES`` boxes of any look; None where it does not apply:
    other sizes or ids, negative coordinates that leave the groups overlapping once
    mirrored (:func:`_apart_once_mirrored`), a non-finite value. ``boxes`` [N, 4] and
    ``scores`` [N] are CPU float32/float64 (same dtype), ``groups`` [N] int32/int64, as
    :func:`numpy_greedy_nms` takes them."""
    n = boxes.shape[0]
    if not _MIRROR_CALL_MIN_BOXES <= n <= _MIRROR_CALL_MAX_BOXES:
        return None
    # Eight ids, spread out, refute most inputs of more classes before a reduction.
    sample = numpy_view(groups)[:: n // 8].tolist()
    if max(sample) - min(sample) > 1:
        return None
    first, last = (int(value) for value in groups.aminmax())
    if last - first != 1:
        return None
    with torch.no_grad():  # (the output is indices: nothing to record)
        low, high = boxes.aminmax()  # NaN gives NaN, which fails every test
        if not (float(high) < math.inf and math.isfinite(scores.sum())):
            return None
        second = groups != first
        if float(low) < 0 and not _pair_apart_once_mirrored(boxes, second):
            return None
        return kernel(_mirrored_pair(boxes, second), scores, iou_threshold)


def _pair_apart_once_mirrored(boxes: Tensor, second: Tensor) -> bool:
    """:func:`_apart_once_mirrored` for quadrants 0 and 3 (``second``: the boxes of
    quadrant 3, negated on both axes). First each group's lowest coordinate on either
    axis: two full reductions in torch, and where their sum is >= 0 so is each axis's
    (measured in whole calls at 200 clustered boxes, interleaved: 150 µs against 199 for
    the per-axis test in NumPy, 170 in torch); where it is not, the test per axis."""
    apart = second.unsqueeze(1)
    first_low = torch.where(apart, math.inf, boxes).min()
    second_low = torch.where(apart, boxes, math.inf).min()
    if float(first_low) + float(second_low) >= 0:
        return True
    negated = np.broadcast_to(numpy_view(second), (2, second.shape[0]))
    return _apart_once_mirrored(numpy_view(boxes), negated)


# The best-scored _TOP_BOXES boxes suppressing CLUSTER_HITS or more boxes of their group
# each on average is a sign of clusters (clusters of 50: 30-45; of 20: 12-18; scattered
# boxes: 0.5-2 at 1k-4k).
_TOP_BOXES = 4
CLUSTER_HITS = 8


def top_hits(b: np.ndarray, s: np.ndarray, t: float, g: np.ndarray | None = None) -> float:
    """How many boxes of their group (``g``; None: one group) each of the _TOP_BOXES
    best-scored boxes (kept by any NMS) would suppress on average (IoU in the boxes'
    dtype, overflow aside the kernel's arithmetic): a quick sign of clusters, tens of
    microseconds."""
    n = b.shape[0]
    k = min(_TOP_BOXES, n)
    top = np.argpartition(s, n - k)[n - k :]
    same = None
    if g is not None:  # only the top boxes' groups: few boxes in a large batch
        same = g[top, None] == g
        members = np.flatnonzero(same.any(0))
        b, same = b[members], same[:, members]
        top = np.searchsorted(members, top)
    above = _above(np.ascontiguousarray(b.T), top[:, None], t)
    if same is not None:
        above &= same
    return (int(np.count_nonzero(above)) - k) / k  # a box overlaps itself


def _above(planes: np.ndarray, top: np.ndarray | int, t: float) -> np.ndarray:
    """Whether box ``top`` (an index, or ``[K, 1]`` indices: then ``[K, N]``) and box
    ``n`` have IoU above ``t``, from the ``[4, N]`` planes x1, y1, x2, y2 (contiguous rows:
    long inner loops), in the boxes' dtype, the kernel's arithmetic. x and y go together
    as ``[2, ...]`` sides: a dozen NumPy calls, each costing more where the caller's
    kernel call has just run."""
    corners = planes[:, top]  # [4] or [4, K, 1]
    if corners.ndim == 1:
        corners, others = corners[:, None], planes  # [4, 1] against [4, N]
    else:
        others = planes[:, None]  # [4, K, 1] against [4, 1, N]
    with np.errstate(all="ignore"):  # huge coordinates overflow, as in the kernel
        sides = np.minimum(others[2:], corners[2:]) - np.maximum(others[:2], corners[:2])
        np.maximum(sides, 0, out=sides)
        inter = sides[0] * sides[1]
        extent = planes[2:] - planes[:2]
        area = extent[0] * extent[1]
        return inter / ((area[top] + area) - inter) > t


# i < j, for the masks of _all_pairs (np.triu takes several NumPy calls, and at this size
# the calls, not the arithmetic, are the cost); read only, sliced to N x N.
_UPPER = np.triu(np.ones((_ALL_PAIRS_MAX, _ALL_PAIRS_MAX), dtype=bool), 1)
_UPPER.flags.writeable = False


def _upper(n: int) -> np.ndarray:
    if n <= _UPPER.shape[0]:
        return _UPPER[:n, :n]
    return np.triu(np.ones((n, n), dtype=bool), 1)


def _all_pairs(b: np.ndarray, s: np.ndarray, g: np.ndarray | None, t: float) -> np.ndarray:
    """The pairs ``i < j`` (boxes in score order) of a group, from an N x N mask; their IoU
    pair by pair where they are few (many groups), else all at once as a matrix."""
    n = b.shape[0]
    order = np.argsort(-s, kind="stable")
    planes = b.T.take(order, axis=1)  # [4, N] contiguous: x1, y1, x2, y2 by score
    wh = planes[2:] - planes[:2]
    area = wh[0] * wh[1]
    candidates = _upper(n)
    if g is not None:
        ranked_groups = g[order]
        candidates = ranked_groups[:, None] == ranked_groups
        candidates &= _upper(n)
        flat = candidates.ravel().nonzero()[0]
        if flat.shape[0] == 0:  # no two boxes of a group: all kept
            return order
        if n > _DENSE_MAX or flat.shape[0] * _DENSE_SHARE <= n * n:
            src, dst = np.divmod(flat, n)  # row-major: sorted by the suppressing box
            p, q = planes.take(src, axis=1), planes.take(dst, axis=1)  # [4, P] contiguous
            # x and y at once ([2, P]): min(x2) - max(x1), min(y2) - max(y1), clamped at 0
            sides = np.minimum(p[2:], q[2:]) - np.maximum(p[:2], q[:2])
            np.maximum(sides, 0, out=sides)
            inter = sides[0] * sides[1]
            hits = (inter / ((area[src] + area[dst]) - inter) > t).nonzero()[0]
            return order[_kept_ranks(src[hits], dst[hits], n)]
    return order[_dense_kept(planes, area, candidates, t)]


def _dense_kept(
    planes: np.ndarray, area: np.ndarray, candidates: np.ndarray, t: float
) -> np.ndarray:
    """Positions not suppressed among N boxes in visiting order (``planes`` [4, N], their
    areas), from the N x N IoU matrix; ``candidates`` [N, N] marks the pairs ``i < j`` that
    may suppress (same group)."""
    lo, hi = planes[:2], planes[2:]
    # x and y at once ([2, N, N]): min(x2) - max(x1), min(y2) - max(y1), clamped at 0
    sides = np.minimum(hi[:, :, None], hi[:, None]) - np.maximum(lo[:, :, None], lo[:, None])
    np.maximum(sides, 0, out=sides)
    inter = sides[0] * sides[1]
    above = inter / ((area[:, None] + area) - inter) > t
    above &= candidates
    n = area.shape[0]
    src, dst = np.divmod(above.ravel().nonzero()[0], n)  # row-major: sorted by src
    return _kept_ranks(src, dst, n)


# Below this many boxes one lexsort is quicker than the key's several steps (measured on
# 2 cores: 6.2 vs 10.3 µs at 200 boxes, 32.9 vs 15.9 at 1000).
_KEY_SORT_MIN_BOXES = 400


def _by_group(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boxes by group, then descending score, then index, and their groups in that
    order: a lexsort below _KEY_SORT_MIN_BOXES boxes; above, for float32 scores, group,
    score and index go into one uint64 key where they fit, sorted by NumPy's SIMD sort
    (4-6x faster than a stable argsort at 5k-16k boxes); else two stable sorts, by score
    and then by group (as int16 where the groups span fewer than 2^15 values, which NumPy
    radix-sorts)."""
    n = s.shape[0]
    if n < _KEY_SORT_MIN_BOXES:
        order = np.lexsort((-s, g))
        return order, g.take(order)
    low, high = int(g.min()), int(g.max())
    index_bits = max(1, (n - 1).bit_length())
    if s.dtype == np.float32 and (high - low).bit_length() + index_bits <= 32:
        key = (g - low).astype(np.uint64)
        key <<= np.uint64(32)
        key |= _descending_bits(s)
        key <<= np.uint64(index_bits)
        key |= np.arange(n, dtype=np.uint64)
        key.sort()
        order = (key & np.uint64((1 << index_bits) - 1)).astype(np.int64)
        return order, g.take(order)
    order = np.argsort(-s, kind="stable")
    grouped = g.take(order)
    key = (grouped - low).astype(np.int16) if high - low < 1 << 15 else grouped
    by_group = np.argsort(key, kind="stable")
    return order.take(by_group), grouped.take(by_group)


def _descending_bits(s: np.ndarray) -> np.ndarray:
    """uint64 values (below 2^32) in ascending order where the float32 ``s`` descend,
    equal for equal scores (0.0 and -0.0 included)."""
    bits = (-s + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0
    flip = (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)
    return (bits ^ flip).astype(np.uint64)


def _group_starts(grouped: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``grouped`` starts, then its length."""
    n = grouped.shape[0]
    starts = np.empty(n + 1, dtype=bool)
    starts[0] = starts[n] = True
    np.not_equal(grouped[1:], grouped[:-1], out=starts[1:n])
    return starts.nonzero()[0]


def kernel_per_group(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
) -> Tensor:
    """Greedy NMS of every group by ``kernel`` (plain NMS, one call per group of two or
    more boxes), merged by descending score (ties: lower index first). CPU float32/float64
    boxes and scores, N >= 1, integer groups."""
    b, s = numpy_view(boxes), numpy_view(scores)
    return torch.from_numpy(_by_group_kernel(b, s, numpy_view(groups), iou_threshold, kernel))


def _by_group_kernel(
    b: np.ndarray,
    s: np.ndarray,
    g: np.ndarray,
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
) -> np.ndarray:
    """:func:`kernel_per_group` on arrays: the kept indices by descending score."""
    # By group only, index order within (stable): the kernel sorts each call by score,
    # stably, so ties still go to the lower index.
    order = np.argsort(g, kind="stable")
    bounds = _group_starts(g.take(order)).tolist()
    ranked = np.ascontiguousarray(b.take(order, axis=0))
    kept = _kernel_per_group(ranked, s.take(order), order, bounds, iou_threshold, kernel)
    return _by_score(kept, s)


# Neighbours counted around the window, in mean box sizes: enough for most suppressors
# of boxes at its edge (estimates within ~20% of the true share on scattered and
# clustered boxes at 768-20k), few enough to keep the estimate at ~0.1-1.5 ms.
_MARGIN = 0.25
# Times the window may be moved or shrunk before kept_share gives up.
_WINDOW_TRIES = 5


def kept_share(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    local_nms: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    sample: int,
) -> float | None:
    """The share of boxes that greedy NMS keeps, estimated on a window of the data.

    The window first spans the middle ``sqrt(sample / N)`` of the box centres' x values
    and of their y values (by quantiles: about ``sample`` boxes when x and y are
    independent). Its boxes are run through NMS together with their neighbours within a
    quarter of the mean box size (so that boxes at the window's edge see most of their
    suppressors) and counted inside the window only (``local_nms(boxes, scores, groups)``
    gives the kept indices of the window's boxes). A window with fewer than 16 boxes (the
    middle of a ring of boxes) moves to the centre of the best-scored box; one whose
    surroundings hold more than ``8 * sample`` boxes (boxes along a line, a dense cluster)
    shrinks by half. None after a few tries. CPU float32/float64 finite boxes and scores,
    N >= 1.

    Greedy NMS costs torchvision's kernel about ``kept * N`` IoU values, and detops' sparse
    path about the number of overlapping pairs: the share tells the caller which is
    cheaper (clustered detections keep a few percent of their boxes, scattered ones most).
    """
    b = numpy_view(boxes).astype(np.float64)
    n = b.shape[0]
    with np.errstate(all="ignore"):  # huge coordinates may overflow: a worse estimate only
        centre_x, centre_y = (b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5
        half = min(0.5, math.sqrt(sample / n) * 0.5)
        ranks = [max(0, int(n * (0.5 - half))), min(n - 1, int(n * (0.5 + half)))]
        low_x, high_x = np.partition(centre_x, ranks)[ranks]
        low_y, high_y = np.partition(centre_y, ranks)[ranks]
        middle_x, middle_y = (low_x + high_x) * 0.5, (low_y + high_y) * 0.5
        reach_x, reach_y = (high_x - low_x) * 0.5, (high_y - low_y) * 0.5
        moved = False
        for _ in range(_WINDOW_TRIES):
            off_x, off_y = np.abs(centre_x - middle_x), np.abs(centre_y - middle_y)
            inner = (off_x <= reach_x) & (off_y <= reach_y)
            inside = int(np.count_nonzero(inner))
            if inside < 16:
                if moved:
                    return None
                best = int(np.argmax(numpy_view(scores)))
                middle_x, middle_y, moved = centre_x[best], centre_y[best], True
                continue
            sides = b.compress(inner, axis=0)
            margin_x = _MARGIN * max(0.0, float((sides[:, 2] - sides[:, 0]).mean()))
            margin_y = _MARGIN * max(0.0, float((sides[:, 3] - sides[:, 1]).mean()))
            around = np.flatnonzero((off_x <= reach_x + margin_x) & (off_y <= reach_y + margin_y))
            if around.shape[0] <= 8 * sample:
                break
            reach_x, reach_y = reach_x * 0.5, reach_y * 0.5
        else:
            return None
    window = torch.from_numpy(around)
    local_boxes, local_scores = boxes.index_select(0, window), scores.index_select(0, window)
    local_groups = None if groups is None else groups.index_select(0, window)
    kept = local_nms(local_boxes, local_scores, local_groups)
    return int(np.count_nonzero(inner[around[kept.numpy()]])) / inside


class _Routes(NamedTuple):
    threshold: float  # in the boxes' dtype
    iou_threshold: float
    kernel: Callable[[Tensor, Tensor, float], Tensor]
    kernel_ok: Callable[..., bool] | None
    share: float | None = None  # the share of boxes kept, for kernel_ok, where known


def _group_pairs(
    s: np.ndarray,
    order: np.ndarray,
    grouped: np.ndarray,
    planes: np.ndarray,
    area: np.ndarray,
    routes: _Routes,
    bounds: np.ndarray | None = None,
) -> np.ndarray | None:
    """The kept indices (unordered) among ``order``, boxes sorted by group, then
    descending score, then index, with their groups, planes [4, M] and areas in that
    order: by their pairs within groups, or by the kernel once per group where the pairs
    are too many (None if ``kernel_ok()`` turns that down)."""
    n = order.shape[0]
    if bounds is None:
        bounds = _group_starts(grouped)
    positions = np.arange(n)
    # later boxes of the same group
    partners = np.repeat(bounds[1:], bounds[1:] - bounds[:-1]) - positions - 1
    total = int(partners.sum())
    if total == 0:  # one box per group: all kept
        return order
    if n > CLASS_NMS_MAX_BOXES or total > _PAIRS_PER_KERNEL_CALL * (bounds.shape[0] - 1):
        if routes.kernel_ok is not None and not routes.kernel_ok(share=routes.share):
            return None
        ranked = np.ascontiguousarray(planes.T)
        return _kernel_per_group(
            ranked, s.take(order), order, bounds.tolist(), routes.iou_threshold, routes.kernel
        )
    src = np.repeat(positions, partners)
    dst = np.arange(1, total + 1) - np.repeat(np.cumsum(partners) - partners - positions, partners)
    p, q = planes.take(src, axis=1), planes.take(dst, axis=1)  # [4, P] contiguous
    # x and y at once ([2, P]): min(x2) - max(x1), min(y2) - max(y1), clamped at 0
    sides = np.minimum(p[2:], q[2:]) - np.maximum(p[:2], q[:2])
    np.maximum(sides, 0, out=sides)
    inter = sides[0] * sides[1]
    above = np.flatnonzero(inter / ((area[src] + area[dst]) - inter) > routes.threshold)
    return order.take(_kept_ranks(src[above], dst[above], n))


# Up to this many kept boxes they are ordered by a Python sort (a clustered input keeps
# a few dozen; NumPy's sort, argsort and gathers cost more at that size).
_PYTHON_SORT_MAX = 64


def _by_score(kept: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``kept`` (distinct indices) by descending score, ties: lower index first."""
    if kept.shape[0] <= _PYTHON_SORT_MAX:
        pairs = sorted(zip((-s.take(kept)).tolist(), kept.tolist(), strict=True))
        return np.array([index for _, index in pairs], dtype=np.int64)
    kept = np.sort(kept)
    return kept[np.argsort(-s[kept], kind="stable")].astype(np.int64, copy=False)


_NONE = np.empty(0, dtype=np.int64)
# Rounds go on while the last one removed at least _ROUND_MIN + _ROUND_SHARE * (alive
# boxes): a round costs about 10 µs + 8 ns per alive box, and the pairs or the kernel
# about 0.4 µs per box (measured on 2 cores, 200-20k boxes, scattered and clustered; the
# rule within 10% of the best of five tried on each).
_ROUND_MIN = 25
_ROUND_SHARE = 1 / 50
# ... and while no more than this many boxes are left: a round on a few dozen boxes costs
# less than the pairs' fixed cost (about 12 µs).
_ROUND_TAIL = 64
# Rounds are tried where groups hold this many boxes on average: with fewer, the pairs
# are few and the first round rarely pays (scattered boxes, 20 classes, 200 boxes:
# 10 a group, 77 µs with a first round against 55 without).
_ROUND_GROUP_SIZE = 16
# After this many rounds, once at most _DENSE_REST boxes are left, they are resolved at
# once from their IoU matrix (about 13 µs at 7 boxes, where a round costs 9.5): by then
# the clusters have shown that several more rounds are likely. Boxes left alone in their
# group skip the round's arithmetic. (Both measured on 2 cores, whole class_spec_nms
# calls on clustered boxes, interleaved against rounds without them: 200 boxes 68 -> 60
# µs, 500: 90 either way, 800: 151 -> 135, 1000: 160 -> 149, 3000: 398 -> 329.)
_DENSE_REST = 16
_DENSE_REST_AFTER = 3
# After a first round on clusters, with at most _KERNEL_GROUPS_MAX groups and at least
# _ROUNDS_LEFT_FOR_KERNEL times the boxes it removed left (about as many clusters per
# group, which the rounds would take one at a time), the boxes left go to the kernel
# once per group.
_KERNEL_GROUPS_MAX = 4
_ROUNDS_LEFT_FOR_KERNEL = 2


def _head_rounds(
    planes: np.ndarray, area: np.ndarray, grouped: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Greedy NMS of all groups at once, one kept box per group per round: the best box
    left in each group is kept (every box before it in its group is kept or suppressed)
    and suppresses its group's boxes above ``t``. Clustered boxes are done in a few
    rounds (as many as the most boxes one group keeps), each a fixed number of NumPy
    calls over the boxes left; rounds stop when they remove few boxes (scattered
    boxes) and more than a few dozen are left, with none kept if the first one does.
    Boxes left alone in their group are kept; a handful left after several rounds are
    resolved from their IoU matrix. Gives the positions of the kept boxes and of those
    left, undecided: greedy NMS of these alone finishes the job, since a suppressed box
    never suppresses.

    ``planes`` [4, N] and ``area`` [N] are in group order, then descending score, then
    index; ``grouped`` [N] the group of each position. The flag says that the first
    round stopped them with few groups and many rounds to go (see _KERNEL_GROUPS_MAX):
    the kernel per group suits the boxes left better. Runs under the caller's
    ``np.errstate(all="ignore")``: 0 / 0 for empty boxes is NaN, never above ``t``."""
    alive = np.arange(planes.shape[1])
    q, a, groups = planes, area, grouped  # the alive boxes' values, compacted each round
    kept: list[np.ndarray] = []
    while True:
        count = alive.shape[0]
        head = np.empty(count, dtype=bool)
        head[0] = True
        np.not_equal(groups[1:], groups[:-1], out=head[1:])
        firsts = head.nonzero()[0]
        if firsts.shape[0] == count:  # each box alone in its group: all kept
            kept.append(alive)
            return np.concatenate(kept), _NONE, False
        if count <= _DENSE_REST and len(kept) >= _DENSE_REST_AFTER:
            candidates = groups[:, None] == groups
            candidates &= _upper(count)
            kept.append(alive.take(_dense_kept(q, a, candidates, t)))
            return np.concatenate(kept), _NONE, False
        sizes = np.empty_like(firsts)  # (np.diff(append=) costs 3x these three)
        np.subtract(firsts[1:], firsts[:-1], out=sizes[:-1])
        sizes[-1] = count - firsts[-1]
        owner = np.repeat(firsts, sizes)
        p = q.take(owner, axis=1)
        sides = np.minimum(p[2:], q[2:]) - np.maximum(p[:2], q[:2])
        np.maximum(sides, 0, out=sides)
        inter = sides[0] * sides[1]
        gone = inter / ((a.take(owner) + a) - inter) > t
        gone[firsts] = True
        stay = (~gone).nonzero()[0]
        left = stay.shape[0]
        suppressed = count - left - firsts.shape[0]  # (a kept box costs the pairs little)
        worth_it = suppressed >= _ROUND_MIN + _ROUND_SHARE * count
        if not (kept or worth_it):
            break  # scattered boxes: the pairs are cheaper
        kept.append(alive.take(firsts))
        if left == 0:
            return np.concatenate(kept), _NONE, False
        alive, q, a, groups = (
            alive.take(stay),
            q.take(stay, axis=1),
            a.take(stay),
            groups.take(stay),
        )
        if left > _ROUND_TAIL:
            if not worth_it:
                break
            if (
                len(kept) == 1
                and firsts.shape[0] <= _KERNEL_GROUPS_MAX
                and left >= _ROUNDS_LEFT_FOR_KERNEL * (count - left)
            ):
                return kept[0], alive, True
    return (np.concatenate(kept), alive, False) if kept else (_NONE, _NONE, False)


def _kernel_per_group(
    ranked: np.ndarray,
    ranked_scores: np.ndarray,
    order: np.ndarray,
    bounds: list[int],
    iou_threshold: float,
    kernel: Callable[[Tensor, Tensor, float], Tensor],
) -> np.ndarray:
    """Plain NMS of every group of two or more boxes by ``kernel``: the kept indices
    (``order``'s values), unordered.
    (Packing groups whose boxes cannot overlap into one call, exact too, measured no
    faster: the kernel compares every kept box with every later box of its call.)"""
    boxes, scores = torch.from_numpy(ranked), torch.from_numpy(ranked_scores)
    kept: list[np.ndarray] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi - lo == 1:
            kept.append(order[lo : lo + 1])
        else:
            found = kernel(boxes[lo:hi], scores[lo:hi], iou_threshold)
            kept.append(order[lo + found.numpy()])
    return np.concatenate(kept)


def _kept_ranks(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Positions not suppressed, for pairs ``src < dst`` sorted by ``src``."""
    if src.shape[0] == 0:
        return np.arange(n)
    if src.shape[0] <= _PAIR_LOOP_MAX:
        suppressed = bytearray(n)
        for i, j in zip(src.tolist(), dst.tolist(), strict=True):
            if not suppressed[i]:
                suppressed[j] = 1
        return np.flatnonzero(np.frombuffer(suppressed, dtype=np.uint8) == 0)
    dropped = np.zeros(n, dtype=bool)
    firsts = np.flatnonzero(np.concatenate(([True], src[1:] != src[:-1])))
    bounds = np.append(firsts, src.shape[0]).tolist()
    for k, i in enumerate(src[firsts].tolist()):
        if not dropped[i]:
            dropped[dst[bounds[k] : bounds[k + 1]]] = True
    return np.flatnonzero(~dropped)
