"""NumPy reference for detops.metrics, written from the docstring's contract."""

from __future__ import annotations

import numpy as np


def _iou(a, b):
    """IoU of two XYXY boxes; 0 when the union is empty. Inverted sides count as 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _average_precision(dets, gts_by_image, num_gt, threshold):
    """AP of one class. ``dets``: list of (score, image, box); ``gts_by_image``: image -> boxes.

    Walks the detections from the highest score down; after each distinct score records
    (recall, precision); then sums recall steps times the precision envelope.
    """
    matched = {image: [False] * len(boxes) for image, boxes in gts_by_image.items()}
    ordered = sorted(dets, key=lambda d: -d[0])  # ties: any order gives the same points
    tp = fp = 0
    recalls, precisions = [], []
    i = 0
    while i < len(ordered):
        score = ordered[i][0]
        while i < len(ordered) and ordered[i][0] == score:
            _, image, box = ordered[i]
            candidates = gts_by_image.get(image, [])
            best, best_iou = -1, -1.0
            for j, gt in enumerate(candidates):
                value = _iou(box, gt)
                if value > best_iou:  # strict: the first GT wins ties
                    best, best_iou = j, value
            if best >= 0 and best_iou >= threshold and not matched[image][best]:
                matched[image][best] = True
                tp += 1
            else:
                fp += 1
            i += 1
        recalls.append(tp / num_gt)
        precisions.append(tp / (tp + fp))

    ap = 0.0
    previous_recall = 0.0
    for k in range(len(recalls)):
        if recalls[k] > previous_recall:
            ap += (recalls[k] - previous_recall) * max(precisions[k:])
            previous_recall = recalls[k]
    return ap


def mean_average_precision(
    detections, ground_truths, num_classes, iou_threshold=0.5, *, iou_thresholds=None
):
    """VOC all-point AP per class and threshold; mean over classes that have GT.

    Returns float64 arrays under the same keys as detops: ``map``, ``ap_per_class``,
    ``map_per_threshold``.
    """
    num_classes = int(num_classes)
    if iou_thresholds is None:
        thresholds = [float(iou_threshold)]
    else:
        thresholds = [float(t) for t in iou_thresholds]
    table = np.full((len(thresholds), num_classes), np.nan)
    for c in range(num_classes):
        gts_by_image = {}
        for image, gt in enumerate(ground_truths):
            boxes = [
                [float(v) for v in np.asarray(gt["boxes"])[j]]
                for j in range(len(gt["labels"]))
                if int(gt["labels"][j]) == c
            ]
            gts_by_image[image] = boxes
        num_gt = sum(len(b) for b in gts_by_image.values())
        if num_gt == 0:
            continue
        dets = []
        for image, det in enumerate(detections):
            for k in range(len(det["labels"])):
                if int(det["labels"][k]) == c:
                    box = [float(v) for v in np.asarray(det["boxes"])[k]]
                    dets.append((float(det["scores"][k]), image, box))
        for t, threshold in enumerate(thresholds):
            table[t, c] = _average_precision(dets, gts_by_image, num_gt, threshold)

    with np.errstate(invalid="ignore"):
        has_gt = ~np.isnan(table[0])
        if has_gt.any():
            per_threshold = np.array([row[has_gt].mean() for row in table])
        else:
            per_threshold = np.full(len(thresholds), np.nan)
        per_class = table.mean(axis=0)
    return {
        "map": np.float64(per_threshold.mean()),
        "ap_per_class": per_class,
        "map_per_threshold": per_threshold,
    }
