"""FCOS inference post-processing, batched over images: scores, decoding, clipping, NMS."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import (
    check_floating,
    check_int,
    check_level_keys,
    check_same_device,
    check_size_pair,
    check_tensor,
    check_unit_interval,
    is_finite,
    shape_str,
)
from ._serial import under_function_transform
from .boxes import clip_boxes_to_image
from .deltas import fcos_apply_deltas_to_locations
from .nms import batched_nms_per_image

__all__ = ["FCOSDetections", "fcos_inference"]

_OP = "fcos_inference"


class FCOSDetections(NamedTuple):
    """Detections of a batch, padded to the largest count ``K`` of one image.

    Image ``b`` has ``counts[b]`` detections: rows ``[:counts[b]]`` of ``boxes[b]``,
    ``class_ids[b]`` and ``scores[b]``, sorted by descending score. Rows past the count are
    padding: boxes 0, class ids -1, scores 0 (a real score is ``> score_thresh >= 0``).

    Attributes:
        boxes (Tensor[B, K, 4]): XYXY, absolute pixels, clipped to the image.
        class_ids (Tensor[B, K]): int64 class ids, -1 on padding. (``classes``, its name
            before 0.2, still reads it, with a ``DeprecationWarning``.)
        scores (Tensor[B, K]): ``sqrt(sigmoid(cls) * sigmoid(ctr))`` of the box.
        counts (Tensor[B]): int64 number of detections per image.
    """

    boxes: Tensor
    class_ids: Tensor
    scores: Tensor
    counts: Tensor

    @property
    def classes(self) -> Tensor:
        warnings.warn(
            "FCOSDetections.classes is deprecated and will be removed in detops 0.3; "
            "use FCOSDetections.class_ids",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.class_ids

    def per_image(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``[(boxes [K_b, 4], class_ids [K_b], scores [K_b]), ...]``, one per image (views).

        Reads ``counts`` on the host (a sync on CUDA).
        """
        return [
            (self.boxes[b, :k], self.class_ids[b, :k], self.scores[b, :k])
            for b, k in enumerate(self.counts.tolist())
        ]

    def as_dicts(self) -> list[dict[str, Tensor]]:
        """``[{"boxes", "labels", "scores"}, ...]`` per image (views): torchvision's
        detection format, whose ``"labels"`` are the class ids; what
        :func:`detops.metrics.mean_average_precision` reads. The key ``"classes"`` (before
        0.2) still reads the class ids, with a ``DeprecationWarning``.
        """
        return [
            _DetectionDict(boxes=boxes, labels=class_ids, scores=scores)
            for boxes, class_ids, scores in self.per_image()
        ]


class _DetectionDict(dict):
    """A detection dict that still answers the key ``"classes"`` (deprecated)."""

    def __missing__(self, key: str) -> Tensor:
        if key == "classes":
            warnings.warn(
                'the "classes" key of FCOSDetections.as_dicts() is deprecated and will be '
                'removed in detops 0.3; use "labels"',
                DeprecationWarning,
                stacklevel=2,
            )
            return self["labels"]
        raise KeyError(key)


def _threshold_below(threshold: float, dtype: torch.dtype) -> float | Tensor:
    """The largest ``dtype`` value ``t <= threshold``, so that for ``x`` in ``dtype``
    ``x > t`` exactly when ``x > threshold`` (torch would round the threshold to nearest)."""
    if dtype == torch.float64:
        return float(threshold)
    exact = torch.tensor(threshold, dtype=torch.float64)
    t = exact.to(dtype)
    if torch.compiler.is_compiling():
        # A 0-d tensor, not a float: the threshold may be a dynamic torch.SymFloat, and
        # reading a traced tensor back as a float is data-dependent.
        return torch.where(t.double() > exact, torch.nextafter(t, t.new_tensor(-math.inf)), t)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def _summary(value: object) -> str:
    """A value for an error message: a tensor as its type, shape and dtype (and its value
    when it holds one number), never all of its elements."""
    if isinstance(value, Tensor):
        text = f"a tensor of shape {shape_str(value)} and dtype {value.dtype}"
        return text + f" ({value.item()!r})" if value.numel() == 1 else text
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def _check_optional_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    return check_int(_OP, name, value, minimum=0, expected="None or an int >= 0")


