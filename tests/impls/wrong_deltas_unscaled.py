"""Mistake: the deltas are left in pixels (not divided by the stride)."""

import torch


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    x, y = locations[:, 0], locations[:, 1]
    deltas = torch.stack(
        [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=1
    )
    background = (gt_boxes[:, :4] == -1).all(dim=1)
    deltas[background] = -1
    return deltas
