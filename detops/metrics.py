"""Detection mean average precision: VOC all-point interpolation, optional COCO IoU range."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ._checks import check_tensor, shape_str
from ._serial import owner_index

__all__ = ["COCO_IOU_THRESHOLDS", "mean_average_precision", "gt_dicts_from_padded"]

_OP = "mean_average_precision"

#: IoU 0.50, 0.55, ..., 0.95: the COCO ``mAP@[.5:.95]`` thresholds.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _check_image_dict(
    op: str, arg: str, index: int, item: object, keys: tuple[str, ...]
) -> dict[str, Tensor]:
    where = f"{arg}[{index}]"
    if not isinstance(item, Mapping):
        raise TypeError(
            f"{op}: {where} must be a dict with keys {list(keys)}, got {type(item).__name__}"
        )
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{op}: {where} must have keys {list(keys)}, got {sorted(item)}")
    out = {k: check_tensor(op, f"{where}[{k!r}]", item[k]) for k in keys}
    boxes = out["boxes"]
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: {where}['boxes'] must have shape [K, 4], got {shape_str(boxes)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{op}: {where}['boxes'] must have a floating dtype, got {boxes.dtype}")
    count = boxes.shape[0]
    labels = out["labels"]
    if labels.dim() != 1 or labels.shape[0] != count:
        raise ValueError(
            f"{op}: {where}['labels'] must have shape [{count}] (one per box), "
            f"got {shape_str(labels)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{op}: {where}['labels'] must have an integer dtype, got {labels.dtype}")
    if "scores" in out:
        scores = out["scores"]
        if scores.dim() != 1 or scores.shape[0] != count:
            raise ValueError(
                f"{op}: {where}['scores'] must have shape [{count}] (one per box), "
                f"got {shape_str(scores)}"
            )
        if not scores.is_floating_point():
            raise TypeError(
                f"{op}: {where}['scores'] must have a floating dtype, got {scores.dtype}"
            )
    return out


def _group_starts(keys: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per key value in ``[0, size)``: where its run starts in ``sort(keys)`` and its count."""
    counts = torch.bincount(keys, minlength=size)
    return torch.cumsum(counts, 0) - counts, counts


