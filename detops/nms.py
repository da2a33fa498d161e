"""Non-maximum suppression: plain, class-specific, and per image of a padded batch.

Coordinate contract: boxes are ``(x1, y1, x2, y2)`` in absolute pixels. The IoU of two
boxes is ``inter / (area_i + area_j - inter)`` with ``area = (x2 - x1) * (y2 - y1)`` and
``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``, evaluated in the
computation dtype (float32 for float16/bfloat16/float32 boxes, float64 for float64) in
exactly this order of operations, which is torchvision's; the comparison ``IoU >
iou_threshold`` is made as torchvision makes it, against the threshold as a float64. So
``nms`` returns torchvision's answer bit for bit wherever torchvision's answer is defined.
A box with zero, negative or non-finite area has IoU 0 with everything: it never
suppresses and is never suppressed.

How it is fast: torchvision's CPU kernel compares every kept box with every later box in
a scalar loop, O(N^2). Here the pairs that can reach the threshold are found first, with
vectorized torch ops and no Python loop over boxes, then the greedy order is resolved on
that sparse graph.

1. Candidate pairs. IoU is at most the IoU of the two x-intervals (and of the two
   y-intervals), so a pair above ``t`` needs ``x1_i <= x1_j <= x2_i - t * w_i`` (for
   ``x1_i <= x1_j``). Per image and group (class), boxes are sorted by x1 and each box
   gets a contiguous window of later boxes up to that bound: through buckets of x (one
   integer sort and cumulative counts; the window is a slight superset) or, when the
   buckets are crowded, an exact x-sort and binary searches. When the windows hold many
   pairs (thousands of boxes spread over many box heights), boxes are also binned in y
   (a pair above ``t`` starts less than ``(1 - t)`` times the taller height apart in y):
   bins of twice that height on two grids offset by half a bin, so every pair shares a
   bin of one grid; the two grids are two passes, a pair counted on grid 1 only when it
   does not share a grid-0 bin. Images and classes are simply parts of the sort key:
   boxes of different groups are never compared, with no coordinate offsets (the
   ``boxes + class_id * (max + 1)`` trick of the course code and of torchvision's
   ``batched_nms`` loses exactness with negative or huge coordinates and in float16).
   The bounds carry a relative margin of 1e-3 on ``t`` and are rounded outwards, far
   more than the float32 rounding of the IoU (about 1e-6): no pair that the exact formula
   puts above the threshold is skipped.
2. IoU of the candidates, with the exact formula, in cache-sized dense tiles (a skewed
   ``as_strided`` view: row ``i`` against rows ``i + 1, i + 2, ...``) where windows are
   long and even, or pair by pair (gathers) where they are short or uneven. Groups that
   are all tiny (few boxes per class) take every pair of a group at once instead.
3. Greedy resolution over the pairs above the threshold (edges from the higher-scored
   box): the greedy result is the fixed point of ``kept = ~(some kept higher-scored
   neighbour)``, reached by iterating, as many rounds as the longest chain of
   suppressions. A few rounds over all boxes at once; if chains are longer than that,
   in blocks of ranks, in score order.

Every step is a handful of tensor ops; their number, not arithmetic, bounds the speed
below a few hundred boxes, where torchvision's single kernel call is faster. The op never
changes torch's thread settings. On CPU no step forks torch's OpenMP threads: the IoU
tiles and listed pairs are cut so that each op stays under ATen's parallel grain, ops that
fork at a few thousand elements (advanced indexing, floor, bincount, isnan) are replaced,
and the greedy resolution runs in NumPy. So a busy machine cannot stall the op at an
OpenMP join (measured on 2 cores with one busy process: 20k boxes 0.09 s, against 0.33 s
when the tiles forked; torchvision 0.57 s).
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_floating,
    check_int,
    check_integer_dtype,
    check_no_nan,
    check_same_device,
    check_shape,
    check_tensor,
    check_unit_interval,
    is_dense_strided,
    shape_str,
)
from ._nms_numpy import (
    CLASS_NMS_MAX_BOXES,
    CLUSTER_HITS,
    NUMPY_NMS_MAX_BOXES,
    best_box_hits,
    kept_share,
    mirrored_call,
    numpy_greedy_nms,
    top_hits,
)
from ._serial import (
    SERIAL_ELEMENTS,
    bincount,
    has_nan,
    max_int,
    numpy_view,
    owner_index,
    plain_eager_mode,
    searchsorted,
    take,
    to_float32,
    where_true,
)

__all__ = ["nms", "class_spec_nms", "batched_nms_per_image"]

_CPU_TILE = 1 << 18  # IoU values per dense tile (measured best among 2**14 .. 2**20)
# On CPU every op on a tile or a list of pairs stays under ATen's parallel grain, so it
# runs serially and never forks torch's OpenMP threads: a tile is computed in steps of at
# most _CPU_STEP IoU values (tiles have at most _CPU_MAX_ROWS rows, and a step at least 16
# columns), and pairs are listed _CPU_LISTED at a time (5 planes gathered for each).
# Measured on 2 cores at 20k boxes, with the rest of this module's fork-free steps: 89 ms
# idle (about what the forked tiles took) and 87 ms with one busy process beside it (the
# forked tiles: 331 ms, waiting for a descheduled thread at every join). Sharing the steps
# among Python threads was 1.4x slower: a step is ~17 ops of 2-6 us, and every op hands
# the GIL over.
_CPU_STEP = SERIAL_ELEMENTS
_CPU_MAX_ROWS = 1024
_CPU_LISTED = SERIAL_ELEMENTS // 5
_CUDA_TILE = 1 << 22
_SUB = 16  # tile rows are scanned in groups of 16 (max over a group, then the members)
_FLUSH = 8192  # tile hits gathered before they are turned into edges (ops under the grain)
_MARGIN = 1e-3  # relative slack on the threshold in the (conservative) window bounds
_BLOCK = 1024  # boxes (in score order) per block of the greedy resolution
_ROUNDS = 24  # rounds over all boxes at once before the greedy resolution goes by blocks
_MAX_BINS = 1 << 16
_BUCKET_MAX = 64  # x1 buckets holding more boxes fall back to exact x-windows
_EXPLICIT_COST = 4.0  # cost of a listed pair, in IoU values of a dense tile
_TILE_COST = 30000  # fixed cost of a dense tile (about 20 torch calls), in IoU values
# Below this many boxes, nms on CPU calls torchvision's kernel where its answer is ours.
# On scattered boxes the sparse path overtakes it from about 800 (kernel vs sparse path,
# 2 cores: 1.57 vs 1.52 ms at 768, 2.4 vs 1.5 at 1000, 3.7 vs 2.1 at 1200), but on the
# clustered boxes NMS usually sees the kernel takes 0.18 ms at 1000 and telling the two
# apart costs 0.1-0.2 ms: below 1200 the kernel is never much the worse choice (it ties
# torchvision, which is this kernel, on every input).
_KERNEL_MAX_BOXES = 1200
_KERNEL_DTYPES = (torch.float32, torch.float64)
# Above that size the kernel is still the better tool for clustered detections, the usual
# input of NMS: it skips suppressed boxes, computing about ``kept * N / 2`` IoU values,
# while the sparse path's cost follows the overlapping pairs, which clusters make many
# (measured on 2 cores, 20k boxes in clusters of 50: kernel 53 ms, sparse path 265 ms;
# 20k scattered boxes: 609 vs 100 ms). The choice compares cost models fitted there, in
# seconds: the kernel ``_KERNEL_CALL_S + _KERNEL_PAIR_S * share * n**2`` per group, with
# the share of kept boxes estimated on a window of the data (_nms_numpy.kept_share); the
# sparse path on scattered boxes by _SPARSE_NMS_S (N, seconds; log-log interpolated,
# slope 1.4 beyond), _SPARSE_GROUPED_S * N with classes or _SPARSE_BATCHED_S * N for a
# batch of images with classes, times _clustered_sparse_factor(share) (clusters cost it
# more pairs).
_KERNEL_CALL_S = 25e-6
_KERNEL_PAIR_S = 3.5e-9
_SPARSE_NMS_S = (
    (800, 1.5e-3),
    (1000, 1.45e-3),
    (1500, 2.8e-3),
    (2000, 3.05e-3),
    (5000, 14.6e-3),
    (20000, 100e-3),
)
_SPARSE_GROUPED_S = 0.8e-6
_SPARSE_BATCHED_S = 0.3e-6
# Up to this many boxes, cheap signs of clusters are looked at first (the best box
# suppressing 2 * CLUSTER_HITS boxes, best_box_hits, then top_hits; the
# window estimate takes 0.1-0.2 ms).
_TOP_HITS_MAX_BOXES = 5000
# Boxes in the window that kept_share runs NMS on (estimates within ~0.1 of the share).
_SHARE_SAMPLE = 64
_CLASS_ID_DTYPES = (torch.int64, torch.int32)  # those class_spec_nms's fast path takes
# Up to this many boxes the finite check sums in Python, above by dot products (measured
# in whole nms calls, interleaved, on the Intel Xeon: 22.3 us against 22.7 at 25 boxes
# for torch sums, 21.9 against 21.0 at 32, 29.9 against 26.4 at 64; on the AMD EPYC, dot
# products against torch sums, ratios to torchvision: 0.86-0.88x against 0.83-0.86x at
# 25, 0.87-0.88x against 0.78-0.85x at 32, 0.89-0.92x against 0.85-0.86x at 50, 0.90-0.91x
# against 0.84-0.86x at 64, 0.86-0.92x against 0.86-0.91x at 100).
_PYTHON_SUM_MAX = 24
_DENSE = 16  # groups with G * S * S <= budget / _DENSE take the all-pairs path
_NUMPY_GREEDY = True  # the greedy resolution on CPU runs in NumPy (tests switch it off)


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------


def _check_boxes_scores(
    op: str, boxes: object, scores: object, batched: bool
) -> tuple[Tensor, Tensor]:
    box_pattern, score_pattern = ("[B, N, 4]", "[B, N]") if batched else ("[N, 4]", "[N]")
    boxes = check_tensor(op, "boxes", boxes)
    scores = check_tensor(op, "scores", scores)
    check_floating(op, "boxes", boxes)
    check_floating(op, "scores", scores)
    if scores.dtype != boxes.dtype:
        raise TypeError(
            f"{op}: scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}"
        )
    check_shape(op, "boxes", boxes, box_pattern)
    if scores.shape != boxes.shape[:-1]:
        raise ValueError(
            f"{op}: scores must have shape {score_pattern} = {list(boxes.shape[:-1])} "
            f"(from boxes {shape_str(boxes)}), got {shape_str(scores)}"
        )
    return boxes, scores


def _check_class_ids(op: str, class_ids: object, scores: Tensor, pattern: str) -> Tensor:
    class_ids = check_tensor(op, "class_ids", class_ids)
    check_integer_dtype(op, "class_ids", class_ids)
    if class_ids.shape != scores.shape:
        raise ValueError(
            f"{op}: class_ids must have shape {pattern} = {list(scores.shape)} "
            f"(from scores {shape_str(scores)}), got {shape_str(class_ids)}"
        )
    return class_ids


def _check_common(op: str, boxes: Tensor, scores: Tensor, iou_threshold: object, **more) -> float:
    """Same devices; the threshold a real number in [0, 1] (NumPy scalars and one-element
    real tensors included, as torchvision takes them), returned as a float."""
    if boxes.device != scores.device or any(
        isinstance(t, Tensor) and t.device != boxes.device for t in more.values()
    ):
        check_same_device(op, boxes=boxes, scores=scores, **more)
    if boxes.device.type == "meta":
        raise ValueError(
            f"{op}: boxes and scores are on the meta device, which holds no values, and the "
            "kept indices depend on the values (to trace NMS use torch.compile or torch.export)"
        )
    return check_unit_interval(
        op, "iou_threshold", iou_threshold, numpy_scalars=True, tensor_scalars=True
    )


_torchvision_nms = None

# The kernel is called with the dispatcher already below autograd: its dozen internal ATen
# calls then skip the autograd layer (1-1.5 µs of a 17 µs call at 10 boxes). Nothing is
# lost, its output is int64 indices, which autograd never tracks; the guard is scoped and
# thread-local, like no_grad. (It is private API: where a torch lacks it, no guard.)
_below_autograd = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", contextlib.nullcontext)


def _torchvision_nms_kernel():
    """torchvision's NMS kernel (importing torchvision registers it; done once, on first
    use, so that ``import detops`` does not pay for torchvision), as ``_direct_callable``
    gives it."""
    global _torchvision_nms
    if _torchvision_nms is None:
        import torchvision  # noqa: F401

        _torchvision_nms = _direct_callable(torch.ops.torchvision.nms)
    return _torchvision_nms


def _direct_callable(packet):
    """The most direct callable of an op this torch has: the default overload's C++ entry
    point skips the Python overload resolution and ``__call__`` of the packet (about
    0.9 µs a call, 5% of a kernel call at 10 boxes). Both attributes are private, hence
    the fallbacks: the overload, then the packet itself."""
    overload = getattr(packet, "default", packet)
    return getattr(overload, "_op", overload)


def _kernel_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's kernel, called below autograd (see ``_below_autograd``)."""
    with _below_autograd():
        return _torchvision_nms_kernel()(boxes, scores, iou_threshold)


