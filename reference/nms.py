"""NumPy reference for detops.nms.

Written from the contracts in the detops.nms docstrings, not from the fast code: the
textbook greedy loop, float64, NumPy only (never imports torch or detops). IoU comes from
``reference.boxes.box_iou`` (0 for a pair with zero union).

Coordinate contract: boxes are XYXY in absolute pixels.
"""

from __future__ import annotations

import numpy as np

from .boxes import box_iou


def nms(boxes, scores, iou_threshold):
    """Greedy NMS.

    Visit the boxes by descending score, equal scores lower index first. Keep a box unless
    its IoU with a box kept before it is greater than ``iou_threshold`` (equal is kept).

    Returns:
        int64 array [K]: the kept indices in the order they were kept.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    threshold = float(iou_threshold)
    iou = box_iou(boxes, boxes)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou[i, k] <= threshold for k in kept):
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def class_spec_nms(boxes, scores, class_ids, iou_threshold):
    """``nms`` on the boxes of each class separately; all kept indices merged and sorted by
    descending score, equal scores lower index first.

    Returns:
        int64 array [K].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    kept: list[int] = []
    for cls in sorted(set(class_ids.tolist())):
        members = [i for i in range(len(scores)) if class_ids[i] == cls]
        keep = nms(boxes[members], scores[members], iou_threshold)
        kept.extend(members[k] for k in keep)
    kept.sort(key=lambda i: (-scores[i], i))
    return np.array(kept, dtype=np.int64)


def batched_nms_per_image(boxes, scores, class_ids, iou_threshold, *, max_detections=None):
    """Per image ``b``: the candidates whose score is not -inf go through ``class_spec_nms``
    (``nms`` when ``class_ids`` is None); the kept indices (into the image's N boxes) are
    cut to ``max_detections`` and written to row ``b``.

    Returns:
        int64 array [B, K], padded with -1; K is the longest row (0 when nothing is kept).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    limit = None if max_detections is None else int(max_detections)
    rows = []
    for b in range(scores.shape[0]):
        candidates = [i for i in range(scores.shape[1]) if scores[b, i] != -np.inf]
        if class_ids is None:
            keep = nms(boxes[b, candidates], scores[b, candidates], iou_threshold)
        else:
            classes = np.asarray(class_ids)[b, candidates]
            keep = class_spec_nms(
                boxes[b, candidates], scores[b, candidates], classes, iou_threshold
            )
        row = [candidates[k] for k in keep]
        rows.append(row if limit is None else row[:limit])
    width = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out
