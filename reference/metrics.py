"""NumPy reference for detops.metrics, written from the protocols' descriptions.

``protocol="voc"``: the VOC devkit's ``VOCevaldet.m`` (stable score order, each detection
checks only its best GT, all-point AP). ``protocol="coco"``: pycocotools' ``COCOeval``
for boxes as its documentation and the COCO detection-eval page describe it: per image
and class the 100 best detections, greedy matching with crowd regions and area ranges,
101-point interpolated precision, maxDets 1/10/100.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- VOC


def _iou(a, b, plus_one=0.0):
    """IoU of two XYXY boxes; 0 when the union is empty. Inverted sides count as 0.

    ``plus_one`` is added to every width and height (the devkit's inclusive pixels)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + plus_one)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + plus_one)
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0] + plus_one) * max(0.0, a[3] - a[1] + plus_one)
    area_b = max(0.0, b[2] - b[0] + plus_one) * max(0.0, b[3] - b[1] + plus_one)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _average_precision(dets, gts_by_image, num_gt, threshold, plus_one):
    """AP of one class. ``dets``: list of (score, image, box) in input order;
    ``gts_by_image``: image -> boxes.

    As the devkit: a stable sort by descending score (ties keep input order); each
    detection looks only at its best GT (the first on IoU ties); precision and recall
    after every detection; AP sums recall steps times the precision envelope.
    """
    matched = {image: [False] * len(boxes) for image, boxes in gts_by_image.items()}
    ordered = sorted(dets, key=lambda d: -d[0])  # Python's sort is stable
    tp = fp = 0
    recalls, precisions = [], []
    for _, image, box in ordered:
        best, best_iou = -1, -1.0
        for j, gt in enumerate(gts_by_image.get(image, [])):
            value = _iou(box, gt, plus_one)
            if value > best_iou:  # strict: the first GT wins ties
                best, best_iou = j, value
        if best >= 0 and best_iou >= threshold and not matched[image][best]:
            matched[image][best] = True
            tp += 1
        else:
            fp += 1
        recalls.append(tp / num_gt)
        precisions.append(tp / (tp + fp))

    ap = 0.0
    previous_recall = 0.0
    for k in range(len(recalls)):
        if recalls[k] > previous_recall:
            ap += (recalls[k] - previous_recall) * max(precisions[k:])
            previous_recall = recalls[k]
    return ap


def _voc(detections, ground_truths, num_classes, thresholds, plus_one):
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
            table[t, c] = _average_precision(dets, gts_by_image, num_gt, threshold, plus_one)

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


# ---------------------------------------------------------------------------- COCO

_COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's, float64
_COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_COCO_AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
_COCO_MAX_DETS = (1, 10, 100)


def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2 - x1, y2 - y1)


