"""Robustness: right values, but the boxes are clamped in place (the caller's tensor changes)."""


def clip_boxes_to_image(boxes, size):
    height, width = size
    boxes[:, 0::2].clamp_(0, width)
    boxes[:, 1::2].clamp_(0, height)
    return boxes
