"""Mistake: ``>=`` instead of ``>``: a box at exactly the threshold is suppressed."""

import torch
from correct import box_iou


def nms(boxes, scores, iou_threshold=0.5):
    if torch.isnan(scores).any() or torch.isnan(boxes).any():
        raise ValueError("nms: NaN in boxes or scores")
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    iou = box_iou(boxes.double(), boxes.double()).tolist()
    keep = []
    for i in order.tolist():
        if all(iou[i][k] < iou_threshold for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)