def _kernel_gives_our_answer(boxes: Tensor, scores: Tensor) -> bool:
    """Whether to call torchvision's CPU kernel: a few hundred boxes (its single O(N^2)
    call beats the sparse path's fixed cost of a few dozen tensor ops below
    ``_KERNEL_MAX_BOXES``), float32/float64 and finite input, where its answer is ours bit
    for bit (same IoU arithmetic, same ``>`` against the threshold, stable order on score
    ties; the registry and tests/test_nms.py pin both paths to the reference). One sync."""
    if not (
        0 < boxes.shape[0] < _KERNEL_MAX_BOXES and boxes.is_cpu and boxes.dtype in _KERNEL_DTYPES
    ):
        return False
    with _below_autograd():
        return _all_finite(boxes, scores)


def _all_finite(boxes: Tensor, scores: Tensor) -> bool:
    """Whether every value is finite, from sums: a NaN or inf anywhere makes them
    non-finite (a finite input whose sum overflows reads as non-finite too, which only
    sends the call down detops' own path). Up to _PYTHON_SUM_MAX boxes the values are
    summed in Python; above, the sums of squares are dot products (BLAS, serial at this
    size; called below autograd, they record no graph for inputs that require grad).
    Any torch call just before the kernel slows the kernel beyond its own cost (the
    kernel's dozen ops run colder after other code: on the AMD EPYC, at 50 boxes, a
    ``view`` before the kernel added 5 µs to a 39 µs call); the dot products slowed it
    least of the checks measured (torch sums, NumPy sums and dot products, Python sums:
    see _PYTHON_SUM_MAX)."""
    n = boxes.shape[0]
    if boxes.is_contiguous():
        flat = boxes.view(-1)
        if n <= _PYTHON_SUM_MAX:
            return math.isfinite(sum(flat.tolist()) + sum(scores.tolist()))
        return math.isfinite(torch.dot(flat, flat).item() + torch.dot(scores, scores).item())
    return math.isfinite(boxes.sum().item() + scores.sum().item())


def _check_finite_input(op: str, boxes: Tensor, scores: Tensor) -> None:
    """NaN checks (one host sync)."""
    if has_nan(boxes) or has_nan(scores):
        check_no_nan(op, "boxes", boxes)
        check_no_nan(op, "scores", scores)


# ----------------------------------------------------------------------------------------
# machinery
# ----------------------------------------------------------------------------------------


def _in_compute_dtype(values: Tensor) -> Tensor:
    """``values`` in their computation dtype, detached (float16/bfloat16 converted
    without forking torch's threads)."""
    if values.dtype in (torch.float16, torch.bfloat16):
        return to_float32(values)
    return values.detach()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_FLOAT32_THRESHOLDS: dict[float, float] = {}  # threshold -> _threshold_in(it, float32)


