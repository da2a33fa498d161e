"""The course code's class_spec_nms: the ``boxes + class_id * (max + 1)`` offset trick.
Subtle: right for positive float32 coordinates, wrong with negative ones and in float16."""

import torch
from correct import nms


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = class_ids.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    return nms(boxes_for_nms, scores, iou_threshold)
