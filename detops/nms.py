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

How it is fast (CPU): greedy NMS is quadratic if every kept box is compared with every
later box, as torchvision's CPU kernel does in a scalar loop. Here the pairs that can
reach the threshold are found first, exactly and without a Python loop over boxes:

1. IoU is at most the IoU of the boxes' x-intervals and of their y-intervals. So boxes
   with IoU above ``t`` start within ``(1 - t) * height`` of each other in y and their
   x-intervals nearly coincide. Boxes are binned by ``y1`` (bin height ``(1 - t)`` times
   the tallest box) and sorted by ``x1`` inside each (class, bin); each box then needs
   only a contiguous window of its own bin and one of the next bin.
2. Windows are evaluated as dense, cache-sized tiles with the exact IoU formula above.
   Pairs above the threshold become the edges of a sparse "suppresses" graph.
3. Greedy suppression over that graph: boxes in score order, in blocks; inside a block the
   greedy result is the fixed point of ``keep = alive & ~any(kept higher-scored
   neighbour)``, reached by iterating (as many rounds as the longest chain of
   suppressions inside the block); the block's kept boxes then suppress their later
   neighbours.

The window bounds carry a relative margin of 1e-3 on the threshold, far more than the
float32 rounding of the IoU (about 1e-6), so no pair that the exact formula puts above the
threshold is skipped. Classes (and images, in :func:`batched_nms_per_image`) are separate
groups of the sort: boxes of different groups are never compared, with no coordinate
offsets (the ``boxes + class_id * (max + 1)`` trick loses exactness with negative or huge
coordinates and in float16).

Tiles on CPU hold at most 32768 elements: torch runs elementwise ops that small on one
thread, inside the L2 cache, so the op does not depend on (or suffer from) intra-op
thread scheduling on a busy machine.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

from ._checks import (
    check_floating,
    check_no_nan,
    check_same_device,
    check_tensor,
    check_unit_interval,
    shape_str,
)

__all__ = ["nms", "class_spec_nms", "batched_nms_per_image"]

_CPU_TILE = 1 << 18  # IoU values per tile (measured best among 2**14 .. 2**20)
_CUDA_TILE = 1 << 22
_SUB = 16  # tile columns are scanned in groups of 16 (max over a group, then the members)
_FLUSH = 2048  # candidate groups gathered before they are turned into edges
_MARGIN = 1e-3  # relative slack on the threshold in the (conservative) window bounds
_BLOCK = 1024  # boxes (in score order) per block of the greedy resolution
_MAX_BINS = 1 << 16


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------


def _check_boxes_scores(op: str, boxes: object, scores: object, batched: bool) -> None:
    check_tensor(op, "boxes", boxes)
    check_tensor(op, "scores", scores)
    check_floating(op, "boxes", boxes)
    check_floating(op, "scores", scores)
    if scores.dtype != boxes.dtype:
        raise TypeError(
            f"{op}: scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}"
        )
    box_pattern, score_pattern = ("[B, N, 4]", "[B, N]") if batched else ("[N, 4]", "[N]")
    if boxes.dim() != (3 if batched else 2) or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: boxes must have shape {box_pattern}, got {shape_str(boxes)}")
    if tuple(scores.shape) != tuple(boxes.shape[:-1]):
        raise ValueError(
            f"{op}: scores must have shape {score_pattern} = {list(boxes.shape[:-1])} "
            f"(from boxes {shape_str(boxes)}), got {shape_str(scores)}"
        )


def _check_class_ids(op: str, class_ids: object, scores: Tensor, pattern: str) -> None:
    check_tensor(op, "class_ids", class_ids)
    if class_ids.is_floating_point() or class_ids.is_complex() or class_ids.dtype == torch.bool:
        raise TypeError(f"{op}: class_ids must have an integer dtype, got {class_ids.dtype}")
    if tuple(class_ids.shape) != tuple(scores.shape):
        raise ValueError(
            f"{op}: class_ids must have shape {pattern} = {list(scores.shape)} "
            f"(from scores {shape_str(scores)}), got {shape_str(class_ids)}"
        )


def _check_common(op: str, boxes: Tensor, scores: Tensor, iou_threshold: object, **more) -> None:
    check_same_device(op, boxes=boxes, scores=scores, **more)
    check_unit_interval(op, "iou_threshold", iou_threshold)


def _check_finite_input(op: str, boxes: Tensor, scores: Tensor) -> None:
    """NaN checks (one host sync each); run inside ``_one_intraop_thread``."""
    check_no_nan(op, "boxes", boxes)
    check_no_nan(op, "scores", scores)


