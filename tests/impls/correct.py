"""A correct implementation of the course's ten functions, written as a course student would:
per image, with the course code's signatures, plain torch, no detops.

``python -m detops verify --impl tests/impls/correct.py`` passes. It is written from the
contracts in the issues (not from detops' code), so it also cross-checks the references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    coords = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2], shape[-1]
        stride = strides_per_fpn_level[level]
        ys = (torch.arange(height, dtype=torch.float64, device=device) + 0.5) * stride
        xs = (torch.arange(width, dtype=torch.float64, device=device) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords[level] = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1).to(dtype)
    return coords


def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    order = sorted(locations_per_fpn_level, key=lambda level: strides_per_fpn_level[level])
    gt = gt_boxes.to(torch.float64)
    matched = {}
    for level, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        low = 0.0 if level == order[0] else 4.0 * stride
        high = float("inf") if level == order[-1] else 8.0 * stride
        out = torch.full((centers.shape[0], 5), -1.0, dtype=gt_boxes.dtype, device=gt_boxes.device)
        if gt.shape[0] == 0 or centers.shape[0] == 0:
            matched[level] = out
            continue
        c = centers.to(torch.float64)
        x, y = c[:, 0:1], c[:, 1:2]
        dist = torch.stack(
            [x - gt[None, :, 0], y - gt[None, :, 1], gt[None, :, 2] - x, gt[None, :, 3] - y],
            dim=2,
        )
        m = dist.max(dim=2).values
        ok = (dist.min(dim=2).values > 0) & (m > low) & (m < high) & (gt[None, :, 4] != -1)
        area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        key = torch.where(ok, area[None, :].expand_as(m), torch.full_like(m, float("inf")))
        best = key.argmin(dim=1)  # first minimum: equal areas go to the lowest index
        hit = ok.any(dim=1)
        out[hit] = gt_boxes[best[hit]]
        matched[level] = out
    return matched


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    x, y = locations[:, 0], locations[:, 1]
    deltas = (
        torch.stack(
            [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=1
        )
        / stride
    )
    background = (gt_boxes[:, :4] == -1).all(dim=1)
    return torch.where(background[:, None], torch.full_like(deltas, -1.0), deltas)


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    d = deltas.clamp(min=0) * stride
    x, y = locations[:, 0], locations[:, 1]
    return torch.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], dim=1)


def fcos_make_centerness_targets(deltas):
    d = deltas.to(torch.float64)
    left, top, right, bottom = d.unbind(dim=1)
    num = torch.minimum(left, right) * torch.minimum(top, bottom)
    den = torch.maximum(left, right) * torch.maximum(top, bottom)
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
    centerness = torch.sqrt(ratio)
    background = (d < 0).any(dim=1)
    return torch.where(background, -1.0, centerness).to(deltas.dtype)


def box_iou(boxes1, boxes2):
    out_dtype = boxes1.dtype if boxes1.dtype in (torch.float32, torch.float64) else torch.float32
    a, b = boxes1.to(torch.float64), boxes2.to(torch.float64)
    area1 = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area2 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    iou = torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)
    return iou.to(out_dtype)


def clip_boxes_to_image(boxes, size):
    height, width = size
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def nms(boxes, scores, iou_threshold=0.5):
    if torch.isnan(scores).any() or torch.isnan(boxes).any():
        raise ValueError("nms: NaN in boxes or scores")
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    iou = box_iou(boxes.to(torch.float64), boxes.to(torch.float64)).tolist()
    keep = []
    for i in order.tolist():
        if all(iou[i][k] <= iou_threshold for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    kept = []
    for cls in torch.unique(class_ids).tolist():
        index = torch.nonzero(class_ids == cls).reshape(-1)
        kept.append(index[nms(boxes[index], scores[index], iou_threshold)])
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat(kept).sort().values  # index order, so the stable sort breaks ties by index
    order = torch.sort(scores[keep].to(torch.float64), descending=True, stable=True).indices
    return keep[order]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    x = inputs.float() if inputs.dtype in (torch.float16, torch.bfloat16) else inputs
    t = targets.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":
        loss = loss.mean() if loss.numel() else loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(inputs.dtype)
