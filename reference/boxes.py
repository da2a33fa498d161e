"""NumPy reference for detops.boxes.

Written from the contracts in the detops.boxes docstrings, not from the fast code: plain
loops, float64 inside, NumPy only (never imports torch or detops).

Coordinate contract: boxes are XYXY in absolute pixels; a box (x1, y1, x2, y2) covers the
pixels [x1, x2) x [y1, y2). GT rows are (x1, y1, x2, y2, class); padding rows are all -1.
"""

from __future__ import annotations

import functools

import numpy as np


def _area(box):
    """Area of one XYXY box, (x2 - x1) * (y2 - y1), as the box_iou contract states it."""
    return (box[2] - box[0]) * (box[3] - box[1])


def _iou_one(a, b):
    """IoU of two single boxes: intersection area over union area, 0 where the union is 0."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = _area(a) + _area(b) - inter
    if union == 0.0:
        return 0.0
    return inter / union


def box_iou(boxes1, boxes2, fmt="xyxy"):
    """IoU of every pair: out[..., i, j] = IoU(boxes1[..., i, :], boxes2[..., j, :]).

    Args:
        boxes1: array [..., N, 4] in ``fmt``.
        boxes2: array [..., M, 4] in ``fmt``; leading dims broadcast against those of boxes1.
        fmt: "xyxy", "xywh" (corner, width, height) or "cxcywh" (centre, width, height);
            a box given by its width and height has the area width * height.

    Returns:
        float64 array [..., N, M]; a pair whose union area is 0 gives 0.
    """
    b1 = np.asarray(boxes1, dtype=np.float64)
    b2 = np.asarray(boxes2, dtype=np.float64)
    pair_iou = _iou_one if fmt == "xyxy" else functools.partial(_iou_one_by_size, fmt=fmt)
    batch = np.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    n, m = b1.shape[-2], b2.shape[-2]
    b1 = np.broadcast_to(b1, batch + (n, 4))
    b2 = np.broadcast_to(b2, batch + (m, 4))
    out = np.zeros(batch + (n, m), dtype=np.float64)
    for idx in np.ndindex(*batch):
        for i in range(n):
            for j in range(m):
                out[idx + (i, j)] = pair_iou(b1[idx + (i,)], b2[idx + (j,)])
    return out


def _iou_one_by_size(a, b, fmt):
    """:func:`_iou_one` of two boxes given by a corner or centre, a width and a height."""
    inter = 1.0
    for axis in (0, 1):
        low_a, high_a = _extent(a, axis, fmt)
        low_b, high_b = _extent(b, axis, fmt)
        inter *= max(0.0, min(high_a, high_b) - max(low_a, low_b))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return 0.0 if union == 0.0 else inter / union


def _extent(box, axis, fmt):
    """``(low, high)`` of one box on one axis (0: x, 1: y)."""
    if fmt == "xywh":
        return box[axis], box[axis] + box[axis + 2]
    if fmt == "cxcywh":
        return box[axis] - box[axis + 2] / 2, box[axis] + box[axis + 2] / 2
    raise ValueError(f"box_iou: fmt must be 'xyxy', 'xywh' or 'cxcywh', got {fmt!r}")


def _is_padding(row):
    """A GT row whose class (fifth entry) is -1 is padding."""
    return len(row) == 5 and row[4] == -1.0


def clip_boxes_to_image(boxes, size):
    """Clamp every x to [0, width] and every y to [0, height], size = (height, width).

    For five-column GT rows the class is copied unchanged and rows whose class is -1 are
    copied unchanged entirely.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    height, width = size
    out = arr.copy()
    flat_in = arr.reshape(-1, arr.shape[-1])
    flat_out = out.reshape(-1, arr.shape[-1])
    for r, row in enumerate(flat_in):
        if _is_padding(row):
            continue
        for k in range(4):
            limit = width if k % 2 == 0 else height
            flat_out[r, k] = min(max(row[k], 0.0), limit)
    return out


