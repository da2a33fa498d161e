"""Mistake: deltas are decoded without clamping negatives to 0 first."""

import torch


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    d = deltas * stride
    x, y = locations[:, 0], locations[:, 1]
    return torch.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], dim=1)
