"""Registry entries for detops.nms: plain, class-specific and per-image batched NMS."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

import reference.nms as ref
from detops.nms import batched_nms_per_image, class_spec_nms, nms

from ..compare import EXACT
from ..entry import OpEntry
from ..strategies import Case, floats32

__all__ = [
    "ENTRIES",
    "as_seen_in",
    "iou_matrix",
    "nms_boxes",
    "distinct_scores",
    "threshold_away_from",
]

# Kept indices are integers: equal or wrong. The strategies keep every IoU at least 1e-5
# away from the threshold, where float32 (the op) and float64 (the reference) agree.
INDEX_TOLERANCES = {
    dtype: EXACT for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
}
NEAR = 1e-5


def as_seen_in(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The float64 values an op sees after the registry casts ``values`` to ``dtype``."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == torch.float64:
        return values
    if dtype == torch.float16:
        return values.astype(np.float16).astype(np.float64)
    single = values.astype(np.float32)
    if dtype == torch.float32:
        return single.astype(np.float64)
    # bfloat16: round to nearest even on the top 16 bits of the float32 pattern (the
    # strategies' values are float32-exact, so this is torch's float64 -> bfloat16).
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU in float64, vectorized (0 where the union is not positive)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _ious_in_every_dtype(boxes: np.ndarray) -> np.ndarray:
    """Every strictly fractional IoU (0 < IoU < 1) the op can see in any registered dtype.

    IoU 0 and 1 are exact in float32 too (0 / u and a / a), so they are never ambiguous.
    """
    values = []
    for dtype in INDEX_TOLERANCES:
        iou = iou_matrix(as_seen_in(boxes, dtype))
        values.append(iou[(iou > 0) & (iou < 1)])
    return np.concatenate(values) if values else np.zeros(0)


def threshold_away_from(ious: np.ndarray, wanted: float) -> float:
    """``wanted``, or the nearest of a few nearby thresholds in [0, 1], that is more than
    ``NEAR`` from every IoU in ``ious`` (so float32 and float64 agree on ``IoU > t``)."""
    for step in range(200):
        for sign in (1, -1):
            candidate = min(1.0, max(0.0, wanted + sign * step * 0.00137))
            if not np.any(np.abs(ious - candidate) <= NEAR):
                return candidate
    return 1.0  # IoU < 1 everywhere above: nothing is suppressed at 1.0


@st.composite
def nms_boxes(draw, n: int) -> np.ndarray:
    """``[n, 4]`` boxes: float32 scatter, integer-valued boxes, or clusters of jittered
    copies (long suppression chains). Negative coordinates and zero-area boxes included."""
    kind = draw(st.sampled_from(["scatter", "integer", "clusters", "clusters"]))
    rows = []
    if kind == "integer":
        for _ in range(n):
            x1, y1 = draw(st.integers(-20, 40)), draw(st.integers(-20, 40))
            w, h = draw(st.integers(0, 24)), draw(st.integers(0, 24))
            rows.append((x1, y1, x1 + w, y1 + h))
    elif kind == "scatter":
        for _ in range(n):
            x1, y1 = draw(floats32(-60.0, 200.0)), draw(floats32(-60.0, 200.0))
            w, h = draw(floats32(0.0, 120.0)), draw(floats32(0.0, 120.0))
            rows.append((x1, y1, float(np.float32(x1 + w)), float(np.float32(y1 + h))))
    else:
        centers = [
            (
                draw(floats32(-50.0, 150.0)),
                draw(floats32(-50.0, 150.0)),
                draw(floats32(4.0, 60.0)),
                draw(floats32(4.0, 60.0)),
            )
            for _ in range(draw(st.integers(1, 4)))
        ]
        for _ in range(n):
            cx, cy, w, h = draw(st.sampled_from(centers))
            jitter = [draw(floats32(-0.25, 0.25)) for _ in range(4)]
            x1 = float(np.float32(cx + jitter[0] * w))
            y1 = float(np.float32(cy + jitter[1] * h))
            x2 = float(np.float32(x1 + w * (1 + jitter[2])))
            y2 = float(np.float32(y1 + h * (1 + jitter[3])))
            rows.append((x1, y1, x2, y2))
    return np.array(rows, dtype=np.float64).reshape(n, 4)


@st.composite
def distinct_scores(draw, n: int) -> np.ndarray:
    """``[n]`` distinct scores (distinct in float16 and bfloat16 too for n <= 60)."""
    order = np.array(draw(st.permutations(range(n))), dtype=np.float64)
    if draw(st.booleans()):
        return (order + 1.0) / (n + 2.0)
    return order * 0.25 - 3.0  # negative and zero scores, exact in every dtype


def _threshold(draw, ious: np.ndarray) -> float:
    wanted = draw(st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), floats32(0.0, 1.0)))
    return threshold_away_from(ious, wanted)


@st.composite
def nms_cases(draw, max_n: int = 40):
    n = draw(st.integers(0, max_n))
    boxes = draw(nms_boxes(n))
    return Case((boxes, draw(distinct_scores(n)), _threshold(draw, _ious_in_every_dtype(boxes))))


def _class_ids(draw, n: int) -> np.ndarray:
    classes = draw(st.sampled_from([1, 2, 3, 5]))
    ids = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    shift = draw(st.sampled_from([0, 0, -3, 10**9]))  # negative and huge ids too
    return (ids + shift).astype(np.int64).reshape(n)


@st.composite
def class_nms_cases(draw, max_n: int = 40):
    n = draw(st.integers(0, max_n))
    boxes = draw(nms_boxes(n))
    ious = _ious_in_every_dtype(boxes)
    return Case((boxes, draw(distinct_scores(n)), _class_ids(draw, n), _threshold(draw, ious)))


@st.composite
def batched_nms_cases(draw, max_batch: int = 3, max_n: int = 16):
    batch, n = draw(st.integers(0, max_batch)), draw(st.integers(0, max_n))
    boxes = np.array([draw(nms_boxes(n)) for _ in range(batch)], dtype=np.float64)
    boxes = boxes.reshape(batch, n, 4)
    scores = np.array([draw(distinct_scores(n)) for _ in range(batch)], dtype=np.float64)
    scores = scores.reshape(batch, n)
    padding = np.array(
        draw(st.lists(st.booleans(), min_size=batch * n, max_size=batch * n)), dtype=bool
    )
    scores[padding.reshape(batch, n)] = -np.inf  # padding candidates
    class_ids = None
    if draw(st.booleans()):
        class_ids = np.array([_class_ids(draw, n) for _ in range(batch)], dtype=np.int64)
        class_ids = class_ids.reshape(batch, n)
    ious = np.concatenate([_ious_in_every_dtype(image) for image in boxes] + [np.zeros(0)])
    threshold = _threshold(draw, ious)
    limit = draw(st.sampled_from([None, None, 0, 1, 3, 100]))
    return Case((boxes, scores, class_ids, threshold), {"max_detections": limit})


ENTRIES = (
    OpEntry(
        name="nms",
        op=nms,
        reference=ref.nms,
        strategy=nms_cases,
        tolerances=INDEX_TOLERANCES,
    ),
    OpEntry(
        name="class_spec_nms",
        op=class_spec_nms,
        reference=ref.class_spec_nms,
        strategy=class_nms_cases,
        tolerances=INDEX_TOLERANCES,
    ),
    OpEntry(
        name="batched_nms_per_image",
        op=batched_nms_per_image,
        reference=ref.batched_nms_per_image,
        strategy=batched_nms_cases,
        tolerances=INDEX_TOLERANCES,
    ),
)