def _threshold_in(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value ``t <= threshold``: for ``x`` in ``dtype``,
    ``x > t`` exactly when ``x > threshold`` (torchvision compares in float64)."""
    threshold = float(threshold)
    if dtype == torch.float64:
        return threshold
    known = _FLOAT32_THRESHOLDS.get(threshold)
    if known is None:
        known = _float32_at_most(threshold)
        if len(_FLOAT32_THRESHOLDS) < 1024:  # (bounded: a sweep over thresholds)
            _FLOAT32_THRESHOLDS[threshold] = known
    return known


def _float32_at_most(threshold: float) -> float:
    (t,) = struct.unpack("f", struct.pack("f", threshold))  # nearest float32 (0 <= t <= 1)
    if t > threshold:  # one float32 step down
        (bits,) = struct.unpack("I", struct.pack("f", t))
        (t,) = struct.unpack("f", struct.pack("I", bits - 1))
    return t


def _dense_groups(groups: Tensor) -> Tensor:
    """Integer group labels mapped to ``0 <= label < numel`` (equal stays equal)."""
    if groups.numel() == 0:
        return groups
    low, high = (int(v) for v in torch.stack((groups.min(), groups.max())).tolist())
    if high - low < groups.numel():
        return groups - low
    return torch.unique(groups, return_inverse=True)[1]


class _Prepared:
    """Per-call views shared by the self-join passes over a batch ``[B, N]`` of images.

    Improper boxes (``proper`` False: zero, negative or non-finite area, or padding) are
    replaced by a far-out inverted box (IoU 0 with everything, no inf - inf), put in a
    group of their own after all others and given empty windows.
    """

    def __init__(self, planes: Tensor, proper: Tensor, threshold: float):
        self.batch, self.n = proper.shape
        self.m = self.batch * self.n
        self.all_proper = bool(proper.all())
        self.proper = proper
        self.planes = planes.reshape(5, self.m)  # (x2, y2, -x1, -y1, area), see _planes
        self.device, self.dtype = planes.device, planes.dtype
        x2, y2, neg_x1, neg_y1 = (p.to(torch.float64) for p in planes[:4].unbind(0))
        self.x1, self.y1, self.x2, self.y2 = -neg_x1, -neg_y1, x2, y2
        self.t = threshold * (1.0 - _MARGIN)
        self._x_windows: tuple[Tensor, Tensor, Tensor] | None = None

    def x_windows(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: the order by x1, the rank by x1, and the number of boxes with
        ``x1 <= x2_i - t * w_i`` (interval IoU > t needs that for ``x1_i <= x1_j``),
        rounded outwards; empty for improper boxes."""
        if self._x_windows is None:
            dev, t = self.device, self.t
            x_sorted, x_order = torch.sort(self.x1, dim=-1, stable=True)
            ar = torch.arange(self.n, device=dev).expand(self.batch, self.n)
            x_rank = torch.empty_like(x_order).scatter_(-1, x_order, ar)
            inf = torch.tensor(math.inf, dtype=torch.float64, device=dev)
            upper = torch.nextafter(self.x2 - t * (self.x2 - self.x1), inf)
            n_upper = searchsorted(x_sorted, upper, right=True)
            if not self.all_proper:
                n_upper = torch.where(self.proper, n_upper, x_rank + 1)
            self._x_windows = x_order, x_rank, n_upper
        return self._x_windows

    def y_stats(self) -> tuple[float, float, float]:
        """Tallest height, lowest and highest y1 of the proper boxes."""
        inf = math.inf
        y1_low, y1_high = (
            torch.where(self.proper, self.y1, inf),
            torch.where(self.proper, self.y1, -inf),
        )
        height = torch.where(self.proper, self.y2 - self.y1, -inf)
        hmax, ymin, ymax = torch.stack((height.max(), y1_low.min(), y1_high.max())).tolist()
        return hmax, ymin, ymax


def _x_windows(prep: _Prepared, gid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per image, boxes sorted by ``(gid, x1)``; the window of box ``i`` is the boxes
    after it in its group with ``x1 <= x2_i - t * w_i``. Uses x1 buckets (one integer
    sort, no searches) unless they are crowded."""
    bucketed = _bucket_windows(prep, gid)
    if bucketed is not None:
        return bucketed
    return _exact_x_windows(prep, gid)


def _bucket_windows(prep: _Prepared, gid: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Like the exact x-windows, with x1 and x2 - t * w rounded outwards to buckets of
    x (about two per box of a group): box i's window holds the boxes after it in its
    group whose bucket is at most that of x2_i - t * w_i, a superset. Sorting by (group,
    bucket) takes one integer sort and the window ends come from cumulative counts.
    None when a bucket holds more than ``_BUCKET_MAX`` boxes (crowded or far-apart x)."""
    batch, m, dev = prep.batch, prep.m, prep.device
    proper = prep.proper
    inf = torch.tensor(math.inf, dtype=torch.float64, device=dev)
    upper = torch.nextafter(prep.x2 - prep.t * (prep.x2 - prep.x1), inf)
    if gid is not None and not prep.all_proper:
        gid = torch.where(proper, gid, 0)  # improper boxes get a cell of their own below
    top = torch.zeros((), device=dev) if gid is None else gid.max()
    stats = (torch.where(proper, prep.x1, inf).min(), torch.where(proper, upper, -inf).max())
    low, high, top = torch.stack((*stats, top.to(torch.float64))).tolist()
    groups = int(top) + 1
    buckets = max(1, min(1 << 20, -(-2 * m // (batch * groups))))
    width = (high - low) / buckets
    if not (math.isfinite(width) and width > 0):
        return None
    # Clamped first, then truncated: floor for these non-negative values, and unlike
    # torch.floor (which forks torch's threads from a few thousand elements on) serial.
    bucket_x1 = ((prep.x1 - low) / width).clamp_(0, buckets - 1).to(torch.int64)
    bucket_up = ((upper - low) / width).clamp_(0, buckets - 1).to(torch.int64)
    base = 0 if gid is None else gid * buckets
    stride = groups * buckets + 1  # keys per image; the last one for improper boxes
    cell = base + bucket_x1
    if not prep.all_proper:
        cell = torch.where(proper, cell, stride - 1)
    flat = cell + torch.arange(0, batch * stride, stride, device=dev)[:, None]
    counts = bincount(flat.reshape(-1), batch * stride)
    if max_int(counts.view(batch, stride)[:, :-1]) > _BUCKET_MAX:
        return None
    ends = torch.cumsum(counts, 0)
    _, pos = torch.sort(cell, dim=-1, stable=True)
    end = take(ends, flat - cell + base + bucket_up)  # end of x2_i - t * w_i's bucket
    end = end.gather(-1, pos)
    if not prep.all_proper:  # improper boxes (sorted last in an image): empty windows
        own = torch.arange(1, m + 1, device=dev).view(batch, -1)
        end = torch.where(proper.gather(-1, pos), end, own)
    return _flat_positions(prep, pos), end.reshape(-1)


def _gathered_planes(planes: Tensor, pos: Tensor, pad: int) -> Tensor:
    """``planes[:, pos]`` followed by ``pad`` far-out stand-in boxes (``[5, len(pos) +
    pad]``), plane by plane so that no op forks torch's threads at 20k boxes."""
    m = pos.shape[0]
    cols = planes.new_empty(5, m + pad)
    for plane in range(5):
        torch.index_select(planes[plane], 0, pos, out=cols[plane, :m])
    cols[:, m:] = _far_planes(planes.dtype, planes.device, 1)
    return cols


def _exact_x_windows(prep: _Prepared, gid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Exact x-windows: x-sort and binary searches."""
    batch, n, dev = prep.batch, prep.n, prep.device
    x_order, x_rank, n_upper = prep.x_windows()
    if gid is None:
        pos = x_order
        end = n_upper.gather(-1, pos)
    else:
        if not prep.all_proper:
            gid = torch.where(prep.proper, gid, int(gid.max()) + 1)  # improper boxes last
        stride = n + 1
        keys, pos = torch.sort(gid * stride + x_rank, dim=-1)
        end = searchsorted(keys, gid * stride + n_upper).gather(-1, pos)
    if batch > 1:
        end = end + torch.arange(0, batch * n, n, device=dev)[:, None]
    return _flat_positions(prep, pos), end.reshape(-1)


def _flat_positions(prep: _Prepared, pos: Tensor) -> Tensor:
    """Per-image positions [B, N] as flat indices: image b holds b * N .. b * N + N - 1."""
    if prep.batch > 1:
        pos = pos + torch.arange(0, prep.m, prep.n, device=pos.device)[:, None]
    return pos.reshape(-1)


def _tile_pairs(
    prep: _Prepared,
    pos: Tensor,
    end: Tensor,
    threshold: float,
    out: list[tuple[Tensor, Tensor]],
    pair_filter=None,
    max_pairs: float = math.inf,
) -> bool:
    """Append the pairs ``(pos[p], pos[q])``, ``p < q < end[p]``, whose IoU is
    ``> threshold``, as flat indices. Returns False, doing nothing, when the windows hold
    more than ``max_pairs`` pairs."""
    m, dev = prep.m, prep.device
    on_cpu = dev.type == "cpu"
    budget = _CPU_TILE if on_cpu else _CUDA_TILE
    window = end - torch.arange(1, m + 1, device=dev)  # >= 0: a box is in its own window
    total = float(window.sum())
    if total > max_pairs:
        return False
    if total == 0:
        return True
    thr = _threshold_in(threshold, prep.dtype)
    if total * _EXPLICIT_COST <= _TILE_COST:  # too few pairs for even one dense tile
        cols = _gathered_planes(prep.planes, pos, 1)
        _listed_pairs(cols, window, int(total), thr, pos, out, pair_filter)
        return True
    # Tile (r0, k0) holds T[k, i] = IoU(row r0 + i, row r0 + i + 1 + k0 + k) for
    # i < rows, k < width: a skewed (as_strided) view of the sorted rows, rows innermost
    # so that every operand is read contiguously. Windows vary, so a tile spans the
    # longest window among its rows; rows are sized so that tiles hold about `budget`.
    rows = _CPU_MAX_ROWS if on_cpu else 8192
    while rows > 64 and (rows > 2 * m or rows * (1.5 * total / m + _SUB) > budget):
        rows //= 2
    tiles = -(-m // rows)
    per_tile = torch.nn.functional.pad(window, (0, tiles * rows - m)).view(tiles, rows)
    plan, sums = torch.stack((per_tile.amax(1), per_tile.sum(1))).tolist()
    # Tiles whose rows have short windows but a long one among them would be mostly
    # waste: their pairs are listed one by one instead (gathers cost more per pair).
    explicit = [
        sums[t] * _EXPLICIT_COST < rows * -(-plan[t] // _SUB) * _SUB + _TILE_COST
        for t in range(tiles)
    ]

    # Rows (x2, y2, -x1, -y1, area): minimums give min(x2), min(y2), -max(x1), -max(y1),
    # and overlap = min(x2) + (-max(x1)), exactly as min(x2) - max(x1).
    # Padded with far-out inverted boxes so that tiles may run past the end.
    length = m + rows + _SUB
    cols = _gathered_planes(prep.planes, pos, rows + _SUB)
    if any(explicit):
        rows_listed = torch.tensor(explicit, device=dev)[:, None].expand(-1, rows).reshape(-1)[:m]
        counts = torch.where(rows_listed, window, 0)
        listed = int(sum(s for s, e in zip(sums, explicit, strict=True) if e))
        _listed_pairs(cols, counts, listed, thr, pos, out, pair_filter)
        if all(explicit):
            return True
    chunk = max(_SUB, min((budget // rows) // _SUB, -(-max(plan) // _SUB)) * _SUB)
    if on_cpu:
        chunk = min(chunk, max(_SUB, _CPU_STEP // rows // _SUB * _SUB))
    buffer = torch.empty(6 * rows * chunk, dtype=cols.dtype, device=dev)
    views: dict[int, tuple[Tensor, ...]] = {}
    found: list[tuple[Tensor, int, int]] = []  # per step: (k, i) of its hits, r0, k0
    pending = 0

    def flush() -> None:
        nonlocal found, pending
        sizes = [f[0].shape[0] for f in found]
        owner = owner_index(torch.tensor(sizes, device=dev), sum(sizes))
        meta = torch.tensor([f[1:] for f in found], device=dev).index_select(0, owner)
        k, i = torch.cat([f[0] for f in found]).unbind(1)
        row0, col0 = meta.unbind(1)
        r = row0 + i
        c = r + 1 + col0 + k
        r, c = where_true(c < end.index_select(0, r), r, c)
        i, j = pos.index_select(0, r), pos.index_select(0, c)
        if pair_filter is not None:
            i, j = where_true(pair_filter(i, j), i, j)
        out.append((i, j))
        found, pending = [], 0

    for tile in range(tiles):
        if explicit[tile] or plan[tile] == 0:
            continue
        r0 = tile * rows
        span = plan[tile]
        for k0 in range(0, span, chunk):
            width = -(-min(chunk, span - k0) // _SUB) * _SUB
            if width not in views:
                size = width * rows
                planes = buffer[: 4 * size].view(4, width, rows)
                inter = buffer[4 * size : 5 * size].view(width, rows)
                union = buffer[5 * size : 6 * size].view(width, rows)
                views[width] = (*planes.unbind(0), inter, union)
            low_x, low_y, neg_high_x, neg_high_y, inter, union = views[width]
            offset = r0 + 1 + k0
            for plane, dst in enumerate((low_x, low_y, neg_high_x, neg_high_y)):
                row_plane = cols.as_strided((1, rows), (0, 1), plane * length + r0)
                skew = cols.as_strided((width, rows), (1, 1), plane * length + offset)
                torch.minimum(row_plane, skew, out=dst)
            # min(x2) - max(x1), min(y2) - max(y1), then their product: torchvision's order
            low_x.add_(neg_high_x).clamp_(min=0)
            low_y.add_(neg_high_y).clamp_(min=0)
            torch.mul(low_x, low_y, out=inter)
            row_area = cols.as_strided((1, rows), (0, 1), 4 * length + r0)
            col_area = cols.as_strided((width, rows), (1, 1), 4 * length + offset)
            torch.add(row_area, col_area, out=union).sub_(inter)
            inter.div_(union)  # the IoU
            hits = (inter > thr).nonzero()  # (k, i)
            count = hits.shape[0]
            if count == 0:
                continue
            # (in pieces where many: a step in a dense cluster can hit most of its 32k IoU
            # values, and a flush of that many pairs would fork torch's threads)
            for piece in hits.split(_FLUSH // 2) if count > _FLUSH // 2 else (hits,):
                found.append((piece, r0, k0))
                pending += piece.shape[0]
                if pending >= _FLUSH:
                    flush()
    if found:
        flush()
    return True


def _listed_pairs(
    cols: Tensor, counts: Tensor, total: int, thr: float, pos: Tensor, out, pair_filter
) -> None:
    """The pairs ``(p, p + 1 + k)``, ``k < counts[p]``, listed one by one (gathers)."""
    dev = cols.device
    budget = _CUDA_TILE if dev.type == "cuda" else _CPU_LISTED
    m = counts.numel()
    ranges = [(0, m, total)]
    if total > budget:  # row ranges holding about `budget` pairs each
        before = torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))  # pairs in rows < p
        marks = torch.arange(budget, total, budget, device=dev)
        cuts = (searchsorted(before, marks) + 1).clamp_(max=m).unique().tolist()
        bounds = [0, *(cut for cut in cuts if 0 < cut < m), m]
        at = before.index_select(0, torch.tensor(bounds, device=dev))
        sizes = (at[1:] - at[:-1]).tolist()
        ranges = list(zip(bounds[:-1], bounds[1:], sizes, strict=True))
    for a, z, size in ranges:
        if size == 0:
            continue
        cnt = counts[a:z]
        if size > 2 * budget and dev.type == "cpu":  # (ranges end after whole rows)
            pieces = _oversized_range(cnt, a, size, budget)
        else:
            owner = owner_index(cnt, size)
            r = owner + a
            # Pair q of row p is column p + 1 + (q - first pair of p).
            shift = torch.arange(a + 1, z + 1, device=dev) - (torch.cumsum(cnt, 0) - cnt)
            c = torch.arange(size, device=dev) + shift.index_select(0, owner)
            pieces = [(r, c)]
        for r, c in pieces:
            row, col = cols.index_select(1, r), cols.index_select(1, c)  # faster than cols[:, r]
            low_high = torch.minimum(row[0:4], col[0:4])
            overlap = low_high[0:2].add_(low_high[2:4]).clamp_(min=0)
            inter = overlap[0] * overlap[1]
            iou = inter.div_((row[4] + col[4]).sub_(inter))
            hit = (iou > thr).nonzero().squeeze(1)
            i = pos.index_select(0, r.index_select(0, hit))
            j = pos.index_select(0, c.index_select(0, hit))
            if pair_filter is not None:
                i, j = where_true(pair_filter(i, j), i, j)
            out.append((i, j))


def _oversized_range(cnt: Tensor, a: int, size: int, budget: int) -> list[tuple[Tensor, Tensor]]:
    """The pairs (rows, columns) of rows ``a, a + 1, ...`` (``cnt`` pairs each) where they
    are more than ``budget`` (one row of a dense cluster can hold more pairs than a range
    should), built in NumPy and cut into pieces of ``budget``: torch ops on more elements
    than ATen's grain fork its threads (CPU)."""
    counts = cnt.numpy()
    rows = np.repeat(np.arange(a, a + counts.shape[0]), counts)
    columns = np.arange(size) - np.repeat(np.cumsum(counts) - counts, counts)
    columns += rows + 1
    return [
        (torch.from_numpy(rows[lo : lo + budget]), torch.from_numpy(columns[lo : lo + budget]))
        for lo in range(0, size, budget)
    ]


def _suppression_pairs(
    planes: Tensor, proper: Tensor, groups: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor]:
    """All pairs of proper boxes of one image and one group whose IoU is ``> threshold``,
    once each, as flat indices ``image * N + box``.

    ``planes`` [5, B, N] (see ``_planes``) are in the computation dtype; ``groups``
    [B, N] holds dense group ids (or None).
    """
    batch, n = proper.shape
    m, dev = batch * n, planes.device
    budget = _CUDA_TILE if dev.type == "cuda" else _CPU_TILE
    prep = _Prepared(planes, proper, threshold)
    out: list[tuple[Tensor, Tensor]] = []
    # x-windows, and y-bins when they pay off: boxes with IoU > t start less
    # than (1 - t) * (taller height) = h apart in y; with bins of height 2h on two grids
    # offset by h, every such pair shares a bin of one grid (counted on grid 0 when it
    # shares a grid-0 bin, else on grid 1). Tried only when the x-windows hold many pairs.
    num_groups = 1 if groups is None else int(groups.max()) + 2
    max_bins = min(_MAX_BINS, (1 << 62) // (num_groups * (n + 1)) - 2)
    windows = _x_windows(prep, groups)
    if max_bins < 8 or _tile_pairs(prep, *windows, threshold, out, max_pairs=16 * budget):
        return _concat_pairs(out, dev)
    hmax, ymin, ymax = prep.y_stats()
    bin_height = (1.0 - prep.t) * hmax * (1.0 + 1e-6)
    span = ymax - ymin
    if not (bin_height > 0 and 8 * bin_height < span):
        _tile_pairs(prep, *windows, threshold, out)
        return _concat_pairs(out, dev)
    if span / bin_height > max_bins:
        bin_height = span / (max_bins - 1)  # coarser bins stay conservative
    u = torch.where(proper, (prep.y1 - ymin) / bin_height, 0.0).clamp_(0, max_bins)
    bin0 = (u / 2).to(torch.int64)  # u >= 0: truncation is floor (see _bucket_windows)
    bin1 = ((u + 1) / 2).to(torch.int64)
    if groups is not None:
        nb = int(bin1.max()) + 1  # improper boxes sit in bin 0 (they get no windows)
        bin0, bin1 = groups * nb + bin0, groups * nb + bin1
    flat0 = bin0.reshape(m)
    _tile_pairs(prep, *_x_windows(prep, bin0), threshold, out)
    pair_filter = lambda i, j: flat0.index_select(0, i) != flat0.index_select(0, j)  # noqa: E731
    _tile_pairs(prep, *_x_windows(prep, bin1), threshold, out, pair_filter)
    return _concat_pairs(out, dev)


def _concat_pairs(out: list[tuple[Tensor, Tensor]], dev: torch.device) -> tuple[Tensor, Tensor]:
    if not out:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        return empty, empty
    if len(out) == 1:
        return out[0]
    if dev.type == "cpu" and sum(o[0].shape[0] for o in out) > SERIAL_ELEMENTS:
        # (torch.cat of this many pairs, up to ~1M on clusters, forks torch's threads)
        return tuple(  # type: ignore[return-value]
            torch.from_numpy(np.concatenate([o[k].numpy() for o in out])) for k in (0, 1)
        )
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


class _ArrayKind:
    """The few calls in which NumPy and torch differ, so that the greedy resolution below is
    written once for both: NumPy arrays on CPU (no op forks torch's threads), tensors on
    other devices. Indexing, slicing and ``~``/``&``/``<`` are the same in both."""

    def __init__(self, like: np.ndarray | Tensor):
        self.is_numpy = isinstance(like, np.ndarray)
        self.device = None if isinstance(like, np.ndarray) else like.device

    def full(self, n: int, value: bool):
        if self.is_numpy:
            return np.full(n, value)
        return torch.full((n,), value, dtype=torch.bool, device=self.device)

    def copy(self, values):
        return values.copy() if self.is_numpy else values.clone()

    def equal(self, a, b) -> bool:
        return bool(np.array_equal(a, b)) if self.is_numpy else torch.equal(a, b)

    def block_starts(self, sorted_src, n: int) -> list[int]:
        """Positions in ``sorted_src`` where the blocks of ``_BLOCK`` ranks start (and the end)."""
        if self.is_numpy:
            return np.searchsorted(sorted_src, np.arange(0, n + _BLOCK, _BLOCK)).tolist()
        marks = torch.arange(0, n + _BLOCK, _BLOCK, device=self.device)
        return searchsorted(sorted_src, marks).tolist()


def _resolve_block(kind: _ArrayKind, alive, src, dst, max_rounds: int | None = None):
    """Greedy result inside one block: the fixed point of ``kept = alive & ~(some kept
    src has an edge to it)``, reached by iterating (rounds: longest chain + 1). None when
    ``max_rounds`` rounds do not reach it."""
    kept = alive
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        nxt = kind.copy(alive)
        nxt[dst[kept[src]]] = False
        if kind.equal(nxt, kept):
            return kept
        kept = nxt
        rounds += 1
    return None


def _greedy_keep(src, dst, n: int):
    """Greedy suppression over edges ``src -> dst`` (score ranks, ``src < dst``), as NumPy
    arrays or as tensors; the result is of the same kind.

    Returns a bool mask over ranks: rank ``r`` is kept when no kept rank ``< r`` has an
    edge to it. First all ranks at once for a few rounds (enough unless suppression
    chains are long); otherwise in blocks of ``_BLOCK`` ranks, in order.
    """
    kind = _ArrayKind(src)
    everything = kind.full(n, True)
    if len(src) == 0:
        return everything
    kept = _resolve_block(kind, everything, src, dst, None if n <= _BLOCK else _ROUNDS)
    if kept is not None:
        return kept
    order = np.argsort(src, kind="stable") if kind.is_numpy else torch.sort(src).indices
    src, dst = src[order], dst[order]
    keep = everything
    suppressed = kind.full(n, False)
    bounds = kind.block_starts(src, n)
    for block, a in enumerate(range(0, n, _BLOCK)):
        z = min(a + _BLOCK, n)
        e0, e1 = bounds[block], bounds[block + 1]
        alive = ~suppressed[a:z]
        if e0 == e1:
            keep[a:z] = alive
            continue
        s, d = src[e0:e1] - a, dst[e0:e1]
        inner = d < z
        si, di = s[inner], d[inner] - a
        live = alive[si] & alive[di]
        block_kept = _resolve_block(kind, alive, si[live], di[live]) if live.any() else alive
        assert block_kept is not None  # without a round limit the fixed point is reached
        keep[a:z] = block_kept
        outer = ~inner
        suppressed[d[outer][block_kept[s[outer]]]] = True
    return keep


def _greedy_keep_by_priority(priority: Tensor, i: Tensor, j: Tensor, n: int) -> Tensor:
    """:func:`_greedy_keep` over the edges ``i - j`` between boxes of ``priority`` (lower
    first): in NumPy on CPU, where edges number in the 100k at 20k boxes and torch's
    indexing would fork threads; in torch ops elsewhere."""
    if priority.device.type == "cpu" and _NUMPY_GREEDY:
        rank = priority.numpy()
        pi, pj = rank[i.numpy()], rank[j.numpy()]
        return torch.from_numpy(_greedy_keep(np.minimum(pi, pj), np.maximum(pi, pj), n))
    pi, pj = priority.index_select(0, i), priority.index_select(0, j)
    return _greedy_keep(torch.minimum(pi, pj), torch.maximum(pi, pj), n)


def _grouped_dense_kept(
    planes: Tensor, proper: Tensor, cell: Tensor, order: Tensor, thr: float
) -> Tensor | None:
    """Greedy NMS with every pair of a group at once, for small groups.

    ``cell`` [B, N] holds dense ids of (image, class) groups. The boxes of each group
    are laid out by rank in a row of a [G, S] table (S: the largest group); the IoU of
    all pairs of a row, a triangular "suppresses" matrix, and the greedy fixed point
    by matrix products. Returns ``kept`` [B, N] by rank, or None when G * S * S is too
    large for this path.
    """
    batch, n = proper.shape
    m, dev = batch * n, planes.device
    budget = _CUDA_TILE if dev.type == "cuda" else _CPU_TILE
    cell = cell.reshape(m)
    counts = torch.bincount(cell)
    groups, size = counts.numel(), int(counts.max())
    if groups * size * size > budget // _DENSE:
        return None
    ar = torch.arange(n, device=dev).expand(batch, n)
    rank = torch.empty_like(order).scatter_(-1, order, ar).reshape(m)
    key, pos = torch.sort(cell * n + rank)
    starts = torch.cumsum(counts, 0) - counts
    owner = torch.div(key, n, rounding_mode="floor")
    slot = torch.arange(m, device=dev) - starts.index_select(0, owner)
    table = torch.full((groups, size), m, dtype=torch.int64, device=dev)
    table[owner, slot] = pos
    # Per slot (x2, y2, -x1, -y1, area); empty slots point past the end, to a far-out
    # inverted box (IoU 0 with everything), as improper boxes already are.
    rows = torch.cat((planes.reshape(5, m), _far_planes(planes.dtype, dev, 1)), 1)
    rows = rows.index_select(1, table.reshape(-1))
    # All pairs (i, j), i < j, of a group: slot i (higher score) may suppress slot j.
    slots = torch.triu_indices(size, size, 1, device=dev)
    slots = slots[:, None, :] + torch.arange(0, groups * size, size, device=dev)[:, None]
    first, second = slots.reshape(2, -1)
    a, c = rows.index_select(1, first), rows.index_select(1, second)
    low_high = torch.minimum(a[0:4], c[0:4])  # min(x2), min(y2), -max(x1), -max(y1)
    overlap = low_high[0:2].add_(low_high[2:4]).clamp_(min=0)
    inter = overlap[0] * overlap[1]
    iou = inter.div_((a[4] + c[4]).sub_(inter))
    pair = (iou > thr).nonzero().squeeze(1)
    src, dst = first.index_select(0, pair), second.index_select(0, pair)
    kept_slots = _greedy_keep(src, dst, groups * size)
    kept_flat = torch.zeros(m + 1, dtype=torch.bool, device=dev)
    kept_flat[table.reshape(-1)[kept_slots]] = True
    return kept_flat[:m].view(batch, n).gather(-1, order)


def _far_planes(dtype: torch.dtype, device: torch.device, count: int) -> Tensor:
    """``count`` stand-in boxes as planes: inverted and far out (x1 = y1 = big,
    x2 = y2 = -big, area 1), so that their overlap with anything is negative and finite:
    IoU 0 with everything, never NaN."""
    big = torch.finfo(dtype).max / 4
    return torch.tensor([-big] * 4 + [1.0], dtype=dtype, device=device)[:, None].expand(5, count)


def _planes(b: Tensor, area: Tensor, proper: Tensor) -> Tensor:
    """Boxes as contiguous planes [5, B, N]: (x2, y2, -x1, -y1, area). One minimum of two
    such columns gives min(x2), min(y2), -max(x1), -max(y1), and the overlap
    min(x2) + (-max(x1)) equals min(x2) - max(x1) exactly. Improper boxes become the
    far-out stand-in of ``_far_planes``."""
    x1, y1, x2, y2 = b.unbind(-1)
    planes = torch.stack((x2, y2, -x1, -y1, area))
    if not bool(proper.all()):
        planes = torch.where(proper, planes, _far_planes(b.dtype, b.device, 1)[..., None])
    return planes


def _nms_core(
    boxes: Tensor, scores: Tensor, groups: Tensor | None, threshold: float, padded: bool
) -> tuple[Tensor, Tensor]:
    """Greedy NMS on every image of ``boxes`` [B, N, 4] (validated inputs).

    Returns ``order`` [B, N], the boxes of each image by descending score (ties: lower
    index first), and ``kept`` [B, N] bool, whether ``order[b, r]`` is kept. With
    ``padded``, candidates scored -inf take no part and are not kept.
    """
    batch, n = scores.shape
    dev = boxes.device
    threshold = float(threshold)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    b = _in_compute_dtype(boxes)
    x1, y1, x2, y2 = b.unbind(-1)
    width, height = x2 - x1, y2 - y1
    area = width * height
    # Boxes of zero, negative or non-finite area have IoU 0 with everything: no edges.
    proper = (torch.minimum(width, height) > 0) & (area > 0) & (area < math.inf)
    if padded:
        valid = scores > -math.inf
        proper &= valid
    if groups is not None:
        groups = _dense_groups(groups)
    if groups is None:
        cell = torch.arange(batch, device=dev)[:, None].expand(batch, n)
    elif batch == 1:
        cell = groups
    else:
        cell = _dense_groups(groups * batch + torch.arange(batch, device=dev)[:, None])
    thr = _threshold_in(threshold, b.dtype)
    planes = _planes(b, area, proper)
    kept = _grouped_dense_kept(planes, proper, cell, order, thr)
    if kept is not None:
        return order, (kept & valid.gather(-1, order)) if padded else kept
    i, j = _suppression_pairs(planes, proper, groups, threshold)
    # Priority of a box: its rank in its image, images interleaved (pairs never cross
    # images, so this order is each image's score order).
    ar = torch.arange(0, batch * n, batch, device=dev).expand(batch, n)
    priority = torch.empty_like(order).scatter_(-1, order, ar)
    if batch > 1:
        priority += torch.arange(batch, device=dev)[:, None]
    priority = priority.reshape(-1)
    kept = _greedy_keep_by_priority(priority, i, j, batch * n).view(n, batch).t()
    if padded:
        kept = kept & valid.gather(-1, order)
    return order, kept


# ----------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression; a drop-in for ``torchvision.ops.nms``.

    Boxes are visited by descending score; a box is kept unless its IoU with an already
    kept box is ``> iou_threshold`` (strictly: IoU exactly equal to the threshold is
    kept). Equal scores are visited lower index first. IoU is torchvision's formula in
    torchvision's arithmetic (see the module docstring), so the result equals
    ``torchvision.ops.nms`` on every input torchvision accepts without NaN.

    Differences from torchvision (deliberate, pinned by tests):
        * NaN in ``boxes`` or ``scores`` raises ``ValueError``; torchvision keeps a
          NaN-scored box first and lets it suppress others.
        * ``iou_threshold`` outside ``[0, 1]`` raises ``ValueError``; torchvision
          accepts any float.
        * float16/bfloat16 work on every device (computed in float32, which holds their
          values exactly); torchvision's CPU kernel refuses them.

    Synchronizes with the host (the output length depends on the data): for the NaN
    check, for a few sizes and maxima that choose the path and plan the tiles, at every
    ``nonzero`` (once per tile or batch of listed pairs) and once per round of the greedy
    resolution. Inputs are never modified.

    On CPU, below 1200 boxes of finite float32/float64 input, it calls torchvision's
    kernel (``torch.ops.torchvision.nms``), whose answer is the same bit for bit there and
    whose single call is faster than the sparse path's few dozen tensor ops at that size;
    the NaN check then costs one reduction (about 3 µs). Above, it still calls the kernel
    where the boxes look clustered (detections around objects, where the kernel skips the
    many suppressed boxes and the sparse path's overlapping pairs are many): up to 5000
    boxes a quick sign first (the best-scored box suppressing 16 or more boxes, or the
    four best 8 or more each on average), else the share of boxes kept is estimated by
    running NMS on a window of about 64 boxes in the middle of the data (0.1-1 ms), and
    two cost models fitted on the development machine decide.
    Measured there, clustered input at 1k / 5k / 20k boxes: 1.0x / 0.95x / 1.0x
    torchvision (the sparse path alone: 0.05x / 0.16x / 0.21x); scattered boxes keep the
    sparse path.

    Args:
        boxes (Tensor[N, 4]): XYXY, absolute pixels, floating dtype. Boxes with zero,
            negative or non-finite area never suppress and are never suppressed.
        scores (Tensor[N]): same dtype and device as ``boxes``. ``-inf`` is an ordinary
            (lowest) score here.
        iou_threshold (float): in ``[0, 1]``.

    Returns:
        Tensor[K] int64: indices of the kept boxes, by descending score (ties: lower
        index first), on the device of ``boxes``. Empty input gives an empty result.
    """
    if _is_common_cpu_call(boxes, scores, iou_threshold):
        # valid: larger calls skip the generic checks too (about 17 µs; at 1300 clustered
        # boxes torchvision's own wrapper costs 23)
        if boxes.shape[0] >= _KERNEL_MAX_BOXES:
            return _nms_impl(boxes, scores, iou_threshold)
        with _below_autograd():
            if _all_finite(boxes, scores):
                return _torchvision_nms_kernel()(boxes, scores, iou_threshold)
    op = "nms"
    boxes, scores = _check_boxes_scores(op, boxes, scores, batched=False)
    iou_threshold = _check_common(op, boxes, scores, iou_threshold)
    if not plain_eager_mode():  # one opaque op with a data-dependent output size
        # (Detached: indices have no derivative, and an input that requires grad would
        # send the op through an autograd wrapper that torch.func's grad refuses.)
        return torch.ops.detops.nms(boxes.detach(), scores.detach(), float(iou_threshold))
    return _nms_impl(boxes, scores, iou_threshold)


def _is_common_cpu_call(
    boxes: object,
    scores: object,
    iou_threshold: object,
    max_boxes: int | None = None,
    class_ids: object = None,
) -> bool:
    """The common call, recognised in a few attribute reads: valid arguments (what the
    checks of :func:`nms`, or of :func:`class_spec_nms` with ``class_ids``, would accept),
    float32/float64 on CPU, at least 1 box (and fewer than ``max_boxes``, where given).
    At 10-50 boxes torchvision's whole call takes 20-60 µs, so the generic checks (about
    5 µs) would cost a large share of it. (Shapes are compared through ``dim()`` and
    ``numel()``: comparing ``torch.Size`` objects costs more. Outside plain eager mode,
    under torch.compile, a trace or a torch.func transform, nothing else is looked at.)"""
    if not (
        plain_eager_mode()
        and isinstance(boxes, Tensor)
        and isinstance(scores, Tensor)
        and is_dense_strided(boxes)
        and is_dense_strided(scores)
        and type(iou_threshold) is float
        and 0.0 <= iou_threshold <= 1.0
    ):
        return False
    shape = boxes.shape
    n = shape[0] if len(shape) == 2 and shape[1] == 4 else 0
    if not (
        0 < n
        and (max_boxes is None or n < max_boxes)
        and boxes.dtype in _KERNEL_DTYPES
        and scores.dtype is boxes.dtype
        and scores.dim() == 1
        and scores.numel() == n
        and boxes.is_cpu
        and scores.is_cpu
    ):
        return False
    return class_ids is None or (
        isinstance(class_ids, Tensor)
        and is_dense_strided(class_ids)
        and class_ids.dtype in _CLASS_ID_DTYPES
        and class_ids.dim() == 1
        and class_ids.numel() == n
        and class_ids.is_cpu
    )


def _nms_impl(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    if _kernel_gives_our_answer(boxes, scores) or _kernel_is_cheaper(
        boxes, scores, None, iou_threshold
    ):
        return _kernel_nms(boxes, scores, iou_threshold)
    return _sparse_nms(boxes, scores, iou_threshold)


def _window_nms(
    iou_threshold: float, boxes: Tensor, scores: Tensor, groups: Tensor | None
) -> Tensor:
    """NMS of kept_share's window (a few hundred finite CPU boxes) in one kernel call; with
    groups, on class-offset float64 boxes: an estimate need not be exact, and a kernel
    call per class would cost more than the estimate is worth."""
    if groups is not None:
        b = boxes.to(torch.float64)
        low, high = float(b.min()), float(b.max())
        ids = groups.to(torch.float64)  # (a difference of int64 extremes would wrap)
        offset = (ids - ids.min()) * (high - low + 1.0)
        boxes = b - low + offset[:, None]
        scores = scores.to(torch.float64)
    return _kernel_nms(boxes, scores, iou_threshold)


_SPARSE_NMS_LOG = np.log(np.array(_SPARSE_NMS_S)).T  # [log sizes, log seconds], once


def _sparse_seconds(n: int) -> float:
    """The sparse path's time for ``n`` scattered boxes on CPU (see _SPARSE_NMS_S)."""
    largest, seconds = _SPARSE_NMS_S[-1]
    if n >= largest:
        return seconds * (n / largest) ** 1.4
    return math.exp(float(np.interp(math.log(n), *_SPARSE_NMS_LOG)))


def _kernel_is_cheaper(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    iou_threshold: float,
    sparse_per_box: float = _SPARSE_GROUPED_S,
    *,
    share: float | None = None,
) -> bool:
    """For CPU float32/float64 finite input (where the kernel's answer is ours): whether
    torchvision's kernel (once per group) is expected to beat the sparse path (see
    ``_KERNEL_CALL_S``). ``sparse_per_box``: the sparse path's seconds per box on
    scattered input with these groups (plain NMS has its own table). ``share``: the share
    of boxes NMS keeps, where the caller knows it well enough; else it is estimated
    (kept_share). Data that kept_share cannot sample (nearly all centres in one spot)
    counts as clustered. Also the finite check of the kernel routes: False for NaN or
    infinite input."""
    n = boxes.shape[0]
    if not (n > 0 and boxes.is_cpu and boxes.dtype in _KERNEL_DTYPES):
        return False
    if groups is not None and groups.dtype not in _CLASS_ID_DTYPES:
        return False
    # (NumPy views, no torch op: torch.no_grad() only around kept_share, whose torch ops
    # would record a graph; measured in whole calls, 2000 clustered boxes, interleaved
    # with torchvision on the AMD EPYC: 0.87-0.91x -> 0.90-0.92x)
    b, s = numpy_view(boxes), numpy_view(scores)
    with np.errstate(all="ignore"):  # (NaN or inf anywhere makes the products so)
        if not math.isfinite(sum((s @ b).tolist())):
            return False
    if groups is None:
        if n <= _TOP_HITS_MAX_BOXES and (
            best_box_hits(b, s, iou_threshold) >= 2 * CLUSTER_HITS
            or top_hits(b, s, iou_threshold) >= CLUSTER_HITS
        ):
            return True
        sizes = np.array([n], dtype=np.float64)
        sparse = _sparse_seconds(n)
    else:
        sizes = np.unique(numpy_view(groups), return_counts=True)[1].astype(np.float64)
        # Per box for the many small groups; a group as large as plain NMS's table
        # costs what plain NMS does (a batch without classes: one group per image).
        large = sizes[sizes >= _SPARSE_NMS_S[0][0]]
        sparse = sparse_per_box * n + sum(_sparse_seconds(int(m)) for m in large)
    calls = sizes.shape[0] * _KERNEL_CALL_S
    squares = float((sizes * sizes).sum())
    if calls + _KERNEL_PAIR_S * squares <= sparse:  # cheaper even if every box is kept
        return True
    if share is None:
        with torch.no_grad():
            share = kept_share(
                boxes, scores, groups, functools.partial(_window_nms, iou_threshold), _SHARE_SAMPLE
            )
    if share is None:
        return True
    return calls + _KERNEL_PAIR_S * share * squares <= sparse * _clustered_sparse_factor(share)


def _clustered_sparse_factor(share: float) -> float:
    """How much slower than on scattered boxes the sparse path is when NMS keeps ``share``
    of the boxes: clusters make many overlapping pairs (measured on 2 cores, clusters of
    50 keeping 4%: 2.7x for plain NMS at 20k boxes, 3.6x with 20 classes, 6.5x for a
    batch of 16 x 1000; scattered boxes keep 40-95%)."""
    return min(6.0, max(1.0, 0.75 / (share + 0.15)))


def _sparse_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """detops' own path of :func:`nms` (validated arguments): any size, dtype and device."""
    with torch.no_grad():
        _check_finite_input("nms", boxes, scores)
        if boxes.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=boxes.device)
        order, kept = _nms_core(boxes[None], scores.detach()[None], None, iou_threshold, False)
        return where_true(kept[0], order[0])[0]


def class_spec_nms(
    boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float = 0.5
) -> Tensor:
    """Class-specific NMS: :func:`nms` per class, merged and sorted by score.

    Equal to running ``nms`` separately on the boxes of every class, mapping the kept
    indices back, and sorting all of them by descending score (ties: lower index first).
    Boxes of different classes never suppress each other. Classes are kept apart without
    the ``boxes + class_id * (max + 1)`` offset trick that ``torchvision.ops.batched_nms``
    (for up to 1000 boxes on CPU) and the course code use, so the result stays exact with
    negative coordinates (where ``max + 1 <= 0`` stacks classes on top of each other),
    with huge coordinates and in float16 (where the offset boxes are rounded).

    Synchronizes with the host like :func:`nms` (plus once to map the class ids). On CPU,
    finite boxes take a NumPy path (``detops._nms_numpy``: each NumPy call costs a
    fraction of a torch call, and that fixed cost is what counts at this size; same
    arithmetic and result). Clustered boxes are resolved there in rounds, every class at
    once: each class's best box left is kept and suppresses its class's boxes (as many
    rounds as the most boxes one class keeps). What the rounds leave (scattered boxes)
    goes by pairs up to 3000 boxes, else to torchvision's kernel once per class where
    the cost model of :func:`nms` prefers it, else to the sparse path. Up to four
    classes skip the rounds: with non-negative coordinates (or negative ones that still
    leave the classes apart once mirrored), up to 300 boxes (1000 in two
    classes, 1500 where the best box suppresses a cluster) go to one kernel call, each
    class mirrored into a quadrant of its own (negating coordinates is exact, so every
    IoU within a class is unchanged bit for bit, and boxes of different quadrants never
    intersect); more go to the kernel once per class, or to the sparse path where the
    cost model prefers it.

    Args:
        boxes (Tensor[N, 4]): XYXY, absolute pixels, floating dtype.
        scores (Tensor[N]): same dtype and device as ``boxes``.
        class_ids (Tensor[N]): integer dtype (any values, negative ones included).
        iou_threshold (float): in ``[0, 1]``; suppression needs IoU ``> iou_threshold``.
            0.5 by default, as in the course code.

    Returns:
        Tensor[K] int64: kept indices by descending score (ties: lower index first).
    """
    numpy_tried = class_ids is not None and _is_common_cpu_call(
        boxes, scores, iou_threshold, CLASS_NMS_MAX_BOXES + 1, class_ids
    )
    if numpy_tried:
        kept = mirrored_call(boxes, scores, class_ids, iou_threshold, _kernel_nms)
        if kept is not None:
            return kept
        # float32/float64, so no conversion: nothing for autograd to record (no no_grad)
        kernel_ok, finish = _numpy_fallbacks(boxes, scores, class_ids, iou_threshold)
        kept = numpy_greedy_nms(
            boxes,
            scores,
            class_ids,
            _threshold_in(iou_threshold, boxes.dtype),
            iou_threshold,
            _kernel_nms,
            kernel_ok,
            finish,
        )
        if kept is not None:
            return kept
    op = "class_spec_nms"
    boxes, scores = _check_boxes_scores(op, boxes, scores, batched=False)
    class_ids = _check_class_ids(op, class_ids, scores, "[N]")
    iou_threshold = _check_common(op, boxes, scores, iou_threshold, class_ids=class_ids)
    if not plain_eager_mode():
        return torch.ops.detops.class_spec_nms(  # (detached: see nms)
            boxes.detach(), scores.detach(), class_ids, float(iou_threshold)
        )
    # (where the quick call's NumPy path gave up, for non-finite input or for the sparse
    # path, running it again would only repeat its work)
    return _class_spec_nms_impl(boxes, scores, class_ids, iou_threshold, not numpy_tried)


def _class_spec_nms_impl(
    boxes: Tensor,
    scores: Tensor,
    class_ids: Tensor,
    iou_threshold: float,
    numpy_path: bool = True,
) -> Tensor:
    op = "class_spec_nms"
    n = boxes.shape[0]
    with torch.no_grad():
        if numpy_path and n > 0 and boxes.is_cpu:
            kernel_ok, finish = _numpy_fallbacks(boxes, scores, class_ids, iou_threshold)
            kept = _numpy_nms(boxes, scores, class_ids, iou_threshold, kernel_ok, finish)
            if kept is not None:
                return kept
        _check_finite_input(op, boxes, scores)
        if boxes.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=boxes.device)
        classes = class_ids.to(torch.int64)[None]
        order, kept = _nms_core(boxes[None], scores.detach()[None], classes, iou_threshold, False)
        return where_true(kept[0], order[0])[0]


def _numpy_fallbacks(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float
) -> tuple[Callable[..., bool] | None, Callable[[np.ndarray], np.ndarray] | None]:
    """``kernel_ok`` and ``finish`` for :func:`numpy_greedy_nms` above 768 boxes: the
    cost model's choice of the kernel (asked once at most) and the sparse path on the
    boxes its rounds leave. None and None below (the pairs, or the kernel for one group)."""
    if boxes.shape[0] <= NUMPY_NMS_MAX_BOXES:
        return None, None
    chosen = boxes, scores, groups, iou_threshold
    return (
        functools.cache(functools.partial(_kernel_is_cheaper, *chosen)),
        functools.partial(_sparse_subset, *chosen),
    )


def batched_nms_per_image(
    boxes: Tensor,
    scores: Tensor,
    class_ids: Tensor | None,
    iou_threshold: float,
    *,
    max_detections: int | None = None,
) -> Tensor:
    """NMS on every image of a padded batch at once; no Python loop over images.

    Row ``b`` of the result equals ``class_spec_nms(boxes[b], scores[b], class_ids[b],
    iou_threshold)`` (or ``nms(boxes[b], scores[b], iou_threshold)`` when ``class_ids``
    is None) restricted to the candidates whose score is not ``-inf``, cut to its first
    ``max_detections`` entries and padded with -1. Images never suppress each other: the
    image index is part of the group key, like the class.

    Synchronizes with the host like :func:`nms`, plus once for the output width.

    Args:
        boxes (Tensor[B, N, 4]): XYXY, absolute pixels, floating dtype.
        scores (Tensor[B, N]): same dtype and device as ``boxes``; ``-inf`` marks padding
            (never kept, never suppresses).
        class_ids (Tensor[B, N] or None): integer class per candidate; None for
            class-agnostic NMS.
        iou_threshold (float): in ``[0, 1]``; suppression needs IoU ``> iou_threshold``.
        max_detections (int, optional): keep at most this many per image (``>= 0``).

    Returns:
        Tensor[B, K] int64: per image, the kept indices into ``N`` by descending score
        (ties: lower index first), padded with -1. ``K`` is the largest number kept in
        one image, capped at ``max_detections``; 0 when nothing is kept.
    """
    op = "batched_nms_per_image"
    boxes, scores = _check_boxes_scores(op, boxes, scores, batched=True)
    if class_ids is not None:
        class_ids = _check_class_ids(op, class_ids, scores, "[B, N]")
    if max_detections is not None:
        max_detections = check_int(
            op, "max_detections", max_detections, expected="None or an int >= 0"
        )
        if max_detections < 0:
            raise ValueError(f"{op}: max_detections must be >= 0, got {max_detections}")
    iou_threshold = _check_common(op, boxes, scores, iou_threshold, class_ids=class_ids)
    if not plain_eager_mode():
        return torch.ops.detops.batched_nms_per_image(  # (detached: see nms)
            boxes.detach(), scores.detach(), class_ids, float(iou_threshold), max_detections
        )
    return _batched_nms_per_image_impl(boxes, scores, class_ids, iou_threshold, max_detections)


def _batched_nms_per_image_impl(
    boxes: Tensor,
    scores: Tensor,
    class_ids: Tensor | None,
    iou_threshold: float,
    max_detections: int | None,
) -> Tensor:
    op = "batched_nms_per_image"
    num_images = scores.shape[0]
    dev = boxes.device
    with torch.no_grad():
        if boxes.is_cpu and max_detections != 0 and scores.numel() > 0:
            large = scores.numel() > NUMPY_NMS_MAX_BOXES
            if not large or boxes.dtype in _KERNEL_DTYPES:
                out = _numpy_batched_nms(boxes, scores, class_ids, iou_threshold, max_detections)
                if out is not None:
                    return out
        _check_finite_input(op, boxes, scores)
        if scores.numel() == 0 or max_detections == 0:
            return torch.full((num_images, 0), -1, dtype=torch.int64, device=dev)
        classes = None
        if class_ids is not None:
            classes = class_ids.to(torch.int64)
        order, kept = _nms_core(boxes, scores.detach(), classes, iou_threshold, True)
        # Row b: the kept boxes of image b in score order, then -1.
        slot = torch.cumsum(kept, dim=-1) - 1
        width = int(slot[:, -1].max()) + 1
        if max_detections is not None:
            width = min(width, max_detections)
        out = torch.full((num_images, width + 1), -1, dtype=torch.int64, device=dev)
        slot = torch.where(kept & (slot < width), slot, width)  # the rest to a spare column
        out.scatter_(-1, slot, torch.where(kept, order, -1))
        return out[:, :width]


def _numpy_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    iou_threshold: float,
    kernel_ok: Callable[..., bool] | None = None,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Tensor | None:
    """:func:`numpy_greedy_nms` in the computation dtype (float16/bfloat16 values are
    float32 ones), with torchvision's kernel for the groups it hands over; None where an
    input value is not finite, or where ``kernel_ok()`` turns the kernel down and
    ``finish`` is None."""
    compute = _compute_dtype(boxes.dtype)
    boxes, scores = _in_compute_dtype(boxes), _in_compute_dtype(scores)
    threshold = _threshold_in(iou_threshold, compute)
    return numpy_greedy_nms(
        boxes, scores, groups, threshold, iou_threshold, _kernel_nms, kernel_ok, finish
    )


def _sparse_subset(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, subset: np.ndarray
) -> np.ndarray:
    """The sparse path's NMS of the boxes ``subset`` (indices) alone, groups kept apart:
    the positions in ``subset`` of the kept ones, unordered. (:func:`numpy_greedy_nms`
    hands over the boxes its rounds leave.)"""
    with torch.no_grad():
        classes = _rows_of(groups, subset).to(torch.int64)[None]
        chosen = _rows_of(boxes, subset)[None], _rows_of(scores, subset)[None]
        order, kept = _nms_core(*chosen, classes, iou_threshold, False)
        return where_true(kept[0], order[0])[0].numpy()


def _rows_of(values: Tensor, rows: np.ndarray) -> Tensor:
    """``values[rows]`` for a CPU tensor, gathered by NumPy: torch's gather of thousands
    of boxes forks its threads (see the module docstring)."""
    plain = values.detach().resolve_neg()
    if plain.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits as int16
        return torch.from_numpy(plain.view(torch.int16).numpy()[rows]).view(torch.bfloat16)
    return torch.from_numpy(plain.numpy()[rows])


def _numpy_batched_nms(
    boxes: Tensor,
    scores: Tensor,
    class_ids: Tensor | None,
    iou_threshold: float,
    max_detections: int | None,
) -> Tensor | None:
    """:func:`batched_nms_per_image` through :func:`numpy_greedy_nms` on the flattened batch,
    the image (and class) as the group; None where that path does not apply (non-finite
    values other than ``-inf`` padding scores, class ids too far apart to combine). Above
    768 boxes, what the rounds leave goes to torchvision's kernel once per group where
    the cost model prefers it to the sparse path, else to the sparse path (those boxes
    alone), or, where no round paid, None."""
    num_images, n = scores.shape
    compute = _compute_dtype(boxes.dtype)
    flat_scores = scores.detach().to(compute).resolve_neg().reshape(-1).numpy()
    valid = np.flatnonzero(flat_scores != -np.inf)  # NaN stays, and sends us back
    image = valid // n
    if class_ids is None:
        key = image
    else:
        classes = numpy_view(class_ids.reshape(-1))[valid].astype(np.int64)
        if classes.size:
            low, span = int(classes.min()), int(classes.max()) - int(classes.min()) + 1
            if span * num_images >= 1 << 62:
                return None
            key = image * span + (classes - low)
        else:
            key = image
    kept = torch.empty(0, dtype=torch.int64)
    if valid.size:
        flat_boxes = boxes.detach().to(compute).resolve_neg().reshape(-1, 4)
        flat_valid_scores = torch.from_numpy(flat_scores)
        if valid.size < flat_scores.size:  # padding to leave out
            flat_boxes = torch.from_numpy(flat_boxes.numpy()[valid])
            flat_valid_scores = torch.from_numpy(flat_scores[valid])
        groups = torch.from_numpy(key)
        chosen = flat_boxes, flat_valid_scores, groups, iou_threshold
        kernel_ok, finish = _numpy_fallbacks(*chosen)
        if kernel_ok is not None:  # the sparse path's cost per box in a batch
            kernel_ok = functools.cache(
                functools.partial(_kernel_is_cheaper, *chosen, _SPARSE_BATCHED_S)
            )
        found = _numpy_nms(*chosen, kernel_ok, finish)
        if found is None:
            return None
        kept = found
    # Kept flat indices by descending score (ties: lower flat index, so lower index within
    # an image); a stable sort by image keeps that order inside each image.
    flat = valid[kept.numpy()]
    flat = flat[np.argsort(flat // n, kind="stable")]
    rows = flat // n
    counts = np.bincount(rows, minlength=num_images)
    width = int(counts.max()) if counts.size else 0
    if max_detections is not None:
        width = min(width, max_detections)
    slot = np.arange(flat.size) - (np.cumsum(counts) - counts)[rows]
    within = slot < width
    out = np.full((num_images, width), -1, dtype=np.int64)
    out[rows[within], slot[within]] = flat[within] % n
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------
# torch.compile / torch.export: the NMS family as opaque custom ops
# ----------------------------------------------------------------------------------------
# Under torch.compile the public functions validate their arguments (static checks) and
# call these ops, as torchvision registers its nms: the output length depends on the data,
# so the fake implementations return an unbacked dynamic size. Eager calls skip the op
# layer (its dispatch would cost more than NMS itself at a few dozen boxes).


@torch.library.custom_op("detops::nms", mutates_args=())
def _nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _nms_impl(boxes, scores, iou_threshold)


@_nms_op.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.custom_op("detops::class_spec_nms", mutates_args=())
def _class_spec_nms_op(
    boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float
) -> Tensor:
    return _class_spec_nms_impl(boxes, scores, class_ids, iou_threshold)


@_class_spec_nms_op.register_fake
def _(boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.custom_op("detops::batched_nms_per_image", mutates_args=())
def _batched_nms_per_image_op(
    boxes: Tensor,
    scores: Tensor,
    class_ids: Tensor | None,
    iou_threshold: float,
    max_detections: int | None,
) -> Tensor:
    return _batched_nms_per_image_impl(boxes, scores, class_ids, iou_threshold, max_detections)


@_batched_nms_per_image_op.register_fake
def _(boxes, scores, class_ids, iou_threshold, max_detections):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((scores.shape[0], kept), dtype=torch.int64)


# torch.func.vmap: with no batching rule, torch falls back to a loop over the batch that
# warns of "a performance drop" at every call. The op's own loop is that fallback, silent:
# each slice's NMS is as data-dependent as the op, so there is nothing to vectorize, and
# slices that keep different counts fail to stack as under the fallback (and torchvision).
def _vmap_as_a_loop(op: Callable[..., Tensor], name: str) -> Callable[..., tuple[Tensor, int]]:
    def batching_rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[Tensor, int]:
        if info.batch_size == 0:  # (no slice to tell the kept count: the fallback refused too)
            raise RuntimeError(
                f"{name} under vmap: the mapped dimension has size 0; the number of boxes "
                "kept per slice, the result's last dimension, is only known from a slice"
            )
        kept = []
        for i in range(info.batch_size):
            sliced = (
                a if d is None else a.select(d, i) for a, d in zip(args, in_dims, strict=True)
            )
            kept.append(op(*sliced))
        return torch.stack(kept), 0

    return batching_rule


_nms_op.register_vmap(_vmap_as_a_loop(_nms_op, "nms"))
_class_spec_nms_op.register_vmap(_vmap_as_a_loop(_class_spec_nms_op, "class_spec_nms"))
_batched_nms_per_image_op.register_vmap(
    _vmap_as_a_loop(_batched_nms_per_image_op, "batched_nms_per_image")
)
