"""Robustness: a function that raises on every input."""


def box_iou(boxes1, boxes2):
    raise NotImplementedError("TODO: write box_iou")