def _coco_iou(det, gt, crowd):
    """IoU of XYWH boxes; overlap needs positive width and height; against a crowd
    region the denominator is the detection's own area."""
    w = min(det[0] + det[2], gt[0] + gt[2]) - max(det[0], gt[0])
    h = min(det[1] + det[3], gt[1] + gt[3]) - max(det[1], gt[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    det_area = det[2] * det[3]
    union = det_area if crowd else det_area + gt[2] * gt[3] - inter
    return inter / union


def _coco_match(ious, dets, gts, threshold, low, high):
    """One image and class at one IoU threshold and area range.

    ``ious[i][j]``: IoU of detection ``i`` with GT ``j``; ``dets``: (box, area) in score
    order (already cut to the 100 best); ``gts``: (box, area, crowd). Returns the outcome
    per detection ("tp", "fp" or "ignored").
    """
    gt_ignored = [crowd or area < low or area > high for _, area, crowd in gts]
    bar = min(threshold, 1 - 1e-10)
    taken = [False] * len(gts)
    outcome = []
    for i, (_, area) in enumerate(dets):
        best = None  # (GT is not ignored, IoU, GT index): the largest wins
        for j, (_, _, crowd) in enumerate(gts):
            if taken[j] and not crowd:
                continue  # a crowd region can absorb any number of detections
            if ious[i][j] < bar:
                continue
            candidate = (not gt_ignored[j], ious[i][j], j)
            if best is None or candidate > best:
                best = candidate
        if best is None:
            outcome.append("ignored" if area < low or area > high else "fp")
        else:
            taken[best[2]] = True
            outcome.append("tp" if best[0] else "ignored")
    return outcome


def _coco(detections, ground_truths, num_classes):
    T, R = len(_COCO_IOU_THRESHOLDS), len(_COCO_RECALL_POINTS)
    A, M = len(_COCO_AREA_RANGES), len(_COCO_MAX_DETS)
    precision = -np.ones((T, R, num_classes, A, M))
    recall = -np.ones((T, num_classes, A, M))
    eps = np.spacing(1.0)
    for c in range(num_classes):
        per_image = []  # (scores, dets, GT, IoU table) per image, detections in score order
        for det, gt in zip(detections, ground_truths, strict=True):
            rows = [k for k in range(len(det["labels"])) if int(det["labels"][k]) == c]
            rows.sort(key=lambda k: -float(det["scores"][k]))  # stable: input order on ties
            rows = rows[: _COCO_MAX_DETS[-1]]
            det_list = []
            for k in rows:
                box = _xywh(np.asarray(det["boxes"])[k])
                det_list.append((box, box[2] * box[3]))
            gt_list = []
            for j in range(len(gt["labels"])):
                if int(gt["labels"][j]) != c:
                    continue
                box = _xywh(np.asarray(gt["boxes"])[j])
                area = float(gt["area"][j]) if "area" in gt else box[2] * box[3]
                crowd = bool(gt["iscrowd"][j]) if "iscrowd" in gt else False
                gt_list.append((box, area, crowd))
            scores = [float(det["scores"][k]) for k in rows]
            ious = [[_coco_iou(d[0], g[0], g[2]) for g in gt_list] for d in det_list]
            per_image.append((scores, det_list, gt_list, ious))
        for a, (low, high) in enumerate(_COCO_AREA_RANGES):
            num_gt = sum(
                1
                for _, _, gt_list, _ in per_image
                for _, area, crowd in gt_list
                if not (crowd or area < low or area > high)
            )
            if num_gt == 0:
                continue  # the class has no GT to find here: -1, left out of the means
            for t, threshold in enumerate(_COCO_IOU_THRESHOLDS):
                outcomes = [
                    _coco_match(ious, det_list, gt_list, threshold, low, high)
                    for _, det_list, gt_list, ious in per_image
                ]
                for m, max_dets in enumerate(_COCO_MAX_DETS):
                    pooled = [
                        (scores[r], outcome[r])
                        for (scores, *_), outcome in zip(per_image, outcomes, strict=True)
                        for r in range(min(max_dets, len(scores)))
                    ]
                    pooled.sort(key=lambda e: -e[0])  # stable: image, then per-image order
                    tp = fp = 0
                    recalls, precisions = [], []
                    for _, outcome in pooled:
                        if outcome == "ignored":
                            continue
                        tp += outcome == "tp"
                        fp += outcome == "fp"
                        recalls.append(tp / num_gt)
                        precisions.append(tp / (fp + tp + eps))
                    recall[t, c, a, m] = tp / num_gt
                    for i in range(len(precisions) - 2, -1, -1):  # monotone from the right
                        precisions[i] = max(precisions[i], precisions[i + 1])
                    i = 0  # the first detection whose recall reaches the point; 0 if none
                    for r, point in enumerate(_COCO_RECALL_POINTS):
                        while i < len(recalls) and recalls[i] < point:
                            i += 1
                        precision[t, r, c, a, m] = precisions[i] if i < len(recalls) else 0.0

    def summary(values):
        valid = values[values > -1]
        return np.float64(valid.mean()) if valid.size else np.float64(-1.0)

    t50 = np.where(_COCO_IOU_THRESHOLDS == 0.5)[0]
    t75 = np.where(_COCO_IOU_THRESHOLDS == 0.75)[0]
    out = {
        "map": summary(precision[:, :, :, 0, 2]),
        "map_50": summary(precision[t50][:, :, :, 0, 2]),
        "map_75": summary(precision[t75][:, :, :, 0, 2]),
        "map_small": summary(precision[:, :, :, 1, 2]),
        "map_medium": summary(precision[:, :, :, 2, 2]),
        "map_large": summary(precision[:, :, :, 3, 2]),
        "mar_1": summary(recall[:, :, 0, 0]),
        "mar_10": summary(recall[:, :, 0, 1]),
        "mar_100": summary(recall[:, :, 0, 2]),
        "mar_small": summary(recall[:, :, 1, 2]),
        "mar_medium": summary(recall[:, :, 2, 2]),
        "mar_large": summary(recall[:, :, 3, 2]),
    }
    out["map_per_class"] = np.array(
        [summary(precision[:, :, c, 0, 2]) for c in range(num_classes)], dtype=np.float64
    )
    out["mar_100_per_class"] = np.array(
        [summary(recall[:, c, 0, 2]) for c in range(num_classes)], dtype=np.float64
    )
    out["precision"] = precision
    out["recall"] = recall
    out["iou_thresholds"] = _COCO_IOU_THRESHOLDS.copy()
    out["rec_thresholds"] = _COCO_RECALL_POINTS.copy()
    return out


def mean_average_precision(
    detections,
    ground_truths,
    num_classes,
    iou_threshold=0.5,
    *,
    protocol="voc",
    iou_thresholds=None,
    voc_plus_one=False,
):
    """``protocol="voc"``: VOC devkit AP per class and threshold, mean over classes with
    GT; keys ``map``, ``ap_per_class``, ``map_per_threshold``. ``protocol="coco"``:
    COCOeval's 12 numbers, per-class AP/AR, precision and recall arrays, float64.
    """
    num_classes = int(num_classes)
    if protocol == "coco":
        return _coco(detections, ground_truths, num_classes)
    if iou_thresholds is None:
        thresholds = [float(iou_threshold)]
    else:
        thresholds = [float(t) for t in iou_thresholds]
    return _voc(detections, ground_truths, num_classes, thresholds, 1.0 if voc_plus_one else 0.0)
