"""NumPy reference for detops.inference.

Written from the contract of ``detops.fcos_inference``: one image, one level, one
location at a time, float64, NumPy only. Decoding and NMS come from the references of
detops.deltas and detops.nms.
"""

from __future__ import annotations

import math

import numpy as np

from .deltas import fcos_apply_deltas_to_locations
from .nms import class_spec_nms


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fcos_inference(
    locations_per_fpn_level,
    strides_per_fpn_level,
    pred_cls_logits,
    pred_boxreg_deltas,
    pred_ctr_logits,
    image_size,
    score_thresh=0.3,
    nms_thresh=0.5,
    *,
    topk_candidates=None,
    max_detections=None,
):
    """Per image: per level and location, score ``sqrt(sigmoid(cls) * sigmoid(ctr))`` of
    every class; the best class (lowest id among equal scores); a candidate when that score
    is ``> score_thresh``; optionally the ``topk_candidates`` best candidates of the level
    (equal scores: lower location first), in location order; the box decoded with the
    level's stride and clipped to x in [0, W], y in [0, H]. Then class-specific NMS over
    all levels, kept boxes by descending score (ties: lower candidate index), the first
    ``max_detections``.

    Returns:
        list of ``(boxes [K, 4] float64, classes [K] int64, scores [K] float64)``, one per
        image.
    """
    height, width = image_size
    levels = list(locations_per_fpn_level)
    batch = np.asarray(pred_cls_logits[levels[0]]).shape[0]
    results = []
    for b in range(batch):
        boxes, classes, scores = [], [], []
        for level in levels:
            locations = np.asarray(locations_per_fpn_level[level], dtype=np.float64)
            cls = np.asarray(pred_cls_logits[level], dtype=np.float64)[b]
            ctr = np.asarray(pred_ctr_logits[level], dtype=np.float64)[b]
            deltas = np.asarray(pred_boxreg_deltas[level], dtype=np.float64)[b]
            candidates = []  # (location, class, score)
            for i in range(len(locations)):
                centerness = _sigmoid(ctr[i, 0])
                class_scores = [math.sqrt(_sigmoid(c) * centerness) for c in cls[i]]
                best = max(range(len(class_scores)), key=lambda c: (class_scores[c], -c))
                if class_scores[best] > score_thresh:
                    candidates.append((i, best, class_scores[best]))
            if topk_candidates is not None:
                candidates = sorted(candidates, key=lambda cand: (-cand[2], cand[0]))
                candidates = sorted(candidates[:topk_candidates])
            for i, best, score in candidates:
                box = fcos_apply_deltas_to_locations(
                    deltas[i : i + 1], locations[i : i + 1], strides_per_fpn_level[level]
                )[0]
                x1, y1, x2, y2 = box
                boxes.append(
                    (
                        min(max(x1, 0.0), width),
                        min(max(y1, 0.0), height),
                        min(max(x2, 0.0), width),
                        min(max(y2, 0.0), height),
                    )
                )
                classes.append(best)
                scores.append(score)
        boxes_np = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        classes_np = np.array(classes, dtype=np.int64)
        scores_np = np.array(scores, dtype=np.float64)
        keep = class_spec_nms(boxes_np, scores_np, classes_np, nms_thresh)
        if max_detections is not None:
            keep = keep[:max_detections]
        results.append((boxes_np[keep], classes_np[keep], scores_np[keep]))
    return results
