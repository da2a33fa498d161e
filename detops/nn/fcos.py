"""FCOS: the one-stage detector, as a thin module over the detops ops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import shape_str
from ..deltas import fcos_get_deltas_from_locations
from ..distributed import global_positives_per_image, is_distributed
from ..inference import FCOSDetections, fcos_inference
from ..locations import get_fpn_location_coords
from ..losses import fcos_loss
from ..matching import fcos_match_locations_to_gt
from .backbone import BackboneWeights, DetectorBackboneWithFPN, check_images, parameter_dtype
from .head import FCOSPredictionNetwork

__all__ = ["FCOS"]

_NAME = "FCOS"


def _cat_levels(per_level: Mapping[str, Tensor]) -> Tensor:
    """Concatenate per-level ``[B, L_i, ...]`` tensors along the location axis."""
    return torch.cat(list(per_level.values()), dim=1)


class FCOS(nn.Module):
    """FCOS detector: RegNetX-400MF + FPN backbone, shared head, detops ops for the rest.

    The module holds parameters and configuration only; ``forward`` is the paper's figure
    written in ops: :func:`~detops.get_fpn_location_coords`,
    :func:`~detops.matching.fcos_match_locations_to_gt`,
    :func:`~detops.deltas.fcos_get_deltas_from_locations`, :func:`~detops.losses.fcos_loss`
    (training) and :func:`~detops.inference.fcos_inference` (eval). The loss normalizer (an
    EMA of positive locations per image, the course code's ``_normalizer``, starting at 150) is a
    registered buffer, so it is saved with the ``state_dict`` and restored with it; the loss
    op gets its current value and returns the next one.

    Args:
        num_classes (int): foreground classes; GT classes lie in ``[0, num_classes)``.
        fpn_channels (int): channels of every FPN level.
        stem_channels (int or Sequence[int]): channels of each head stem conv.
        backbone_weights: see :class:`DetectorBackboneWithFPN` (None: random init).
        center_sampling_radius (float, optional): passed to the matcher (None: off, as in
            the course code).
        normalizer_momentum (float): EMA momentum of the loss normalizer (the course
            code's 0.9).
        score_thresh, nms_thresh (float): default inference thresholds (the course code's
            0.3, 0.5).
        topk_candidates, max_detections (int, optional): passed to ``fcos_inference``.
    """

    loss_normalizer: Tensor

    def __init__(
        self,
        num_classes: int,
        fpn_channels: int,
        stem_channels: int | Sequence[int],
        backbone_weights: BackboneWeights = None,
        *,
        center_sampling_radius: float | None = None,
        normalizer_momentum: float = 0.9,
        score_thresh: float = 0.3,
        nms_thresh: float = 0.5,
        topk_candidates: int | None = None,
        max_detections: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = DetectorBackboneWithFPN(fpn_channels, weights=backbone_weights)
        self.pred_net = FCOSPredictionNetwork(num_classes, fpn_channels, stem_channels)
        self.center_sampling_radius = center_sampling_radius
        self.normalizer_momentum = normalizer_momentum
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.max_detections = max_detections
        self.register_buffer("loss_normalizer", torch.tensor(150.0))

    def _check_inputs(self, images: Tensor, gt_boxes: Tensor | None) -> Tensor | None:
        """The checked ``gt_boxes`` in training mode (required there), None in eval mode."""
        check_images(_NAME, images, parameter_dtype(self))
        if images.shape[0] == 0:  # (the backbone takes it; the head's outputs would not)
            raise ValueError(f"{_NAME}: images must hold at least one image, got [0, 3, H, W]")
        if not self.training:
            return None
        if gt_boxes is None:
            raise ValueError(f"{_NAME}: gt_boxes is required in training mode, got None")
        if not isinstance(gt_boxes, Tensor) or not gt_boxes.is_floating_point():
            raise TypeError(
                f"{_NAME}: gt_boxes must be a floating tensor [B, N, 5], got "
                f"{getattr(gt_boxes, 'dtype', type(gt_boxes).__name__)}"
            )
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 5 or gt_boxes.shape[0] != images.shape[0]:
            raise ValueError(
                f"{_NAME}: gt_boxes must have shape [B, N, 5] with B = {images.shape[0]} "
                f"(the images' batch), got {shape_str(gt_boxes)}"
            )
        if not bool(torch.isfinite(gt_boxes).all()):
            raise ValueError(
                f"{_NAME}: gt_boxes must not contain NaN or inf, got non-finite entries"
            )
        real = gt_boxes[..., 4] != -1
        inverted = real & (
            (gt_boxes[..., 2] < gt_boxes[..., 0]) | (gt_boxes[..., 3] < gt_boxes[..., 1])
        )
        if bool(inverted.any()):
            where = inverted.nonzero()[0].tolist()
            raise ValueError(
                f"{_NAME}: gt_boxes must be XYXY with x2 >= x1 and y2 >= y1, got an inverted "
                f"box {gt_boxes[where[0], where[1], :4].tolist()} at [image {where[0]}, "
                f"row {where[1]}]"
            )
        classes = gt_boxes[..., 4][real]
        bad = (classes < 0) | (classes >= self.num_classes) | (classes != classes.round())
        if bool(bad.any()):
            raise ValueError(
                f"{_NAME}: gt_boxes classes must be integers in [0, {self.num_classes}) or -1 "
                f"for padding, got {classes[bad][0].item()}"
            )
        return gt_boxes

    def forward(
        self,
        images: Tensor,
        gt_boxes: Tensor | None = None,
        test_score_thresh: float | None = None,
        test_nms_thresh: float | None = None,
    ) -> dict[str, Tensor] | FCOSDetections:
        """Losses in training mode, detections in eval mode.

        Args:
            images (Tensor[B, 3, H, W]): normalized floating images of the model's dtype
                (any floating dtype under ``torch.autocast``); another shape or an empty
                batch raises ``ValueError``, an integer dtype (e.g. uint8 pixels) or
                another floating dtype ``TypeError``.
            gt_boxes (Tensor[B, N, 5]): training only; ``(x1, y1, x2, y2, class)`` rows in
                absolute pixels of ``images``, padding rows all -1. NaN or inf, an inverted box
                (``x2 < x1`` or ``y2 < y1``) or a class outside ``[0, num_classes)`` raises
                ``ValueError`` before any computation.
            test_score_thresh, test_nms_thresh (float, optional): eval only; default to the
                module's ``score_thresh`` and ``nms_thresh``.

        Returns:
            Training: ``{"loss_cls", "loss_box", "loss_ctr"}`` scalars (the normalizer buffer
            is updated). Eval: :class:`~detops.inference.FCOSDetections`, the padded
            per-image ``boxes [B, K, 4]`` (XYXY, absolute pixels, clipped to the image),
            ``classes [B, K]``, ``scores [B, K]`` (descending) and ``counts [B]``;
            ``.as_dicts()`` gives the per-image ``boxes``/``labels``/``scores`` dicts that
            :func:`detops.metrics.mean_average_precision` reads.
        """
        training_gt_boxes = self._check_inputs(images, gt_boxes)
        strides = self.backbone.fpn_strides
        feats = self.backbone(images)
        pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits = self.pred_net(feats)
        locations = get_fpn_location_coords(
            {level: feat.shape for level, feat in feats.items()},
            strides,
            dtype=images.dtype,
            device=images.device,
        )
        if training_gt_boxes is None:  # eval mode
            return self._detections(
                images,
                locations,
                pred_cls_logits,
                pred_boxreg_deltas,
                pred_ctr_logits,
                test_score_thresh,
                test_nms_thresh,
            )

        matched_boxes = fcos_match_locations_to_gt(
            locations,
            strides,
            training_gt_boxes,
            center_sampling_radius=self.center_sampling_radius,
        )
        matched_deltas = {
            level: fcos_get_deltas_from_locations(locations[level], boxes, strides[level])
            for level, boxes in matched_boxes.items()
        }
        all_matched = _cat_levels(matched_boxes)
        losses, normalizer = fcos_loss(
            _cat_levels(pred_cls_logits),
            _cat_levels(pred_boxreg_deltas),
            _cat_levels(pred_ctr_logits),
            all_matched,
            _cat_levels(matched_deltas),
            self.loss_normalizer,
            momentum=self.normalizer_momentum,
            # Under DDP the EMA follows the positives of the global batch (one all-reduce),
            # so every rank normalizes as one process with the whole batch would.
            positives_per_image=global_positives_per_image(all_matched)
            if is_distributed()
            else None,
        )
        with torch.no_grad():
            self.loss_normalizer.copy_(normalizer)
        return losses

    def _detections(
        self,
        images: Tensor,
        locations: dict[str, Tensor],
        pred_cls_logits: dict[str, Tensor],
        pred_boxreg_deltas: dict[str, Tensor],
        pred_ctr_logits: dict[str, Tensor],
        score_thresh: float | None,
        nms_thresh: float | None,
    ) -> FCOSDetections:
        return fcos_inference(
            locations,
            self.backbone.fpn_strides,
            pred_cls_logits,
            pred_boxreg_deltas,
            pred_ctr_logits,
            (images.shape[-2], images.shape[-1]),
            self.score_thresh if score_thresh is None else score_thresh,
            self.nms_thresh if nms_thresh is None else nms_thresh,
            topk_candidates=self.topk_candidates,
            max_detections=self.max_detections,
        )