def _pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b`` (float64); 0 where the union is 0."""
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def mean_average_precision(
    detections: Sequence[Mapping[str, Tensor]],
    ground_truths: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    *,
    iou_thresholds: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Mean average precision over classes, VOC all-point interpolation.

    Inputs follow torchmetrics' ``MeanAveragePrecision`` convention: one dict per image,
    ``detections[i] = {"boxes": Tensor[K, 4], "labels": Tensor[K], "scores": Tensor[K]}``
    and ``ground_truths[i] = {"boxes": Tensor[G, 4], "labels": Tensor[G]}``; boxes are
    XYXY in the same absolute pixel frame, labels integers in ``[0, num_classes)``.
    Padded GT (rows of -1) must be removed first (:func:`gt_dicts_from_padded`).

    Per class and IoU threshold ``t``:

    1. Detections of the class, over all images, are sorted by score (descending).
    2. Each detection is compared with the GT of its own image and class and picks the GT
       of highest IoU (the first such GT on ties), as the VOC devkit does. It is a true
       positive if that IoU is ``>= t`` and no higher-scored detection took that GT
       already; otherwise it is a false positive (so duplicates are false positives, and
       a detection is not re-assigned to its second-best GT, unlike COCO's matcher).
       Each GT is matched at most once. Among equal scores the input order (image, then
       row) decides which detection takes a GT; step 3 makes the AP independent of it.
       One consequence of the VOC rule: of two identical GT boxes of one class in one
       image, only the first can be matched.
    3. Precision and recall are taken after each distinct score, so detections with equal
       scores enter together and the result does not depend on their order (nor on the
       order of images). Recall counts every GT of the class, including those in images
       with no detection at all.
    4. AP = sum over recall steps of ``(r_k - r_{k-1}) * max_{k' >= k} p_{k'}`` (the
       precision envelope, "all-point interpolation", VOC 2010+).

    A class with GT but no detection has AP 0. A class without GT has AP NaN and is left
    out of the mean (its detections are not penalized anywhere). The mean over an IoU
    range (``iou_thresholds``) is the mean of the per-threshold means.

    IoU is computed in float64, only for (detection, GT) pairs of the same image and
    class; a pair whose union is 0 has IoU 0. Memory is linear in the detections, the GT,
    those pairs, and ``num_images * num_classes``. A box with ``x2 < x1`` or ``y2 < y1``
    has zero area.

    Args:
        detections (list[dict]): per image, ``boxes [K, 4]`` (float), ``labels [K]``
            (integer), ``scores [K]`` (float, higher is more confident). ``K`` may be 0.
        ground_truths (list[dict]): per image, ``boxes [G, 4]`` and ``labels [G]``; same
            length as ``detections``. ``G`` may be 0.
        num_classes (int): number of classes ``C``.
        iou_threshold (float): the IoU a true positive needs (``>=``), in [0, 1].
        iou_thresholds (sequence of float, optional): several thresholds, each in [0, 1]; it
            replaces ``iou_threshold``. :data:`COCO_IOU_THRESHOLDS` gives COCO's
            ``mAP@[.5:.95]``.

    Returns:
        dict[str, Tensor]: on the inputs' device, in the dtype of the detection scores
        (float32 when there are no images):

        - ``"map"`` (scalar): mean over thresholds of the mean AP over classes with GT;
          NaN when no class has GT.
        - ``"ap_per_class"`` ``[C]``: per class, AP averaged over the thresholds (NaN for a
          class without GT).
        - ``"map_per_threshold"`` ``[T]``: the mean AP at each threshold.

    Raises:
        TypeError, ValueError: malformed dicts, a label outside ``[0, C)``, NaN boxes or
            scores, a threshold outside [0, 1].

    Note:
        Syncs with the device a handful of times (the validation flags, and the sizes of
        the index tensors: image ownership and candidate pairs). Work is vectorized over
        all detections and pairs; the only Python loop is the per-image concatenation of
        the input lists.
    """
    if not isinstance(detections, Sequence) or isinstance(detections, (str, bytes, Mapping)):
        raise TypeError(
            f"{_OP}: detections must be a list of dicts, got {type(detections).__name__}"
        )
    if not isinstance(ground_truths, Sequence) or isinstance(ground_truths, (str, bytes, Mapping)):
        raise TypeError(
            f"{_OP}: ground_truths must be a list of dicts, got {type(ground_truths).__name__}"
        )
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"{_OP}: detections and ground_truths must list the same images, got "
            f"{len(detections)} and {len(ground_truths)} entries"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"{_OP}: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"{_OP}: num_classes must be >= 1, got {num_classes}")
    thresholds = (iou_threshold,) if iou_thresholds is None else tuple(iou_thresholds)
    name = "iou_threshold" if iou_thresholds is None else "iou_thresholds"
    if not thresholds:
        raise ValueError(f"{_OP}: iou_thresholds must hold at least one threshold, got ()")
    for value in thresholds:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{_OP}: {name} must be floats in [0, 1], got {value!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{_OP}: {name} must lie in [0, 1], got {value}")

    dets = [
        _check_image_dict(_OP, "detections", i, d, ("boxes", "labels", "scores"))
        for i, d in enumerate(detections)
    ]
    gts = [
        _check_image_dict(_OP, "ground_truths", i, g, ("boxes", "labels"))
        for i, g in enumerate(ground_truths)
    ]
    num_images = len(dets)
    if num_images:
        device = dets[0]["boxes"].device
        out_dtype = dets[0]["scores"].dtype
    else:
        device, out_dtype = torch.device("cpu"), torch.float32
    devices = {t.device for item in dets + gts for t in item.values()}
    if len(devices) > 1:
        raise ValueError(
            f"{_OP}: all tensors must be on one device, got {sorted(map(str, devices))}"
        )

    f64, i64 = torch.float64, torch.int64

    def cat(items, key, dtype, width=None):
        if not items:
            return torch.zeros((0, width) if width else (0,), dtype=dtype, device=device)
        return torch.cat([item[key] for item in items]).to(dtype)

    det_boxes = cat(dets, "boxes", f64, 4)
    det_labels = cat(dets, "labels", i64)
    det_scores = cat(dets, "scores", f64)
    det_counts = torch.tensor([d["boxes"].shape[0] for d in dets], dtype=i64, device=device)
    det_image = owner_index(det_counts)
    gt_boxes = cat(gts, "boxes", f64, 4)
    gt_labels = cat(gts, "labels", i64)
    gt_counts = torch.tensor([g["boxes"].shape[0] for g in gts], dtype=i64, device=device)
    gt_image = owner_index(gt_counts)

    # Validation: one sync for all checks.
    bad = torch.stack(
        [
            ((det_labels < 0) | (det_labels >= num_classes)).any(),
            ((gt_labels < 0) | (gt_labels >= num_classes)).any(),
            det_boxes.isnan().any(),
            gt_boxes.isnan().any(),
            det_scores.isnan().any(),
        ]
    ).tolist()
    messages = (
        f"detections labels must lie in [0, {num_classes})",
        f"ground_truths labels must lie in [0, {num_classes}) (remove padding rows of -1)",
        "detections boxes must not contain NaN",
        "ground_truths boxes must not contain NaN",
        "detections scores must not contain NaN",
    )
    for flag, message in zip(bad, messages, strict=True):
        if flag:
            raise ValueError(f"{_OP}: {message}, got a tensor that does not")

    num_dets, num_gts = det_boxes.shape[0], gt_boxes.shape[0]
    thr = torch.tensor(thresholds, dtype=f64, device=device)
    num_thr = thr.shape[0]
    gt_per_class = torch.bincount(gt_labels, minlength=num_classes).to(f64)

    # 1. Candidate (detection, GT) pairs: same image and same class. The GT are sorted on
    #    the key image * C + class; a detection's candidates are the run of its own key.
    det_key = det_image * num_classes + det_labels
    gt_key = gt_image * num_classes + gt_labels
    gt_order = torch.sort(gt_key, stable=True).indices
    key_start, key_count = _group_starts(gt_key, max(num_images, 1) * num_classes)
    start, counts = key_start.index_select(0, det_key), key_count.index_select(0, det_key)
    pair_det = owner_index(counts)
    first_pair = torch.cumsum(counts, 0) - counts
    within = torch.arange(pair_det.shape[0], device=device) - first_pair.index_select(0, pair_det)
    pair_gt = gt_order.index_select(0, start.index_select(0, pair_det) + within)
    iou = _pair_iou(det_boxes.index_select(0, pair_det), gt_boxes.index_select(0, pair_gt))

    # 2. Each detection's best GT: highest IoU, lowest GT index among ties.
    best_iou = torch.full((num_dets,), -1.0, dtype=f64, device=device)
    best_iou = best_iou.scatter_reduce(0, pair_det, iou, "amax", include_self=True)
    is_best = iou == best_iou.index_select(0, pair_det)
    best_gt = torch.full((num_dets,), num_gts, dtype=i64, device=device)
    best_gt = best_gt.scatter_reduce(
        0, pair_det, torch.where(is_best, pair_gt, num_gts), "amin", include_self=True
    )

    # 3. Sort by class, then score descending (stable: ties keep input order).
    by_score = torch.sort(det_scores, descending=True, stable=True).indices
    by_label = torch.sort(det_labels.index_select(0, by_score), stable=True).indices
    order = by_score.index_select(0, by_label)
    labels_s, scores_s = det_labels.index_select(0, order), det_scores.index_select(0, order)
    best_iou_s, best_gt_s = best_iou.index_select(0, order), best_gt.index_select(0, order)
    position = torch.arange(num_dets, device=device)

    # 4. True positives: the first detection (in sorted order) that claims a GT with
    #    IoU >= t. Claims are keyed by (threshold, GT) so all thresholds go in one pass.
    claims = best_iou_s.unsqueeze(0) >= thr.unsqueeze(1)  # [T, D]
    claim_key = torch.arange(num_thr, device=device).unsqueeze(1) * (num_gts + 1) + best_gt_s
    first_claim = torch.full((num_thr * (num_gts + 1),), num_dets, dtype=i64, device=device)
    claimant = torch.where(claims, position, num_dets).reshape(-1)
    first_claim = first_claim.scatter_reduce(0, claim_key.reshape(-1), claimant, "amin")
    tp = claims & (first_claim.index_select(0, claim_key.reshape(-1)).view_as(claims) == position)

    # 5. Precision at every detection, within its class.
    class_start = _group_starts(labels_s, num_classes)[0].index_select(0, labels_s)
    cum_tp = torch.cumsum(tp.to(f64), dim=1)
    before = cum_tp - tp.to(f64)  # TPs strictly before each position
    cum_tp_class = cum_tp - before.index_select(1, class_start)
    precision = cum_tp_class / (position - class_start + 1).to(f64)

    # 6. Curve points only at the last detection of each (class, score) group; envelope
    #    = max precision over points at or after a position within the class (reverse,
    #    segmented cummax: an offset that grows by 2 per class keeps classes apart, and the
    #    returned indices pick the exact precision back out).
    group_end = torch.ones(num_dets, dtype=torch.bool, device=device)
    if num_dets > 1:
        group_end[:-1] = (labels_s[1:] != labels_s[:-1]) | (scores_s[1:] != scores_s[:-1])
    points = torch.where(group_end, precision, torch.full_like(precision, -1.0))
    offset = 2.0 * (num_classes - 1 - labels_s).to(f64)
    flipped = torch.flip(points + offset, dims=[1])
    if num_dets:
        _, arg = torch.cummax(flipped, dim=1)
        envelope = torch.flip(torch.gather(torch.flip(points, dims=[1]), 1, arg), dims=[1])
    else:
        envelope = points

    # 7. Every TP adds 1 / n_gt of recall at its group's envelope precision.
    contribution = torch.where(tp, envelope, torch.zeros_like(envelope))
    ap_sum = torch.zeros((num_thr, num_classes), dtype=f64, device=device)
    ap_sum = ap_sum.index_add(1, labels_s, contribution)
    has_gt = gt_per_class > 0
    ap = torch.where(has_gt, ap_sum / gt_per_class.clamp(min=1), torch.full_like(ap_sum, torch.nan))
    map_per_threshold = (
        ap.nanmean(dim=1)
        if bool(has_gt.any())
        else torch.full((num_thr,), torch.nan, dtype=f64, device=device)
    )
    return {
        "map": map_per_threshold.mean().to(out_dtype),
        "ap_per_class": ap.mean(dim=0).to(out_dtype),
        "map_per_threshold": map_per_threshold.to(out_dtype),
    }


def gt_dicts_from_padded(gt_boxes: Tensor) -> list[dict[str, Tensor]]:
    """Padded GT ``[B, N, 5]`` (rows of -1 are padding) to per-image dicts for the metric.

    Args:
        gt_boxes (Tensor[B, N, 5]): ``(x1, y1, x2, y2, class)`` rows as the datasets
            return them; a row whose class is -1 is padding and is dropped.

    Returns:
        list[dict[str, Tensor]]: per image, ``boxes [G, 4]`` (dtype of ``gt_boxes``) and
        ``labels [G]`` (int64).
    """
    op = "gt_dicts_from_padded"
    check_tensor(op, "gt_boxes", gt_boxes)
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 5:
        raise ValueError(f"{op}: gt_boxes must have shape [B, N, 5], got {shape_str(gt_boxes)}")
    keep = gt_boxes[..., 4] != -1
    return [
        {"boxes": rows[mask, :4], "labels": rows[mask, 4].to(torch.int64)}
        for rows, mask in zip(gt_boxes, keep, strict=True)
    ]
