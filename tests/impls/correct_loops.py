"""A second correct implementation of the course's ten functions, written independently of
``correct.py``: plain Python loops over ``.tolist()`` values (double-precision arithmetic on
the numbers the function received; the focal loss in the input's precision, float32 scalars
for float32 inputs), results returned in the input dtype.

``python -m detops verify --impl tests/impls/correct_loops.py`` gives no FAIL.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    result = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = int(shape[-2]), int(shape[-1])
        stride = strides_per_fpn_level[level]
        rows = []
        for h in range(height):
            for w in range(width):
                rows.append([stride * (w + 0.5), stride * (h + 0.5)])
        result[level] = torch.tensor(rows, dtype=dtype, device=device).reshape(-1, 2)
    return result


def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    levels = sorted(locations_per_fpn_level, key=lambda name: strides_per_fpn_level[name])
    boxes = gt_boxes.tolist()
    matched = {}
    for level, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        low = 0.0 if level == levels[0] else 4.0 * stride
        high = math.inf if level == levels[-1] else 8.0 * stride
        rows = []
        for x, y in centers.tolist():
            best, best_area = None, math.inf
            for index, (x1, y1, x2, y2, cls) in enumerate(boxes):
                if cls == -1:
                    continue
                left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y
                if min(left, top, right, bottom) <= 0:
                    continue
                m = max(left, top, right, bottom)
                if not (low < m < high):
                    continue
                area = (x2 - x1) * (y2 - y1)
                if area < best_area:
                    best, best_area = index, area
            rows.append(boxes[best] if best is not None else [-1.0] * 5)
        matched[level] = torch.tensor(rows, dtype=gt_boxes.dtype, device=gt_boxes.device).reshape(
            -1, 5
        )
    return matched


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    rows = []
    for (x, y), box in zip(locations.tolist(), gt_boxes.tolist(), strict=True):
        x1, y1, x2, y2 = box[:4]
        if x1 == y1 == x2 == y2 == -1:
            rows.append([-1.0] * 4)
        else:
            rows.append(
                [(x - x1) / stride, (y - y1) / stride, (x2 - x) / stride, (y2 - y) / stride]
            )
    return torch.tensor(rows, dtype=locations.dtype, device=locations.device).reshape(-1, 4)


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    rows = []
    for (left, top, right, bottom), (x, y) in zip(deltas.tolist(), locations.tolist(), strict=True):
        left, top, right, bottom = (max(v, 0.0) * stride for v in (left, top, right, bottom))
        rows.append([x - left, y - top, x + right, y + bottom])
    return torch.tensor(rows, dtype=deltas.dtype, device=deltas.device).reshape(-1, 4)


def fcos_make_centerness_targets(deltas):
    values = []
    for left, top, right, bottom in deltas.tolist():
        if min(left, top, right, bottom) < 0:
            values.append(-1.0)
            continue
        denominator = max(left, right) * max(top, bottom)
        if denominator == 0:
            values.append(0.0)
        else:
            values.append(math.sqrt(min(left, right) * min(top, bottom) / denominator))
    return torch.tensor(values, dtype=deltas.dtype, device=deltas.device)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou(boxes1, boxes2):
    second = boxes2.tolist()
    rows = [[_iou(a, b) for b in second] for a in boxes1.tolist()]
    return torch.tensor(rows, dtype=boxes1.dtype, device=boxes1.device).reshape(
        len(boxes1), len(boxes2)
    )


def clip_boxes_to_image(boxes, size):
    height, width = size
    rows = []
    for x1, y1, x2, y2 in boxes.tolist():
        rows.append(
            [
                min(max(x1, 0.0), width),
                min(max(y1, 0.0), height),
                min(max(x2, 0.0), width),
                min(max(y2, 0.0), height),
            ]
        )
    return torch.tensor(rows, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4)


def _greedy(boxes, scores, iou_threshold, classes=None):
    if any(math.isnan(s) for s in scores):
        raise ValueError("nms: NaN score")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(
            (classes is not None and classes[i] != classes[k])
            or _iou(boxes[i], boxes[k]) <= iou_threshold
            for k in keep
        ):
            keep.append(i)
    return keep


def nms(boxes, scores, iou_threshold=0.5):
    keep = _greedy(boxes.tolist(), scores.tolist(), float(iou_threshold))
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    keep = _greedy(boxes.tolist(), scores.tolist(), float(iou_threshold), class_ids.tolist())
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    # A naive loop in the precision of the inputs (float32 scalars for float32 inputs):
    # the textbook formula with log(1 + e^-|x|), which keeps both logs finite at any logit.
    real = np.float64 if inputs.dtype == torch.float64 else np.float32
    one, a, g = real(1), real(alpha), real(gamma)
    losses = []
    for x, t in zip(inputs.reshape(-1).tolist(), targets.reshape(-1).tolist(), strict=True):
        x, t = real(x), real(t)
        with np.errstate(over="ignore"):
            ce = max(x, real(0)) - x * t + np.log1p(np.exp(-abs(x)))
            p = one / (one + np.exp(-x))
        p_t = p * t + (one - p) * (one - t)
        loss = ce * (one - p_t) ** g
        if alpha >= 0:
            loss = (a * t + (one - a) * (one - t)) * loss
        losses.append(loss)
    out_dtype = torch.float32 if inputs.dtype in (torch.float16, torch.bfloat16) else inputs.dtype
    values = np.array(losses, dtype=real)
    if reduction == "mean":
        value = values.sum(dtype=real) / real(len(losses)) if losses else real(0)
        return torch.tensor(value, dtype=out_dtype, device=inputs.device)
    if reduction == "sum":
        return torch.tensor(values.sum(dtype=real), dtype=out_dtype, device=inputs.device)
    return torch.tensor(values, dtype=out_dtype, device=inputs.device).reshape(inputs.shape)