# ----------------------------------------------------------------------------------------
# machinery
# ----------------------------------------------------------------------------------------


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def _one_intraop_thread(device: torch.device) -> Iterator[None]:
    """Run the many small CPU ops of one call on one intra-op thread, then restore.

    Every tile is below torch's parallel grain, but searchsorted, indexing and sorting
    parallelize at much smaller sizes, and on a loaded machine each OpenMP hand-off can
    stall for milliseconds (measured: 12x slower at 1000 boxes with 2 threads on a busy
    2-core machine). ``torch.set_num_threads`` is process-wide: it is set to 1 while any
    call is inside, and restored when the last one leaves.
    """
    global _threads_users, _threads_saved
    if device.type != "cpu":
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved > 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved > 1:
                torch.set_num_threads(_threads_saved)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _threshold_in(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value ``t <= threshold``: for ``x`` in ``dtype``,
    ``x > t`` exactly when ``x > threshold`` (torchvision compares in float64)."""
    if dtype == torch.float64:
        return float(threshold)
    t = torch.tensor(threshold, dtype=torch.float64).to(dtype)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def _dense_groups(groups: Tensor) -> tuple[Tensor, int]:
    """Map integer group labels to ``0..G-1`` (order kept); returns labels and ``G``."""
    n = groups.numel()
    low, high = (int(v) for v in torch.stack((groups.min(), groups.max())).tolist())
    if high - low < n:
        return groups - low, high - low + 1
    _, inverse = torch.unique(groups, return_inverse=True)
    return inverse, int(inverse.max()) + 1


class _Prepared:
    """Per-call float64 views of the boxes shared by the self-join passes."""

    def __init__(self, b: Tensor, area: Tensor, threshold: float):
        self.b, self.area, self.m = b, area, b.shape[0]
        dev = b.device
        self.x1, self.y1, x2, self.y2 = b.to(torch.float64).unbind(1)
        self.t = t = threshold * (1.0 - _MARGIN)
        self.x_sorted, self.x_order = torch.sort(self.x1, stable=True)
        self.x_rank = torch.empty_like(self.x_order)
        self.x_rank[self.x_order] = torch.arange(self.m, device=dev)
        # Interval IoU > t needs x1_j <= x2_i - t * w_i for x1_i <= x1_j: round outwards.
        inf = torch.tensor(math.inf, dtype=torch.float64, device=dev)
        upper = torch.nextafter(x2 - t * (x2 - self.x1), inf)
        self.n_upper = torch.searchsorted(self.x_sorted, upper, right=True)

    def y_stats(self) -> tuple[float, float, float]:
        """Tallest height, lowest and highest y1."""
        stats = torch.stack(((self.y2 - self.y1).max(), self.y1.min(), self.y1.max()))
        hmax, ymin, ymax = stats.tolist()
        return hmax, ymin, ymax


def _self_join(
    prep: _Prepared,
    gid: Tensor | None,
    threshold: float,
    out: list[tuple[Tensor, Tensor]],
    pair_filter=None,
    max_pairs: float = math.inf,
) -> bool:
    """Append the pairs of equal ``gid`` whose IoU is ``> threshold`` (once per pair).

    Boxes are sorted by ``(gid, x1)`` (by ``x1`` when ``gid`` is None); box ``i`` is tested against the boxes after it in
    its group up to ``x1 <= x2_i - t * w_i``. Returns False, doing nothing, when that
    window holds more than ``max_pairs`` pairs in all.
    """
    m, b, dev = prep.m, prep.b, prep.b.device
    budget = _CUDA_TILE if dev.type == "cuda" else _CPU_TILE
    if gid is None:
        pos = prep.x_order
        end = prep.n_upper[pos]
    else:
        stride = m + 1
        keys, pos = torch.sort(gid * stride + prep.x_rank)
        end = torch.searchsorted(keys, gid * stride + prep.n_upper)[pos]
    window = end - torch.arange(1, m + 1, device=dev)  # >= 0: a box is in its own window
    total = float(window.sum())
    if total > max_pairs:
        return False
    if total == 0:
        return True
    # Tile (r0, k0) holds T[k, i] = IoU(row r0 + i, row r0 + i + 1 + k0 + k) for
    # i < rows, k < width: a skewed (as_strided) view of the sorted rows, rows innermost
    # so that every operand is read contiguously. Windows vary, so a tile spans the
    # longest window among its rows; rows are sized so that tiles hold about `budget`.
    rows = 1024
    while rows > 64 and rows * (1.5 * total / m + _SUB) > budget:
        rows //= 2
    tiles = -(-m // rows)
    plan = torch.nn.functional.pad(window, (0, tiles * rows - m)).view(tiles, rows)
    plan = plan.amax(1).tolist()

    # Rows (x2, y2, -x1, -y1, area): one minimum gives min(x2), min(y2), -max(x1),
    # -max(y1), and overlap = min(x2) + (-max(x1)), exactly as min(x2) - max(x1).
    # Padded with far-out inverted boxes (overlap negative and finite: IoU 0 with
    # everything) so that tiles may run past the end.
    length = m + rows + _SUB
    big = torch.finfo(b.dtype).max / 4
    sb = b[pos]
    cols = torch.cat((sb[:, 2:4], -sb[:, 0:2], prep.area[pos, None]), 1)
    cols = torch.cat((cols, cols.new_tensor([[-big] * 4 + [1.0]]).expand(rows + _SUB, 5)))
    cols = cols.t().contiguous()
    thr = _threshold_in(threshold, b.dtype)
    chunk = max(_SUB, (budget // rows) // _SUB * _SUB)
    buffer = torch.empty(6 * rows * chunk, dtype=b.dtype, device=dev)
    views: dict[int, tuple[Tensor, ...]] = {}
    found: list[tuple[Tensor, Tensor, int, int]] = []
    pending = 0

    def flush() -> None:
        nonlocal found, pending
        counts = torch.tensor([f[0].shape[0] for f in found], device=dev)
        meta = torch.tensor([f[2:] for f in found], device=dev).repeat_interleave(counts, 0)
        cand = torch.cat([f[0] for f in found])
        k, member = torch.cat([f[1] for f in found]).nonzero(as_tuple=True)
        group, row = cand[k].unbind(1)
        row0, col0 = meta[k].unbind(1)
        r = row0 + row
        c = r + 1 + col0 + group * _SUB + member
        valid = c < end[r]
        i, j = pos[r[valid]], pos[c[valid]]
        if pair_filter is not None:
            keep = pair_filter(i, j)
            i, j = i[keep], j[keep]
        out.append((i, j))
        found, pending = [], 0

    for tile in range(tiles):
        r0 = tile * rows
        row_bounds = cols.as_strided((4, 1, rows), (length, 0, 1), r0)
        row_area = cols.as_strided((1, rows), (0, 1), 4 * length + r0)
        span = plan[tile]
        for k0 in range(0, span, chunk):
            width = -(-min(chunk, span - k0) // _SUB) * _SUB
            if width not in views:
                size = width * rows
                bounds = buffer[: 4 * size].view(4, width, rows)
                inter = buffer[4 * size : 5 * size].view(width, rows)
                union = buffer[5 * size : 6 * size].view(width, rows)
                views[width] = (
                    bounds,
                    bounds[0:2],
                    bounds[2:4],
                    inter,
                    union,
                    inter.view(width // _SUB, _SUB, rows),
                )
            bounds, overlap, neg_low, inter, union, grouped = views[width]
            offset = r0 + 1 + k0
            torch.minimum(
                row_bounds, cols.as_strided((4, width, rows), (length, 1, 1), offset), out=bounds
            )
            overlap.add_(neg_low).clamp_(min=0)  # min(x2) - max(x1), min(y2) - max(y1)
            torch.prod(overlap, 0, out=inter)
            col_area = cols.as_strided((width, rows), (1, 1), 4 * length + offset)
            torch.add(row_area, col_area, out=union).sub_(inter)
            inter.div_(union)  # the IoU
            cand = (grouped.amax(1) > thr).nonzero()
            if cand.shape[0] == 0:
                continue
            hits = grouped.transpose(1, 2)[cand[:, 0], cand[:, 1]] > thr
            found.append((cand, hits, r0, k0))
            pending += cand.shape[0]
            if pending >= _FLUSH:
                flush()
    if found:
        flush()
    return True


def _suppression_pairs(
    b: Tensor, area: Tensor, groups: Tensor | None, num_groups: int, threshold: float
) -> tuple[Tensor, Tensor]:
    """All pairs ``(i, j)``, ``i != j``, of one group whose IoU is ``> threshold``, once each.

    ``b`` holds boxes of positive finite area only, in the computation dtype.
    """
    m, dev = b.shape[0], b.device
    budget = _CUDA_TILE if dev.type == "cuda" else _CPU_TILE
    prep = _Prepared(b, area, threshold)
    out: list[tuple[Tensor, Tensor]] = []
    # y-bins pay off when boxes spread over many box heights. Boxes with IoU > t start
    # less than (1 - t) * (taller height) = h apart in y; with bins of height 2h on two
    # grids offset by h, every such pair shares a bin of one grid (counted on grid 0 when
    # it shares a grid-0 bin, else on grid 1). Tried only when the plain x-windows hold
    # many pairs.
    max_bins = min(_MAX_BINS, (1 << 62) // (num_groups * (m + 1)) - 2)
    if max_bins < 8 or _self_join(prep, groups, threshold, out, max_pairs=16 * budget):
        return _concat_pairs(out, dev)
    hmax, ymin, ymax = prep.y_stats()
    bin_height = (1.0 - prep.t) * hmax * (1.0 + 1e-6)
    span = ymax - ymin
    if not (bin_height > 0 and 8 * bin_height < span):
        _self_join(prep, groups, threshold, out)
        return _concat_pairs(out, dev)
    if span / bin_height > max_bins:
        bin_height = span / (max_bins - 1)  # coarser bins stay conservative
    u = (prep.y1 - ymin) / bin_height
    bin0 = torch.floor(u / 2).to(torch.int64)
    bin1 = torch.floor((u + 1) / 2).to(torch.int64)
    if groups is not None:
        nb = int(bin1.max()) + 2
        bin0, bin1 = groups * nb + bin0, groups * nb + bin1
    _self_join(prep, bin0, threshold, out)
    _self_join(prep, bin1, threshold, out, lambda i, j: bin0[i] != bin0[j])
    return _concat_pairs(out, dev)


def _concat_pairs(out: list[tuple[Tensor, Tensor]], dev: torch.device) -> tuple[Tensor, Tensor]:
    if not out:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        return empty, empty
    if len(out) == 1:
        return out[0]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def _resolve_block(alive: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Greedy result inside one block: the fixed point of ``kept = alive & ~(some kept
    src has an edge to it)``, reached by iterating (rounds: longest chain + 1)."""
    kept = alive
    while True:
        nxt = alive.clone()
        nxt[dst[kept[src]]] = False
        if torch.equal(nxt, kept):
            return kept
        kept = nxt


def _greedy_keep(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """Greedy suppression over edges ``src -> dst`` (score ranks, ``src < dst``).

    Returns a bool mask over ranks: rank ``r`` is kept when no kept rank ``< r`` has an
    edge to it. Ranks are resolved in blocks of ``_BLOCK``, in order.
    """
    dev = src.device
    everything = torch.ones(n, dtype=torch.bool, device=dev)
    if src.numel() == 0:
        return everything
    if n <= _BLOCK:
        return _resolve_block(everything, src, dst)
    src, order = torch.sort(src)
    dst = dst[order]
    keep = everything
    suppressed = torch.zeros(n, dtype=torch.bool, device=dev)
    bounds = torch.searchsorted(src, torch.arange(0, n + _BLOCK, _BLOCK, device=dev)).tolist()
    for block, a in enumerate(range(0, n, _BLOCK)):
        z = min(a + _BLOCK, n)
        e0, e1 = bounds[block], bounds[block + 1]
        alive = ~suppressed[a:z]
        if e0 == e1:
            keep[a:z] = alive
            continue
        s = src[e0:e1] - a
        d = dst[e0:e1]
        inner = d < z
        si, di = s[inner], d[inner] - a
        live = alive[si] & alive[di]
        kept = _resolve_block(alive, si[live], di[live]) if bool(live.any()) else alive
        keep[a:z] = kept
        outer = ~inner
        suppressed[d[outer][kept[s[outer]]]] = True
    return keep


def _nms_kept(boxes: Tensor, scores: Tensor, groups: Tensor | None, threshold: float) -> Tensor:
    """Indices of the kept boxes, by descending score, ties by index (validated inputs)."""
    n = boxes.shape[0]
    dev = boxes.device
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.detach().to(_compute_dtype(boxes.dtype))
    x1, y1, x2, y2 = b.unbind(1)
    width, height = x2 - x1, y2 - y1
    area = width * height
    # Boxes of zero, negative or non-finite area have IoU 0 with everything: no edges.
    proper = (torch.minimum(width, height) > 0) & (area > 0) & (area < math.inf)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=dev)
    sub_groups, num_groups = None, 1
    if bool(proper.all()):
        if groups is not None:
            sub_groups, num_groups = _dense_groups(groups)
        i, j = _suppression_pairs(b, area, sub_groups, num_groups, threshold)
        ri, rj = rank[i], rank[j]
    else:
        idx = proper.nonzero().squeeze(1)
        if idx.numel() < 2:
            return order
        if groups is not None:
            sub_groups, num_groups = _dense_groups(groups[idx])
        i, j = _suppression_pairs(b[idx], area[idx], sub_groups, num_groups, threshold)
        ri, rj = rank[idx[i]], rank[idx[j]]
    keep = _greedy_keep(torch.minimum(ri, rj), torch.maximum(ri, rj), n)
    return order[keep]


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
        * float16/bfloat16 work on every device (computed in float32, which holds their
          values exactly); torchvision's CPU kernel refuses them.

    Synchronizes with the host (the output length depends on the data): once for the NaN
    checks, when planning the tiles, at every tile (``nonzero``) and at every round of
    the greedy resolution. Inputs are never modified.

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
    op = "nms"
    _check_boxes_scores(op, boxes, scores, batched=False)
    _check_common(op, boxes, scores, iou_threshold)
    with torch.no_grad(), _one_intraop_thread(boxes.device):
        _check_finite_input(op, boxes, scores)
        if boxes.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=boxes.device)
        return _nms_kept(boxes, scores.detach(), None, float(iou_threshold))


