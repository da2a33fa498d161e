"""Mistake: ``>=`` instead of ``>``: a box at exactly the threshold is suppressed (in
``nms`` and in the per-class ``class_spec_nms`` built on it)."""

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


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    """Per class, with the same `>=` mistake."""
    kept = []
    for cls in torch.unique(class_ids).tolist():
        index = torch.nonzero(class_ids == cls).reshape(-1)
        kept.append(index[nms(boxes[index], scores[index], iou_threshold)])
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat(kept).sort().values
    return keep[torch.sort(scores[keep].double(), descending=True, stable=True).indices]
