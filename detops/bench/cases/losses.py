"""Benchmarks of detops.losses and detops.inference, and their course-style peers.

The ``seed_style_*`` functions below are the course code's way of doing the same work,
kept as the peer that benchmarks and equality tests measure detops against. They are
deliberately *not* good code: per-image loops, a Python double loop building the one-hot,
``.item()`` on the normalizer, in-place ``sigmoid_`` of the course inference (copied
inputs here). Do not use them outside tests and benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

import reference.losses as ref_losses
from detops import deltas, inference, losses, matching
from detops.testing.inputs import A4_STRIDES

from ._case import BenchCase, BenchFunctions
from .targets import benchmark_inputs, seed_style_centerness, seed_style_deltas, seed_style_match

__all__ = [
    "BENCHMARKS",
    "seed_style_fcos_loss",
    "seed_style_inference_one_image",
    "seed_style_inference",
    "random_head_outputs",
    "concat_levels",
]

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
# course-style peers (the course code, for equality tests and benchmarks; NOT for use)
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

    loss_cls = sigmoid_focal_loss(inputs=pred_cls_logits, targets=gt_classes, reduction="none")
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
        "course-style per-image targets + one-hot double loop + torchvision focal",
        _fcos_loss_bench(224, 224),
        notes="matching + deltas + centerness + loss, forward and backward; 40 GT rows, 1-8 real",
    ),
    BenchCase(
        "fcos_inference",
        "A4 16x224x224 C=20",
        "course-style per-image, per-level loop + torchvision.ops.batched_nms",
        _inference_bench(224, 224, 16),
        notes="~80 candidates per image above score 0.3 before NMS",
    ),
)