def class_spec_nms(
    boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float
) -> Tensor:
    """Class-specific NMS: :func:`nms` per class, merged and sorted by score.

    Equal to running ``nms`` separately on the boxes of every class, mapping the kept
    indices back, and sorting all of them by descending score (ties: lower index first).
    Boxes of different classes never suppress each other. Classes are kept apart without
    the ``boxes + class_id * (max + 1)`` offset trick that ``torchvision.ops.batched_nms``
    (for up to 1000 boxes on CPU) and the course code use, so the result stays exact with
    negative coordinates (where ``max + 1 <= 0`` stacks classes on top of each other),
    with huge coordinates and in float16 (where the offset boxes are rounded).

    Synchronizes with the host like :func:`nms` (plus once to map the class ids).

    Args:
        boxes (Tensor[N, 4]): XYXY, absolute pixels, floating dtype.
        scores (Tensor[N]): same dtype and device as ``boxes``.
        class_ids (Tensor[N]): integer dtype (any values, negative ones included).
        iou_threshold (float): in ``[0, 1]``; suppression needs IoU ``> iou_threshold``.

    Returns:
        Tensor[K] int64: kept indices by descending score (ties: lower index first).
    """
    op = "class_spec_nms"
    _check_boxes_scores(op, boxes, scores, batched=False)
    _check_class_ids(op, class_ids, scores, "[N]")
    _check_common(op, boxes, scores, iou_threshold, class_ids=class_ids)
    with torch.no_grad(), _one_intraop_thread(boxes.device):
        _check_finite_input(op, boxes, scores)
        if boxes.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=boxes.device)
        classes = class_ids.to(torch.int64)
        return _nms_kept(boxes, scores.detach(), classes, float(iou_threshold))


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
    _check_boxes_scores(op, boxes, scores, batched=True)
    if class_ids is not None:
        _check_class_ids(op, class_ids, scores, "[B, N]")
    if max_detections is not None:
        if isinstance(max_detections, bool) or not isinstance(max_detections, int):
            raise TypeError(
                f"{op}: max_detections must be None or an int >= 0, "
                f"got {type(max_detections).__name__}"
            )
        if max_detections < 0:
            raise ValueError(f"{op}: max_detections must be >= 0, got {max_detections}")
    _check_common(op, boxes, scores, iou_threshold, class_ids=class_ids)
    num_images, n = scores.shape
    dev = boxes.device
    with torch.no_grad(), _one_intraop_thread(dev):
        _check_finite_input(op, boxes, scores)
        flat_scores = scores.detach().reshape(-1)
        cand = (flat_scores > -math.inf).nonzero().squeeze(1)
        if cand.numel() == 0 or max_detections == 0:
            return torch.full((num_images, 0), -1, dtype=torch.int64, device=dev)
        image = torch.div(cand, n, rounding_mode="floor")
        if class_ids is None:
            groups = image
        else:
            classes, num_classes = _dense_groups(class_ids.reshape(-1)[cand].to(torch.int64))
            groups = image * num_classes + classes
        kept = cand[
            _nms_kept(boxes.reshape(-1, 4)[cand], flat_scores[cand], groups, float(iou_threshold))
        ]
        kept_image, by_image = torch.sort(torch.div(kept, n, rounding_mode="floor"), stable=True)
        kept_index = kept[by_image] - kept_image * n
        counts = torch.bincount(kept_image, minlength=num_images)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(kept.numel(), device=dev) - starts[kept_image]
        width = int(counts.max())
        if max_detections is not None:
            width = min(width, max_detections)
        out = torch.full((num_images, width), -1, dtype=torch.int64, device=dev)
        fits = slot < width
        out[kept_image[fits], slot[fits]] = kept_index[fits]
        return out
