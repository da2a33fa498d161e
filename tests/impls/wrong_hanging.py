"""Robustness: a function that never returns (a busy loop; the harness abandons it)."""


def clip_boxes_to_image(boxes, size):
    spins = 0
    while True:
        spins += 1
