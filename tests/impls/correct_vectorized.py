"""A third correct implementation of the course's ten functions, vectorized and computed in
the input dtype (float32 arithmetic for float32 inputs), with the textbook formulas as a
student writes them: no float64 detour, no guards beyond what the course's data needs.

It departs from detops (DEPARTS, not FAIL) where detops goes further than the course: a
NaN IoU for a zero union, a NaN centerness at a zero denominator, a NaN mean over an empty
input, NaN scores accepted. ``python -m detops verify --impl
tests/impls/correct_vectorized.py`` gives no FAIL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    coords = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2:]
        stride = strides_per_fpn_level[level]
        xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) * stride
        ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) * stride
        coords[level] = torch.stack([xs.repeat(height), ys.repeat_interleave(width)], dim=1)
    return coords


def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    levels = sorted(locations_per_fpn_level, key=lambda name: strides_per_fpn_level[name])
    matched = {}
    for level, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        low = 0 if level == levels[0] else 4 * stride
        high = float("inf") if level == levels[-1] else 8 * stride
        xy = centers[:, None, :]  # [L, 1, 2]
        ltrb = torch.cat([xy - gt_boxes[None, :, :2], gt_boxes[None, :, 2:4] - xy], dim=2)
        largest = ltrb.amax(dim=2)
        ok = (ltrb.amin(dim=2) > 0) & (largest > low) & (largest < high)
        ok &= gt_boxes[None, :, 4] != -1
        area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        cost = torch.where(ok, area[None, :], torch.full_like(largest, float("inf")))
        if cost.shape[1] == 0:
            matched[level] = gt_boxes.new_full((centers.shape[0], 5), -1)
            continue
        best = cost.argmin(dim=1)
        found = ok.any(dim=1)
        matched[level] = torch.where(found[:, None], gt_boxes[best], gt_boxes.new_tensor(-1.0))
    return matched


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    boxes = gt_boxes[:, :4]
    deltas = torch.cat([locations - boxes[:, :2], boxes[:, 2:] - locations], dim=1) / stride
    background = (boxes == -1).all(dim=1, keepdim=True)
    return deltas.masked_fill(background, -1.0)


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    scaled = deltas.clamp(min=0) * stride
    return torch.cat([locations - scaled[:, :2], locations + scaled[:, 2:]], dim=1)


def fcos_make_centerness_targets(deltas):
    left, top, right, bottom = deltas.unbind(dim=1)
    lr = torch.minimum(left, right) / torch.maximum(left, right)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    centerness = torch.sqrt(lr * tb)
    return torch.where((deltas == -1).all(dim=1), torch.full_like(centerness, -1), centerness)


def box_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes_to_image(boxes, size):
    height, width = size
    upper = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), upper)


def nms(boxes, scores, iou_threshold=0.5):
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(scores), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    kept = [
        torch.nonzero(class_ids == c).reshape(-1)[
            nms(boxes[class_ids == c], scores[class_ids == c], iou_threshold)
        ]
        for c in class_ids.unique()
    ]
    keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # Score order; equal scores by index (sort the indices first, then a stable sort).
    keep = keep.sort().values
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    x = inputs.float() if inputs.dtype in (torch.float16, torch.bfloat16) else inputs
    t = targets.to(x.dtype)
    ce = -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
