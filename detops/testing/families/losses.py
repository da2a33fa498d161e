"""Registry entries for detops.losses and detops.inference, and their benchmarks.

The ``seed_style_*`` functions below are the course code's way of doing the same work,
kept as the peer that benchmarks and equality tests measure detops against. They are
deliberately *not* good code: per-image loops, a Python double loop building the one-hot,
``.item()`` on the normalizer, in-place ``sigmoid_`` of the course inference (copied
inputs here). Do not use them outside tests and benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import default_collate

import reference.inference as ref_inference
import reference.locations as ref_locations
import reference.losses as ref_losses
from detops import deltas, inference, losses, matching

from ..compare import Tolerance
from ..entry import BenchCase, BenchFunctions, OpEntry
from ..inputs import A4_STRIDES
from ..strategies import Case, floats32
from .targets import benchmark_inputs, seed_style_centerness, seed_style_deltas, seed_style_match

__all__ = [
    "ENTRIES",
    "BENCHMARKS",
    "FOCAL_TOLERANCES",
    "FCOS_LOSS_TOLERANCES",
    "INFERENCE_TOLERANCES",
    "SEED_STYLE_TOLERANCE",
    "focal_cases",
    "class_id_cases",
    "fcos_loss_cases",
    "inference_cases",
    "seed_style_fcos_loss",
    "seed_style_inference_one_image",
    "seed_style_inference",
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
# benchmarks
# ----------------------------------------------------------------------------------------


def _focal_inputs(batch, locations, classes, device, seed=0):
    """Logits ~ N(0, 3) and ~1% positive one-hot targets (80% of rows carry a class)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, locations, classes, generator=gen) * 3).to(device)
    ids = torch.randint(0, classes, (batch, locations), generator=gen)
    ids[torch.rand(batch, locations, generator=gen) > 0.8] = -1
    ids = ids.to(device)
    targets = torch.zeros_like(x)
    rows = ids >= 0
    targets[rows, ids[rows]] = 1.0
    return x, ids, targets


def _fwd_bwd(loss_fn, x):
    """Forward + backward of ``loss_fn(leaf)``; returns the gradient (setup outside)."""

    def run():
        leaf = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(leaf), leaf)
        return grad

    return run


def _focal_bench(batch, locations, classes, with_reference=False):
    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        x, _, t = _focal_inputs(batch, locations, classes, device)
        x_np, t_np = x.double().cpu().numpy(), t.double().cpu().numpy()
        return BenchFunctions(
            detops=_fwd_bwd(lambda v: losses.sigmoid_focal_loss(v, t, reduction="sum"), x),
            peer=_fwd_bwd(lambda v: torchvision.ops.sigmoid_focal_loss(v, t, reduction="sum"), x),
            reference=(lambda: ref_losses.sigmoid_focal_loss_grad(x_np, t_np, reduction="sum"))
            if with_reference
            else None,
        )

    return setup


def _class_id_bench(batch, locations, classes):
    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        x, ids, t = _focal_inputs(batch, locations, classes, device)
        return BenchFunctions(
            detops=_fwd_bwd(
                lambda v: losses.sigmoid_focal_loss_from_class_ids(v, ids, reduction="sum"), x
            ),
            peer=_fwd_bwd(lambda v: torchvision.ops.sigmoid_focal_loss(v, t, reduction="sum"), x),
        )

    return setup


_FWD_BWD = "forward+backward, reduction sum, ~1% positive targets"

