"""Mistake (seen in a student solution): the kept box leaves the queue only through its IoU
with itself (1 > iou_threshold). A zero-area box has IoU 0 / 0 = NaN with itself, so it
stays first in the queue and the loop never ends. Right on every box with an area."""

import torch


def _iou_row(box, boxes):
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.max(box[:2], boxes[:, :2])
    rb = torch.min(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    return inter / (area + areas - inter)


def nms(boxes, scores, iou_threshold=0.5):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        if not keep or keep[-1] != int(i):
            keep.append(int(i))
        ious = _iou_row(boxes[i], boxes[order])  # includes the kept box itself
        order = order[~(ious > iou_threshold)]
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)
