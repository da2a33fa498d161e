"""Mistake: background locations (matched GT row all -1) are not special-cased, so they get
the formula's values (x + 1) / stride, ... instead of (-1, -1, -1, -1)."""

import torch


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    x, y = locations[:, 0], locations[:, 1]
    return (
        torch.stack(
            [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=1
        )
        / stride
    )
