"""Mistake: size read as (width, height)."""

import torch


def clip_boxes_to_image(boxes, size):
    width, height = size
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