def _validate(locations, strides, cls, deltas, ctr) -> tuple[int, int]:
    """Check the per-level inputs; return ``(B, C)``."""
    for name, value in (
        ("locations_per_fpn_level", locations),
        ("strides_per_fpn_level", strides),
        ("pred_cls_logits", cls),
        ("pred_boxreg_deltas", deltas),
        ("pred_ctr_logits", ctr),
    ):
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{_OP}: {name} must be a mapping from level name to value, "
                f"got {type(value).__name__}"
            )
    if not locations:
        raise ValueError(f"{_OP}: locations_per_fpn_level must name at least one level, got {{}}")
    missing = [level for level in locations if level not in strides]
    if missing:
        raise ValueError(
            f"{_OP}: strides_per_fpn_level must name every level of locations_per_fpn_level "
            f"({sorted(locations)}), got {sorted(strides)}"
        )
    for name, value in (
        ("pred_cls_logits", cls),
        ("pred_boxreg_deltas", deltas),
        ("pred_ctr_logits", ctr),
    ):
        check_level_keys(_OP, name, value, locations, "locations_per_fpn_level")
    batch = num_classes = None
    device = None
    for level, loc in locations.items():
        stride = strides[level]
        if (
            isinstance(stride, bool)
            or not isinstance(stride, (int, float))
            or not (stride > 0 and is_finite(float(stride)))
        ):
            raise ValueError(
                f"{_OP}: strides_per_fpn_level[{level!r}] must be a positive finite number, "
                f"got {_summary(stride)}"
            )
        arg = f"locations_per_fpn_level[{level!r}]"
        check_tensor(_OP, arg, loc)
        check_floating(_OP, arg, loc)
        if loc.dim() != 2 or loc.shape[1] != 2:
            raise ValueError(f"{_OP}: {arg} must have shape [HW, 2], got {shape_str(loc)}")
        num_loc = loc.shape[0]
        for name, table, last, pattern in (
            ("pred_cls_logits", cls, None, "[B, HW, C]"),
            ("pred_boxreg_deltas", deltas, 4, "[B, HW, 4]"),
            ("pred_ctr_logits", ctr, 1, "[B, HW, 1]"),
        ):
            arg = f"{name}[{level!r}]"
            value = check_tensor(_OP, arg, table[level])
            check_floating(_OP, arg, value)
            if value.dim() != 3 or (last is not None and value.shape[2] != last):
                raise ValueError(f"{_OP}: {arg} must have shape {pattern}, got {shape_str(value)}")
            if value.shape[1] != num_loc:
                raise ValueError(
                    f"{_OP}: {arg} must have HW = {num_loc} rows like {level!r}'s locations, "
                    f"got {shape_str(value)}"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(
                    f"{_OP}: every prediction must have the same batch size B = {batch}, "
                    f"got {arg} of shape {shape_str(value)}"
                )
            if last is None:
                if value.shape[2] < 1:
                    raise ValueError(f"{_OP}: {arg} must have C >= 1, got {shape_str(value)}")
                if num_classes is None:
                    num_classes = value.shape[2]
                elif value.shape[2] != num_classes:
                    raise ValueError(
                        f"{_OP}: every level must have the same number of classes C = "
                        f"{num_classes}, got {arg} of shape {shape_str(value)}"
                    )
            check_same_device(_OP, **{f"locations_per_fpn_level[{level!r}]": loc, arg: value})
            if device is None:
                device = value.device
            elif value.device != device:
                raise ValueError(
                    f"{_OP}: all tensors must be on one device, got {arg} on {value.device} "
                    f"and others on {device}"
                )
    assert batch is not None and num_classes is not None  # set by the first of >= 1 levels
    return batch, num_classes


def fcos_inference(
    locations_per_fpn_level: Mapping[str, Tensor],
    strides_per_fpn_level: Mapping[str, int | float],
    pred_cls_logits: Mapping[str, Tensor],
    pred_boxreg_deltas: Mapping[str, Tensor],
    pred_ctr_logits: Mapping[str, Tensor],
    image_size: tuple[int, int],
    score_thresh: float = 0.3,
    nms_thresh: float = 0.5,
    *,
    topk_candidates: int | None = None,
    max_detections: int | None = None,
) -> FCOSDetections:
    """FCOS post-processing of the head's outputs (the course code's, batched over images).

    Per level, for every image and location:

    1. score per class ``sqrt(sigmoid(cls) * sigmoid(ctr))``;
    2. the best class: the highest score (ties: the lowest class id, as ``torch.max``);
    3. a candidate needs a best score strictly above ``score_thresh`` (so a threshold of
       1 keeps nothing);
    4. with ``topk_candidates=k``, only the ``k`` best candidates of the level (ties at
       the ``k``-th score: the lower location index wins) stay, in location order;
    5. its box is ``fcos_apply_deltas_to_locations(deltas, location, stride)`` (negative
       deltas count as 0) ...
    6. ... clipped to the image: x to ``[0, W]``, y to ``[0, H]``.

    Then, per image over all levels: class-specific NMS (a box is suppressed by a kept box
    of the same class with IoU ``> nms_thresh``; see :func:`detops.class_spec_nms`), the
    kept boxes sorted by descending score (ties: earlier level, then lower location index),
    and cut to the first ``max_detections``.

    Image ``b`` of the result equals the course code's per-image ``inference`` (which
    handles B = 1 only) on image ``b``, up to the last bit of a score (vectorized
    ``sigmoid``/``sqrt`` round by lane position, which depends on the batch shape); at
    B = 1 it is bit for bit the course loop. No Python loop runs over images or locations (one
    runs over levels); the NMS reads its candidate count back from the device (see
    :func:`detops.batched_nms_per_image`), since output sizes depend on the data. Inputs are
    never modified (the course code's ``sigmoid_`` was in place).

    Args:
        locations_per_fpn_level (Mapping[str, Tensor[HW, 2]]): ``(xc, yc)`` per level,
            absolute pixels (:func:`detops.get_fpn_location_coords`).
        strides_per_fpn_level (Mapping[str, number]): stride of every level (> 0).
        pred_cls_logits (Mapping[str, Tensor[B, HW, C]]): class logits per level.
        pred_boxreg_deltas (Mapping[str, Tensor[B, HW, 4]]): LTRB deltas in strides.
        pred_ctr_logits (Mapping[str, Tensor[B, HW, 1]]): centerness logits.
        image_size (tuple[int, int]): ``(height, width)`` of the input images.
        score_thresh (float): in [0, 1]; candidates need a score ``> score_thresh``.
        nms_thresh (float): IoU threshold in [0, 1].
        topk_candidates (int, optional): at most this many candidates per level and image.
        max_detections (int, optional): at most this many detections per image.

    Returns:
        FCOSDetections: padded ``boxes [B, K, 4]``, ``class_ids [B, K]`` (int64, -1 padding),
        ``scores [B, K]`` and ``counts [B]``; ``K`` is the largest count of one image (0
        when nothing is detected). Use ``.per_image()`` or ``.as_dicts()`` for per-image
        tensors. Boxes have the promoted dtype of deltas and locations; scores the dtype of
        the class logits (float16/bfloat16 scores are computed in float32, then cast). NMS
        runs on boxes and scores in the promotion of those two dtypes (float16 boxes and
        float32 scores: float32).
        Device: that of the inputs.
    """
    batch, _ = _validate(
        locations_per_fpn_level,
        strides_per_fpn_level,
        pred_cls_logits,
        pred_boxreg_deltas,
        pred_ctr_logits,
    )
    height, width = check_size_pair(_OP, "image_size", image_size)
    check_unit_interval(_OP, "score_thresh", score_thresh)
    check_unit_interval(_OP, "nms_thresh", nms_thresh)
    topk = _check_optional_count("topk_candidates", topk_candidates)
    max_det = _check_optional_count("max_detections", max_detections)

    boxes_per_level, scores_per_level, class_ids_per_level = [], [], []
    with torch.no_grad():
        for level, locations in locations_per_fpn_level.items():
            cls = pred_cls_logits[level].detach()
            ctr = pred_ctr_logits[level].detach()
            deltas = pred_boxreg_deltas[level].detach()
            compute = torch.promote_types(cls.dtype, torch.float32)
            scores = torch.sigmoid(cls.to(compute)).mul_(torch.sigmoid(ctr.to(compute))).sqrt_()
            best, class_ids = scores.max(dim=2)  # [B, HW]; first maximum on ties
            best = torch.where(best > _threshold_below(score_thresh, compute), best, -math.inf)
            locations = locations.detach()
            if topk is not None and topk < best.shape[1]:
                # Stable descending sort: at equal scores the lower location keeps its place;
                # then back to location order, so NMS ties resolve as without top-k.
                order = torch.sort(best, dim=1, descending=True, stable=True).indices[:, :topk]
                order = torch.sort(order, dim=1).values
                best = best.gather(1, order)
                class_ids = class_ids.gather(1, order)
                deltas = deltas.gather(1, order.unsqueeze(2).expand(-1, -1, 4))
                locations = locations[order]  # [B, k, 2]
            boxes = fcos_apply_deltas_to_locations(deltas, locations, strides_per_fpn_level[level])
            boxes = clip_boxes_to_image(boxes, (height, width))
            # Non-candidates never reach NMS; zero their boxes so NaN/inf there cannot matter.
            non_candidates = (best == -math.inf).unsqueeze(2)
            if under_function_transform():  # (vmap: the boxes may be unbatched, best not)
                boxes = boxes.masked_fill(non_candidates, 0.0)
            else:
                boxes = boxes.masked_fill_(non_candidates, 0.0)
            boxes_per_level.append(boxes)
            scores_per_level.append(best)
            class_ids_per_level.append(class_ids)
        boxes = torch.cat(boxes_per_level, dim=1)
        scores = torch.cat(scores_per_level, dim=1)
        class_ids = torch.cat(class_ids_per_level, dim=1)
        # NMS takes one dtype: boxes and scores in their promotion (both convert exactly).
        nms_dtype = torch.promote_types(boxes.dtype, scores.dtype)
        keep = batched_nms_per_image(
            boxes.to(nms_dtype),
            scores.to(nms_dtype),
            class_ids,
            float(nms_thresh),
            max_detections=max_det,
        )  # [B, K], -1 padded, by descending score
        valid = keep >= 0
        index = keep.clamp(min=0)
        out_boxes = boxes.gather(1, index.unsqueeze(2).expand(-1, -1, 4))
        out_boxes = out_boxes.masked_fill_(~valid.unsqueeze(2), 0.0)
        out_scores = torch.where(valid, scores.gather(1, index), 0.0)
        out_class_ids = torch.where(valid, class_ids.gather(1, index), -1)
        counts = valid.sum(dim=1)
    score_dtype = next(iter(pred_cls_logits.values())).dtype
    return FCOSDetections(out_boxes, out_class_ids, out_scores.to(score_dtype), counts)
