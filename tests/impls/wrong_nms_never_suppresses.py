"""Mistake (seen in student solutions): the loop computes which boxes survive but never uses
the result, so nothing is ever suppressed: every box comes back in score order."""

import torch
from correct import box_iou


def nms(boxes, scores, iou_threshold=0.5):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(int(i))
        if order.numel() == 1:
            break
        ious = box_iou(boxes[i][None], boxes[order[1:]])[0]
        remaining = order[1:][ious <= iou_threshold]  # noqa: F841 - the bug: never used
        order = order[1:]
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)