BENCHMARKS: tuple[BenchCase, ...] = (
    BenchCase(
        "sigmoid_focal_loss",
        "tiny 2x16x4",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(2, 16, 4, with_reference=True),
        notes=_FWD_BWD + "; reference: loss and analytic gradient",
    ),
    BenchCase(
        "sigmoid_focal_loss",
        "A4 16x1029x20",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(16, 1029, 20),
        notes=_FWD_BWD,
    ),
    BenchCase(
        "sigmoid_focal_loss",
        "COCO 16x20267x80",
        "torchvision.ops.sigmoid_focal_loss",
        _focal_bench(16, 20267, 80),
        quick=False,
        notes=_FWD_BWD,
    ),
    BenchCase(
        "sigmoid_focal_loss_from_class_ids",
        "COCO 16x20267x80",
        "torchvision.ops.sigmoid_focal_loss on the dense one-hot",
        _class_id_bench(16, 20267, 80),
        quick=False,
        notes=_FWD_BWD,
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
# detops against the seed-style code (both in float32): "equal within 1e-5" (issue 4).
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


# ----------------------------------------------------------------------------------------
# seed-style peers (the course code, for equality tests and benchmarks; NOT for use)
# ----------------------------------------------------------------------------------------


def seed_style_fcos_loss(
    pred_cls_logits,
    pred_boxreg_deltas,
    pred_ctr_logits,
    locations_per_fpn_level,
    strides_per_fpn_level,
    gt_boxes,
    normalizer,
    *,
    match=seed_style_match,
):
    """SEED-STYLE (course code) FCOS training loss, predictions concatenated over levels.

    As the course ``FCOS.forward``: per-image matching (``match`` of ONE image, default
    the course's ``1e8 - area`` matcher), per-level deltas, ``default_collate``, the
    normalizer EMA through ``.item()``, a Python double loop building the one-hot,
    torchvision's focal loss, the masked L1 and BCE. Returns ``(losses, new_normalizer)``
    with a Python float normalizer. Only the centerness call differs: the course function
    takes ``[N, 4]`` deltas, so the batch is flattened for it.
    """
    batch = gt_boxes.shape[0]
    per_image_boxes, per_image_deltas = [], []
    for i in range(batch):
        matched_boxes = match(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[i])
        per_image_boxes.append(matched_boxes)
        per_image_deltas.append(
            {
                level: seed_style_deltas(
                    locations_per_fpn_level[level], matched_boxes[level],
                    strides_per_fpn_level[level],
                )
                for level in matched_boxes
            }
        )  # fmt: skip
    matched_gt_boxes = torch.cat(list(default_collate(per_image_boxes).values()), dim=1)
    matched_gt_deltas = torch.cat(list(default_collate(per_image_deltas).values()), dim=1)

    num_pos_locations = (matched_gt_boxes[:, :, 4] != -1).sum()
    pos_loc_per_image = num_pos_locations.item() / batch
    normalizer = 0.9 * normalizer + 0.1 * pos_loc_per_image

    gt_classes = torch.zeros_like(pred_cls_logits)
    for i in range(batch):
        for j in range(matched_gt_boxes.shape[1]):
            class_id = matched_gt_boxes[i, j, 4].long()
            if class_id != -1:
                gt_classes[i, j, class_id] = 1.0
    from torchvision.ops import sigmoid_focal_loss  # (a dict lookup after the first call)

    loss_cls = sigmoid_focal_loss(
        inputs=pred_cls_logits, targets=gt_classes, reduction="none"
    )
    loss_box = 0.25 * F.l1_loss(pred_boxreg_deltas, matched_gt_deltas, reduction="none")
    loss_box[matched_gt_deltas < 0] *= 0.0
    gt_centerness = seed_style_centerness(matched_gt_deltas.reshape(-1, 4))
    gt_centerness = gt_centerness.reshape(batch, -1, 1)
    loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr_logits, gt_centerness, reduction="none")
    loss_ctr[gt_centerness < 0] *= 0.0
    losses_out = {
        "loss_cls": loss_cls.sum() / (normalizer * batch),
        "loss_box": loss_box.sum() / (normalizer * batch),
        "loss_ctr": loss_ctr.sum() / (normalizer * batch),
    }
    return losses_out, normalizer


def seed_style_inference_one_image(
    locations_per_fpn_level,
    strides_per_fpn_level,
    pred_cls_logits,
    pred_boxreg_deltas,
    pred_ctr_logits,
    image_size,
    score_thresh=0.3,
    nms_thresh=0.5,
    *,
    image=0,
    class_spec_nms=None,
):
    """SEED-STYLE (course code) ``FCOS.inference`` for image ``image`` of the batch.

    A Python loop over levels: score, best class, threshold, decode, clip, then class
    NMS over the levels. ``class_spec_nms`` defaults to ``torchvision.ops.batched_nms``
    (the course's offset trick); pass :func:`detops.class_spec_nms` for exact tie rules.
    The course's in-place ``sigmoid_`` of the predictions is done out of place here.
    """
    if class_spec_nms is None:
        from torchvision.ops import batched_nms

        class_spec_nms = batched_nms
    height, width = image_size
    boxes_per_level, classes_per_level, scores_per_level = [], [], []
    for level_name in locations_per_fpn_level:
        level_locations = locations_per_fpn_level[level_name]
        level_cls_logits = pred_cls_logits[level_name][image]
        level_deltas = pred_boxreg_deltas[level_name][image]
        level_ctr_logits = pred_ctr_logits[level_name][image]
        level_pred_scores = torch.sqrt(level_cls_logits.sigmoid() * level_ctr_logits.sigmoid())
        level_pred_scores, level_pred_classes = level_pred_scores.max(dim=1)
        keep = level_pred_scores > score_thresh
        level_pred_scores = level_pred_scores[keep]
        level_pred_classes = level_pred_classes[keep]
        level_pred_boxes = deltas.fcos_apply_deltas_to_locations(
            level_deltas[keep], level_locations[keep], strides_per_fpn_level[level_name]
        )
        level_pred_boxes[:, 0].clamp_(0, width)
        level_pred_boxes[:, 1].clamp_(0, height)
        level_pred_boxes[:, 2].clamp_(0, width)
        level_pred_boxes[:, 3].clamp_(0, height)
        boxes_per_level.append(level_pred_boxes)
        classes_per_level.append(level_pred_classes)
        scores_per_level.append(level_pred_scores)
    boxes_all = torch.cat(boxes_per_level)
    classes_all = torch.cat(classes_per_level)
    scores_all = torch.cat(scores_per_level)
    keep = class_spec_nms(boxes_all, scores_all, classes_all, nms_thresh)
    return boxes_all[keep], classes_all[keep], scores_all[keep]


def seed_style_inference(*args, class_spec_nms=None, **kwargs):
    """SEED-STYLE: :func:`seed_style_inference_one_image` in a Python loop over images."""
    batch = next(iter(args[2].values())).shape[0]
    return [
        seed_style_inference_one_image(*args, image=b, class_spec_nms=class_spec_nms, **kwargs)
        for b in range(batch)
    ]


# ----------------------------------------------------------------------------------------
# fcos benchmarks
# ----------------------------------------------------------------------------------------


def random_head_outputs(locations, batch, num_classes, device, seed=0, cls_mean=0.0):
    """Per level ``[B, HW, C]`` class logits (normal around ``cls_mean``), ``[B, HW, 4]``
    deltas and ``[B, HW, 1]`` centerness logits, as an FCOS head would give them."""
    gen = torch.Generator().manual_seed(seed)
    cls, box, ctr = {}, {}, {}
    for level, loc in locations.items():
        n = len(loc)
        cls[level] = (torch.randn(batch, n, num_classes, generator=gen) * 1.5 + cls_mean).to(device)
        box[level] = (torch.rand(batch, n, 4, generator=gen) * 5.5 + 0.5).to(device)
        ctr[level] = torch.randn(batch, n, 1, generator=gen).to(device)
    return cls, box, ctr


def concat_levels(per_level):
    """The levels of a ``{level: [B, HW, ...]}`` dict concatenated along ``L``."""
    return torch.cat(list(per_level.values()), dim=1)


def _fcos_loss_bench(height, width):
    """Matching + deltas + centerness targets + loss, forward and backward, B = 16."""

    def setup(device):
        locations, gt, flat_locations, flat_strides = benchmark_inputs(
            height, width, A4_STRIDES, rows=40, real=(1, 8), device=device
        )
        cls, box, ctr = (concat_levels(t) for t in random_head_outputs(locations, 16, 20, device))
        leaves = [t.detach().requires_grad_() for t in (cls, box, ctr)]
        cls_leaf, box_leaf, ctr_leaf = leaves

        # grad of several outputs: the gradient of their sum
        def detops_step():
            matched = concat_levels(matching.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
            gt_deltas = deltas.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
            out, _ = losses.fcos_loss(cls_leaf, box_leaf, ctr_leaf, matched, gt_deltas, 150.0)
            return torch.autograd.grad(list(out.values()), leaves)

        def seed_step():
            out, _ = seed_style_fcos_loss(
                cls_leaf, box_leaf, ctr_leaf, locations, A4_STRIDES, gt, 150.0
            )
            return torch.autograd.grad(list(out.values()), leaves)

        return BenchFunctions(detops=detops_step, peer=seed_step)

    return setup


def _inference_bench(height, width, batch):
    def setup(device):
        from detops.locations import get_fpn_location_coords

        shapes = {k: (-(-height // s), -(-width // s)) for k, s in A4_STRIDES.items()}
        locations = get_fpn_location_coords(shapes, A4_STRIDES, device=device)
        # Class logits ~ N(-5.5, 1.5): ~80 candidates above 0.3 per image before NMS.
        cls, box, ctr = random_head_outputs(locations, batch, 20, device, seed=1, cls_mean=-5.5)
        args = (locations, A4_STRIDES, cls, box, ctr, (height, width), 0.3, 0.5)
        return BenchFunctions(
            detops=lambda: inference.fcos_inference(*args),
            peer=lambda: seed_style_inference(*args),
        )

    return setup


BENCHMARKS = BENCHMARKS + (
    BenchCase(
        "fcos_loss",
        "A4 16x224x224 C=20",
        "seed-style per-image targets + one-hot double loop + torchvision focal",
        _fcos_loss_bench(224, 224),
        notes="matching + deltas + centerness + loss, forward and backward; 40 GT rows, 1-8 real",
    ),
    BenchCase(
        "fcos_inference",
        "A4 16x224x224 C=20",
        "seed-style per-image, per-level loop + torchvision.ops.batched_nms",
        _inference_bench(224, 224, 16),
        notes="~80 candidates per image above score 0.3 before NMS",
    ),
)
