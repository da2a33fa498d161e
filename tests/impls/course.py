"""The course's provided functions, written as the course code writes them: the matcher
(size ranges by level name, ``p3`` without a lower bound and ``p5`` without an upper one;
the ``1e8 - area`` float32 quality; a crash on an image with zero GT rows) and
``class_spec_nms`` (the ``boxes + class_id * (max + 1)`` offset trick over torchvision's
``nms``).

Both are right on everything the course's pipeline feeds them; they differ from detops only
where detops goes further (area ties below float32 resolution, zero GT rows, class -1 rows
with coordinates, negative coordinates or float16 with the offset trick): verify gives
DEPARTS, never FAIL.
"""

import torch
from torchvision.ops import nms


def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    matched_gt_boxes = {}
    for level_name, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level_name]
        x, y = centers.unsqueeze(dim=2).unbind(dim=1)
        x0, y0, x1, y1 = gt_boxes[:, :4].unsqueeze(dim=0).unbind(dim=2)
        pairwise_dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
        pairwise_dist = pairwise_dist.permute(1, 0, 2)
        match_matrix = pairwise_dist.min(dim=2).values > 0
        pairwise_dist = pairwise_dist.max(dim=2).values
        lower_bound = stride * 4 if level_name != "p3" else 0
        upper_bound = stride * 8 if level_name != "p5" else float("inf")
        match_matrix &= (pairwise_dist > lower_bound) & (pairwise_dist < upper_bound)
        gt_areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        match_matrix = match_matrix.to(torch.float32)
        match_matrix *= 1e8 - gt_areas[:, None]
        match_quality, matched_idxs = match_matrix.max(dim=0)
        matched_idxs[match_quality < 1e-5] = -1
        matched_boxes_this_level = gt_boxes[matched_idxs.clip(min=0)]
        matched_boxes_this_level[matched_idxs < 0, :] = -1
        matched_gt_boxes[level_name] = matched_boxes_this_level
    return matched_gt_boxes


def class_spec_nms(boxes, scores, class_ids, iou_threshold=0.5):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = class_ids.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    return nms(boxes_for_nms, scores, iou_threshold)
