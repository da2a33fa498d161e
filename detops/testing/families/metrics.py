"""Registry entries for detops.metrics."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

import reference.metrics as ref
from detops import metrics

from ..compare import Tolerance
from ..entry import OpEntry
from ..strategies import Case

# AP values are sums of fractions computed in float64 on both sides; the float32 result
# is one rounding away.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-6, rtol=1e-6),
    torch.float64: Tolerance(atol=1e-12, rtol=1e-12),
}


@st.composite
def _grid_box(draw, near=None):
    """A box on a half-pixel grid: IoU values are exact, thresholds are hit exactly.

    Given ``near`` (a GT box), 3 times in 4 a near-copy of it: each edge moves by up to a
    sixth of the box's side (at least half a pixel), so most copies pass IoU 0.5, some
    only 0.3 or miss, and exact copies reach 1; else a fresh box.
    """
    if near is not None and draw(st.sampled_from([True, False, True, True])):
        x1, y1, x2, y2 = (float(v) for v in near)
        steps = [max(1, round(2 * (x2 - x1)) // 6), max(1, round(2 * (y2 - y1)) // 6)]
        jitter = [draw(st.integers(-steps[i % 2], steps[i % 2])) for i in range(4)]
        x1, y1, x2, y2 = (v + 0.5 * j for v, j in zip((x1, y1, x2, y2), jitter, strict=True))
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    x1 = draw(st.integers(0, 40)) * 0.5
    y1 = draw(st.integers(0, 40)) * 0.5
    w = draw(st.integers(1, 24)) * 0.5
    h = draw(st.integers(1, 24)) * 0.5
    return [x1, y1, x1 + w, y1 + h]


def _draw_detections(draw, box, gt_boxes, gt_labels, num_classes, max_dets, tied_scores):
    """One image's detections: near-copies of its GT (same class 3 times in 4, else any)
    and random boxes of random classes; scores from 4 tied values or distinct."""
    num_gt = len(gt_boxes)
    num_det = draw(st.integers(0, max_dets))
    det_boxes, det_labels, det_scores = [], [], []
    for _ in range(num_det):
        if num_gt and draw(st.booleans()):
            j = draw(st.integers(0, num_gt - 1))
            det_boxes.append(draw(box(near=gt_boxes[j])))
            same = draw(st.integers(0, 3)) > 0
            det_labels.append(gt_labels[j] if same else draw(st.integers(0, num_classes - 1)))
        else:
            det_boxes.append(draw(box()))
            det_labels.append(draw(st.integers(0, num_classes - 1)))
        if tied_scores:
            det_scores.append(draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])))
        else:
            det_scores.append(draw(st.integers(1, 10**6)) / 2**20)
    return det_boxes, det_labels, det_scores


@st.composite
def map_cases(draw, max_images: int = 4, max_gt: int = 5, max_dets: int = 7):
    """Random images of GT and detections: near-copies of GT (true positives and
    duplicates), wrong classes, random boxes; scores tied or distinct."""
    num_classes = draw(st.integers(1, 4))
    # Counts from the most down (the simplest case has GT): none, and so NaN, stay rarer.
    num_images = max_images - draw(st.integers(0, max_images))
    tied_scores = draw(st.booleans())
    detections, ground_truths = [], []
    for _ in range(num_images):
        num_gt = max_gt - draw(st.integers(0, max_gt))
        gt_boxes = [draw(_grid_box()) for _ in range(num_gt)]
        gt_labels = [draw(st.integers(0, num_classes - 1)) for _ in range(num_gt)]
        det_boxes, det_labels, det_scores = _draw_detections(
            draw, _grid_box, gt_boxes, gt_labels, num_classes, max_dets, tied_scores
        )
        detections.append(
            {
                "boxes": np.array(det_boxes, dtype=np.float64).reshape(-1, 4),
                "labels": np.array(det_labels, dtype=np.int64),
                "scores": np.array(det_scores, dtype=np.float64),
            }
        )
        ground_truths.append(
            {
                "boxes": np.array(gt_boxes, dtype=np.float64).reshape(-1, 4),
                "labels": np.array(gt_labels, dtype=np.int64),
            }
        )
    kwargs = draw(
        st.sampled_from(
            [
                {},
                {"iou_threshold": 0.3},
                {"iou_threshold": 0.75},
                {"iou_threshold": 0.0},
                {"iou_thresholds": metrics.COCO_IOU_THRESHOLDS},
                {"voc_plus_one": True},
                {"iou_threshold": 0.7, "voc_plus_one": True},
            ]
        )
    )
    return Case((detections, ground_truths, num_classes), kwargs)


# COCO: float64 inside on both sides; sums of up to a few thousand terms in another order.
COCO_TOLERANCES = {
    torch.float32: Tolerance(atol=1e-12, rtol=0.0),
    torch.float64: Tolerance(atol=1e-12, rtol=0.0),
}

# Side lengths that put areas on COCO's range edges (32² and 96²) and either side of them.
_COCO_SIDES = (1, 4, 16, 31, 32, 33, 48, 95, 96, 97, 120, 150)


@st.composite
def _coco_box(draw, near=None):
    """XYXY on a half-pixel grid, sides from 0.5 to 150 px: every COCO area range."""
    if near is not None and draw(st.booleans()):
        jitter = draw(st.lists(st.integers(-4, 4), min_size=4, max_size=4))
        x1, y1, x2, y2 = (float(v) + 0.5 * j for v, j in zip(near, jitter, strict=True))
        return [min(x1, x2), min(y1, y2), max(x1, x2) + 0.5, max(y1, y2) + 0.5]
    x1 = draw(st.integers(0, 120)) * 0.5
    y1 = draw(st.integers(0, 120)) * 0.5
    if draw(st.booleans()):
        w, h = draw(st.sampled_from(_COCO_SIDES)), draw(st.sampled_from(_COCO_SIDES))
    else:
        w, h = draw(st.integers(1, 300)) * 0.5, draw(st.integers(1, 300)) * 0.5
    return [x1, y1, x1 + w, y1 + h]


@st.composite
def coco_map_cases(draw, max_images: int = 4, max_gt: int = 5, max_dets: int = 8):
    """Images for COCOeval: crowd GT, given areas (some on the range edges), tied scores,
    duplicates, classes seen only in detections, empty images, and sometimes one image
    with more than 100 detections of one class (near-copies of its GT, tied scores)."""
    num_classes = draw(st.integers(1, 4))
    num_images = draw(st.integers(0, max_images))
    tied_scores = draw(st.booleans())
    with_crowd = draw(st.booleans())
    with_area = draw(st.integers(0, 3)) == 0
    flood_image = draw(st.integers(-3 * max(num_images, 1), num_images - 1))
    detections, ground_truths = [], []
    for image in range(num_images):
        num_gt = draw(st.integers(0, max_gt))
        gt_boxes = [draw(_coco_box()) for _ in range(num_gt)]
        gt_labels = [draw(st.integers(0, num_classes - 1)) for _ in range(num_gt)]
        det_boxes, det_labels, det_scores = _draw_detections(
            draw, _coco_box, gt_boxes, gt_labels, num_classes, max_dets, tied_scores
        )
        if image == flood_image:
            # 101-130 more detections of one class, from a seeded generator (cheap to draw).
            rng = np.random.default_rng(draw(st.integers(0, 2**16)))
            count = int(rng.integers(101, 131))
            label = draw(st.integers(0, num_classes - 1))
            own = [b for b, lab in zip(gt_boxes, gt_labels, strict=True) if lab == label]
            base = np.array(own or [[10.0, 10.0, 60.0, 60.0]])
            boxes = base[rng.integers(0, len(base), count)] + rng.integers(-6, 7, (count, 4)) * 0.5
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
            det_boxes.extend(boxes.tolist())
            det_labels.extend([label] * count)
            det_scores.extend((rng.integers(1, 9, count) / 8.0).tolist())
        ground_truth = {
            "boxes": np.array(gt_boxes, dtype=np.float64).reshape(-1, 4),
            "labels": np.array(gt_labels, dtype=np.int64),
        }
        if with_crowd:
            crowd = [draw(st.integers(0, 3)) == 0 for _ in range(num_gt)]
            ground_truth["iscrowd"] = np.array(crowd, dtype=np.bool_)
        if with_area:
            areas = [
                float(draw(st.sampled_from([0, 500, 1024, 5000, 9216, 20000])))
                for _ in range(num_gt)
            ]
            ground_truth["area"] = np.array(areas, dtype=np.float64)
        detections.append(
            {
                "boxes": np.array(det_boxes, dtype=np.float64).reshape(-1, 4),
                "labels": np.array(det_labels, dtype=np.int64),
                "scores": np.array(det_scores, dtype=np.float64),
            }
        )
        ground_truths.append(ground_truth)
    return Case((detections, ground_truths, num_classes), {"protocol": "coco"})


ENTRIES = (
    OpEntry(
        name="mean_average_precision",
        op=metrics.mean_average_precision,
        reference=ref.mean_average_precision,
        strategy=map_cases,
        tolerances=TOLERANCES,
    ),
    OpEntry(
        name="mean_average_precision_coco",
        op=metrics.mean_average_precision,
        reference=ref.mean_average_precision,
        strategy=coco_map_cases,
        tolerances=COCO_TOLERANCES,
    ),
)