def _round_half_to_even(value):
    """Python's round() on a multiple of 0.5: halves go to the even neighbour."""
    low = int(np.floor(value))
    frac = value - low
    if frac < 0.5:
        return low
    if frac > 0.5:
        return low + 1
    return low if low % 2 == 0 else low + 1


def resized_and_crop_geometry(original_size, image_size):
    """torchvision's Resize(int) then CenterCrop(int) geometry.

    The short side becomes image_size and the long side floor(image_size * long / short);
    the crop offset per axis is round((resized - image_size) / 2) with halves to even.
    Returns ((resized_height, resized_width), (crop_top, crop_left)).
    """
    height, width = int(original_size[0]), int(original_size[1])
    if height <= width:
        new_h, new_w = image_size, (image_size * width) // height
    else:
        new_h, new_w = (image_size * height) // width, image_size
    top = _round_half_to_even((new_h - image_size) / 2)
    left = _round_half_to_even((new_w - image_size) / 2)
    return (new_h, new_w), (top, left)


def resize_and_center_crop_boxes(gt_boxes, original_size, image_size):
    """GT rows (x1, y1, x2, y2, class) from original pixels to Resize + CenterCrop pixels.

    x' = clamp(x * (new_w / w) - left, 0, image_size), y likewise with new_h / h and top.
    A row with class -1, or with x1' >= x2' or y1' >= y2' after the clamp, becomes all -1.
    """
    arr = np.asarray(gt_boxes, dtype=np.float64)
    height, width = int(original_size[0]), int(original_size[1])
    (new_h, new_w), (top, left) = resized_and_crop_geometry((height, width), image_size)
    scale_x = new_w / width
    scale_y = new_h / height
    out = np.empty_like(arr)
    flat_in = arr.reshape(-1, 5)
    flat_out = out.reshape(-1, 5)
    for r, row in enumerate(flat_in):
        x1 = min(max(row[0] * scale_x - left, 0.0), image_size)
        y1 = min(max(row[1] * scale_y - top, 0.0), image_size)
        x2 = min(max(row[2] * scale_x - left, 0.0), image_size)
        y2 = min(max(row[3] * scale_y - top, 0.0), image_size)
        if _is_padding(row) or x1 >= x2 or y1 >= y2:
            flat_out[r] = -1.0
        else:
            flat_out[r] = (x1, y1, x2, y2, row[4])
    return out


def center_crop_boxes_to_original(boxes, original_size, image_size):
    """Boxes from Resize + CenterCrop pixels back to original pixels.

    x = clamp((x' + left) * (w / new_w), 0, w), y likewise with top and h / new_h. No row
    is dropped; five-column rows keep their class and rows with class -1 are copied as is.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    height, width = int(original_size[0]), int(original_size[1])
    (new_h, new_w), (top, left) = resized_and_crop_geometry((height, width), image_size)
    inv_x = width / new_w
    inv_y = height / new_h
    out = arr.copy()
    flat_in = arr.reshape(-1, arr.shape[-1])
    flat_out = out.reshape(-1, arr.shape[-1])
    for r, row in enumerate(flat_in):
        if _is_padding(row):
            continue
        flat_out[r, 0] = min(max((row[0] + left) * inv_x, 0.0), width)
        flat_out[r, 1] = min(max((row[1] + top) * inv_y, 0.0), height)
        flat_out[r, 2] = min(max((row[2] + left) * inv_x, 0.0), width)
        flat_out[r, 3] = min(max((row[3] + top) * inv_y, 0.0), height)
    return out


def pad_gt_boxes(boxes_list, max_boxes=None):
    """Stack [n_i, 5] arrays into [B, max_boxes, 5]; missing rows are all -1.

    max_boxes None means the largest n_i (0 for an empty list).
    """
    arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 5) for b in boxes_list]
    if max_boxes is None:
        max_boxes = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), max_boxes, 5), -1.0)
    for b, arr in enumerate(arrays):
        if len(arr) > max_boxes:
            raise ValueError(f"pad_gt_boxes: image {b} has {len(arr)} boxes > {max_boxes}")
        for j, row in enumerate(arr):
            out[b, j] = row
    return out
