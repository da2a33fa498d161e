"""Registry entries for detops.losses and detops.inference.

Their benchmarks and the course code's course-style peers live in
:mod:`detops.bench.cases.losses`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference.inference as ref_inference
import reference.locations as ref_locations
import reference.losses as ref_losses
from detops import inference, losses

from ..compare import Tolerance
from ..entry import OpEntry
from ..strategies import Case, floats32

__all__ = [
    "ENTRIES",
    "FOCAL_TOLERANCES",
    "FCOS_LOSS_TOLERANCES",
    "INFERENCE_TOLERANCES",
    "SEED_STYLE_TOLERANCE",
    "focal_cases",
    "class_id_cases",
    "fcos_loss_cases",
    "inference_cases",
]

# ----------------------------------------------------------------------------------------
# sigmoid focal loss
# ----------------------------------------------------------------------------------------

# float32: a few roundings per element; the gradient's ``p - t`` cancels for soft targets
# (absolute error ~1e-7), hence the atol. float16/bfloat16 are computed in float32 and
# rounded once into the output dtype (2**-11 and 2**-8 relative), plus that atol.
FOCAL_TOLERANCES = {
    torch.float64: Tolerance(1e-13, 1e-10),
    torch.float32: Tolerance(1e-6, 1e-5),
    torch.float16: Tolerance(1e-3, 2.0**-10),
    torch.bfloat16: Tolerance(1e-2, 2.0**-7),
}

# Logits that matter: saturated (+-1e4, +-100), mmcv's fp16 NaN point (9.39), 0.
_SPECIAL_LOGITS = (1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 9.39, -9.39, 0.0)


def _logits(limit: float = math.inf):
    special = [v for v in _SPECIAL_LOGITS if abs(v) <= limit]
    return st.one_of(floats32(-20.0, 20.0), st.sampled_from(special))


@st.composite
def _focal_options(draw) -> dict:
    alpha = draw(st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 1.0]), floats32(0.0, 1.0)))
    gamma = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), floats32(0.0, 4.0)))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return {"alpha": alpha, "gamma": gamma, "reduction": reduction}


@st.composite
def _shapes(draw, min_dims: int = 1) -> tuple[int, ...]:
    return draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=6))


def _logit_limit(options: dict, half: bool) -> float:
    # float16 holds sums up to 65504: with at most 216 elements of loss <= 100, a half
    # precision sum/mean stays finite. Elementwise ("none") keeps the +-1e4 logits.
    return 100.0 if half and options["reduction"] != "none" else math.inf


@st.composite
def focal_cases(draw, half: bool = False):
    """``(inputs, targets)`` of one shape: hard 0/1 or soft targets, saturated logits."""
    options = draw(_focal_options())
    shape = draw(_shapes())
    x = draw(hnp.arrays(np.float64, shape, elements=_logits(_logit_limit(options, half))))
    if draw(st.booleans()):
        t = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])))
    else:
        t = draw(hnp.arrays(np.float64, shape, elements=floats32(0.0, 1.0)))
    return Case((x, t), options)


@st.composite
def class_id_cases(draw, half: bool = False):
    """``(inputs [..., C], class_ids [...])`` with background ids -1 (and other negatives)."""
    options = draw(_focal_options())
    shape = draw(_shapes())
    if shape[-1] == 0:
        shape = shape[:-1] + (1,)
    x = draw(hnp.arrays(np.float64, shape, elements=_logits(_logit_limit(options, half))))
    ids = draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(-2, shape[-1] - 1)))
    return Case((x, ids), options)


_FULL = {dtype: FOCAL_TOLERANCES[dtype] for dtype in (torch.float64, torch.float32)}
_HALF = {dtype: FOCAL_TOLERANCES[dtype] for dtype in (torch.float16, torch.bfloat16)}

ENTRIES: tuple[OpEntry, ...] = (
    OpEntry(
        name="sigmoid_focal_loss",
        op=losses.sigmoid_focal_loss,
        reference=ref_losses.sigmoid_focal_loss,
        strategy=focal_cases,
        tolerances=_FULL,
    ),
    OpEntry(
        name="sigmoid_focal_loss_half",
        op=losses.sigmoid_focal_loss,
        reference=ref_losses.sigmoid_focal_loss,
        strategy=lambda: focal_cases(half=True),
        tolerances=_HALF,
    ),
    OpEntry(
        name="sigmoid_focal_loss_grad",
        op=losses.sigmoid_focal_loss_grad,
        reference=ref_losses.sigmoid_focal_loss_grad,
        strategy=focal_cases,
        tolerances=FOCAL_TOLERANCES,
    ),
    OpEntry(
        name="sigmoid_focal_loss_from_class_ids",
        op=losses.sigmoid_focal_loss_from_class_ids,
        reference=ref_losses.sigmoid_focal_loss_from_class_ids,
        strategy=class_id_cases,
        tolerances=_FULL,
    ),
    OpEntry(
        name="sigmoid_focal_loss_from_class_ids_half",
        op=losses.sigmoid_focal_loss_from_class_ids,
        reference=ref_losses.sigmoid_focal_loss_from_class_ids,
        strategy=lambda: class_id_cases(half=True),
        tolerances=_HALF,
    ),
)


# ----------------------------------------------------------------------------------------
# fcos_loss and fcos_inference
# ----------------------------------------------------------------------------------------

# Sums over at most a few hundred float32 terms, one division by the normalizer.
FCOS_LOSS_TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-10),
    torch.float32: Tolerance(1e-6, 1e-5),
}
# Boxes: one float32 multiply-add per coordinate (values below ~300 px); scores: a
# sigmoid, a product and a square root in float32.
INFERENCE_TOLERANCES = {
    torch.float64: Tolerance(1e-9, 1e-12),
    torch.float32: Tolerance(1e-4, 1e-6),
}
# detops against the course-style code (both in float32): "equal within 1e-5" (issue 4).
SEED_STYLE_TOLERANCE = Tolerance(1e-6, 1e-5)


@st.composite
def fcos_loss_cases(draw):
    """Concatenated-level predictions and targets: positives with a class in [0, C) and
    positive deltas (sometimes one delta <= 0), background rows of -1; batches with no
    positive; a float or 0-d array normalizer."""
    batch = draw(st.integers(1, 3))
    num_loc = draw(st.integers(0, 12))
    num_classes = draw(st.integers(1, 5))
    shape = (batch, num_loc)
    cls = draw(hnp.arrays(np.float64, shape + (num_classes,), elements=floats32(-8, 8)))
    box = draw(hnp.arrays(np.float64, shape + (4,), elements=floats32(-1, 6)))
    ctr = draw(hnp.arrays(np.float64, shape + (1,), elements=floats32(-8, 8)))
    positive_rate = draw(st.sampled_from([0.0, 0.3, 1.0]))
    gt_boxes = np.full(shape + (5,), -1.0)
    gt_deltas = np.full(shape + (4,), -1.0)
    for b in range(batch):
        for i in range(num_loc):
            if draw(st.floats(0, 1)) >= positive_rate:
                continue
            ltrb = draw(hnp.arrays(np.float64, 4, elements=floats32(0.0, 10.0)))
            if draw(st.integers(0, 4)) == 0:  # a delta on (0) or past (<0) the edge
                ltrb[draw(st.integers(0, 3))] = draw(st.sampled_from([0.0, -0.5]))
            gt_deltas[b, i] = ltrb
            corner = draw(hnp.arrays(np.float64, 2, elements=floats32(0.0, 100.0)))
            gt_boxes[b, i, :4] = np.concatenate([corner, corner + 10.0])
            gt_boxes[b, i, 4] = draw(st.integers(0, num_classes - 1))
    normalizer = draw(floats32(1.0, 200.0))
    if draw(st.booleans()):
        normalizer = np.asarray(normalizer)  # becomes a 0-d tensor for the op
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    return Case((cls, box, ctr, gt_boxes, gt_deltas, normalizer), {"momentum": momentum})


# Logits on a 0.5 grid in [-6, 6]: equal (class, centerness) logits give exactly equal
# scores (ties on purpose), different ones differ by >= 1.2e-5 relative, so float32 and
# float64 sort them alike. Deltas on a 0.25 grid and dyadic NMS thresholds keep every IoU
# exact or far from the threshold in both dtypes.
_LOGIT_GRID = tuple(float(v) for v in np.arange(-6.0, 6.01, 0.5))
_DELTA_GRID = tuple(float(v) for v in np.arange(-0.5, 4.01, 0.25))


@st.composite
def inference_cases(draw):
    """Per-level head outputs for 1-3 images of at most 40 px, 1-3 levels."""
    base = draw(st.sampled_from([7, 8, 12, 16]))
    levels = draw(st.integers(1, 3))
    strides = {f"p{3 + i}": base * 2**i for i in range(levels)}
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    shapes = {k: (-(-height // s), -(-width // s)) for k, s in strides.items()}
    locations = ref_locations.get_fpn_location_coords(shapes, strides)
    batch, num_classes = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    grid, delta_grid = st.sampled_from(_LOGIT_GRID), st.sampled_from(_DELTA_GRID)
    cls, box, ctr = {}, {}, {}
    for level, loc in locations.items():
        n = len(loc)
        cls[level] = draw(hnp.arrays(np.float64, (batch, n, num_classes), elements=grid))
        box[level] = draw(hnp.arrays(np.float64, (batch, n, 4), elements=delta_grid))
        ctr[level] = draw(hnp.arrays(np.float64, (batch, n, 1), elements=grid))
    kwargs = {
        "topk_candidates": draw(st.one_of(st.none(), st.integers(0, 4))),
        "max_detections": draw(st.one_of(st.none(), st.integers(0, 6))),
    }
    score_thresh = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]))
    nms_thresh = draw(st.sampled_from([0.0, 0.25, 0.375, 0.5, 0.625, 1.0]))
    args = (locations, strides, cls, box, ctr, (height, width), score_thresh, nms_thresh)
    return Case(args, kwargs)


def _detections_per_image(detections):
    return [tuple(image) for image in detections.per_image()]


ENTRIES = ENTRIES + (
    OpEntry(
        name="fcos_loss",
        op=losses.fcos_loss,
        reference=ref_losses.fcos_loss,
        strategy=fcos_loss_cases,
        tolerances=FCOS_LOSS_TOLERANCES,
    ),
    OpEntry(
        name="fcos_inference",
        op=inference.fcos_inference,
        reference=ref_inference.fcos_inference,
        strategy=inference_cases,
        tolerances=INFERENCE_TOLERANCES,
        prepare_output=_detections_per_image,
    ),
)
