"""Detection mean average precision: the VOC devkit's protocol and pycocotools' COCOeval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ._checks import (
    check_bool,
    check_int,
    check_integer_dtype,
    check_tensor,
    check_unit_interval,
    shape_str,
)
from ._serial import owner_index, searchsorted

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_IOU_THRESHOLDS",
    "COCO_MAX_DETECTIONS",
    "COCO_RECALL_THRESHOLDS",
    "mean_average_precision",
    "gt_dicts_from_padded",
]

_OP = "mean_average_precision"

#: IoU 0.50, 0.55, ..., 0.95 as round decimals, for ``protocol="voc"`` over an IoU range.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _numpy_linspace(start: float, stop: float, num: int) -> tuple[float, ...]:
    """``np.linspace(start, stop, num)`` value for value (``i * step + start``, last = stop)."""
    step = (stop - start) / (num - 1)
    return (*(i * step + start for i in range(num - 1)), stop)


# pycocotools' Params.setDetParams, bit for bit: its IoU thresholds are np.linspace(.5, .95,
# 10), whose 9th value is 0.8999999999999999, not 0.9 (an IoU one ulp under 0.9 passes).
_COCO_IOU = _numpy_linspace(0.5, 0.95, 10)
#: The 101 recall points of COCOeval, ``np.linspace(0, 1, 101)`` (``0.07000000000000001``).
COCO_RECALL_THRESHOLDS: tuple[float, ...] = _numpy_linspace(0.0, 1.0, 101)
#: COCOeval's area ranges (all, small, medium, large), inclusive at both ends.
COCO_AREA_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 1e5**2),
    (0.0, 32.0**2),
    (32.0**2, 96.0**2),
    (96.0**2, 1e5**2),
)
#: COCOeval's ``maxDets``: detections kept per image and class.
COCO_MAX_DETECTIONS: tuple[int, ...] = (1, 10, 100)
_PROTOCOLS = ("voc", "coco")


def _check_image_dict(
    op: str, arg: str, index: int, item: object, keys: tuple[str, ...], optional=()
) -> dict[str, Tensor]:
    where = f"{arg}[{index}]"
    if not isinstance(item, Mapping):
        raise TypeError(
            f"{op}: {where} must be a dict with keys {list(keys)}, got {type(item).__name__}"
        )
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{op}: {where} must have keys {list(keys)}, got {sorted(item)}")
    if arg == "ground_truths" and "difficult" in item:  # ignored, they would count as misses
        raise ValueError(
            f"{op}: {where} has a 'difficult' key, which is not supported (the devkit leaves "
            "difficult GT out of both true and false positives; this function does not): "
            "remove those GT boxes, or the key to count them as ordinary GT"
        )
    out = {k: check_tensor(op, f"{where}[{k!r}]", item[k]) for k in (*keys, *optional) if k in item}
    boxes = out["boxes"]
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: {where}['boxes'] must have shape [K, 4], got {shape_str(boxes)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{op}: {where}['boxes'] must have a floating dtype, got {boxes.dtype}")
    count = boxes.shape[0]
    labels = out["labels"]
    if labels.dim() != 1 or labels.shape[0] != count:
        raise ValueError(
            f"{op}: {where}['labels'] must have shape [{count}] (one per box), "
            f"got {shape_str(labels)}"
        )
    check_integer_dtype(op, f"{where}['labels']", labels)
    if "scores" in out:
        scores = out["scores"]
        if scores.dim() != 1 or scores.shape[0] != count:
            raise ValueError(
                f"{op}: {where}['scores'] must have shape [{count}] (one per box), "
                f"got {shape_str(scores)}"
            )
        if not scores.is_floating_point():
            raise TypeError(
                f"{op}: {where}['scores'] must have a floating dtype, got {scores.dtype}"
            )
    for key in ("iscrowd", "area"):
        if key not in out:
            continue
        value = out[key]
        if value.dim() != 1 or value.shape[0] != count:
            raise ValueError(
                f"{op}: {where}[{key!r}] must have shape [{count}] (one per box), "
                f"got {shape_str(value)}"
            )
        if key == "iscrowd" and (value.is_floating_point() or value.is_complex()):
            raise TypeError(
                f"{op}: {where}['iscrowd'] must have an integer or bool dtype, got {value.dtype}"
            )
        if key == "area" and not value.is_floating_point():
            raise TypeError(f"{op}: {where}['area'] must have a floating dtype, got {value.dtype}")
    return out


def _listed(iou_thresholds: object) -> tuple:
    """``iou_thresholds`` as a tuple of its values: a sequence (not a string), or a 1-D
    NumPy array or tensor (``np.linspace(0.5, 0.95, 10)``), read as Python numbers."""
    values = iou_thresholds
    if hasattr(values, "tolist") and getattr(values, "ndim", None) == 1:
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"{_OP}: iou_thresholds must be None or a sequence of floats in [0, 1] (a list, "
            f"tuple, or 1-D array), got {type(iou_thresholds).__name__}"
        )
    return tuple(values)


def _group_starts(keys: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per key value in ``[0, size)``: where its run starts in ``sort(keys)`` and its count."""
    counts = torch.bincount(keys, minlength=size)
    return torch.cumsum(counts, 0) - counts, counts


def _pair_iou(a: Tensor, b: Tensor, plus_one: float = 0.0) -> Tensor:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b`` (float64); 0 where the union is 0.

    ``plus_one`` (0 or 1) is added to every width and height (the VOC devkit's pixels)."""
    width = torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + plus_one
    height = torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + plus_one
    inter = width.clamp(min=0) * height.clamp(min=0)
    area_a = (a[:, 2] - a[:, 0] + plus_one).clamp(min=0) * (a[:, 3] - a[:, 1] + plus_one).clamp(
        min=0
    )
    area_b = (b[:, 2] - b[:, 0] + plus_one).clamp(min=0) * (b[:, 3] - b[:, 1] + plus_one).clamp(
        min=0
    )
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _candidate_pairs(det_key: Tensor, gt_key: Tensor, num_keys: int) -> tuple[Tensor, Tensor]:
    """All (detection, GT) pairs with the same key, detection-major; GT in index order.

    The GT are sorted on their key; a detection's candidates are the run of its own key."""
    gt_order = torch.sort(gt_key, stable=True).indices
    key_start, key_count = _group_starts(gt_key, num_keys)
    start, counts = key_start.index_select(0, det_key), key_count.index_select(0, det_key)
    pair_det = owner_index(counts)
    first_pair = torch.cumsum(counts, 0) - counts
    within = torch.arange(pair_det.shape[0], device=det_key.device) - first_pair.index_select(
        0, pair_det
    )
    pair_gt = gt_order.index_select(0, start.index_select(0, pair_det) + within)
    return pair_det, pair_gt


def mean_average_precision(
    detections: Sequence[Mapping[str, Tensor]],
    ground_truths: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    *,
    protocol: str = "voc",
    iou_thresholds: Sequence[float] | None = None,
    voc_plus_one: bool = False,
) -> dict[str, Tensor]:
    """Mean average precision over classes: the VOC devkit's protocol or COCO's (COCOeval).

    Inputs follow torchmetrics' ``MeanAveragePrecision`` convention: one dict per image,
    ``detections[i] = {"boxes": Tensor[K, 4], "labels": Tensor[K], "scores": Tensor[K]}``
    and ``ground_truths[i] = {"boxes": Tensor[G, 4], "labels": Tensor[G]}`` plus, for
    ``protocol="coco"``, the optional ``"iscrowd"`` ``[G]`` (integer or bool) and
    ``"area"`` ``[G]`` (float). Boxes are XYXY in the same absolute pixel frame, labels
    integers in ``[0, num_classes)``. Padded GT (rows of -1) must be removed first
    (:func:`gt_dicts_from_padded`). "Input order" below is image, then row.

    ``protocol="voc"`` (the default): the VOC devkit (``VOCevaldet.m``), per class and IoU
    threshold ``t``:

    1. The detections of the class over all images are sorted by score, descending, with
       a stable sort: tied scores keep input order (MATLAB's ``sort`` is stable).
    2. In that order, each detection picks the GT of its own image and class with the
       highest IoU (the first such GT on ties). It is a true positive if that IoU is
       ``>= t`` and no earlier detection took that GT; otherwise a false positive. There
       is no re-assignment: a detection whose best GT is taken is a false positive even
       if another free GT passes ``t`` (COCO's matcher would take it). Of two identical
       GT boxes of one class in one image, only the first can be matched.
    3. Precision and recall after every detection; recall counts every GT of the class,
       including those in images with no detection at all. With tied scores the result
       depends on the input order, as the devkit's does.
    4. AP = sum over recall steps of ``(r_k - r_{k-1}) * max_{k' >= k} p_{k'}`` (the
       precision envelope, "all-point interpolation", VOC 2010+).

    A class with GT but no detection has AP 0; a class without GT has AP NaN and is left
    out of the mean. The mean over an IoU range (``iou_thresholds``) is the mean of the
    per-threshold means. IoU is float64; a box with ``x2 < x1`` or ``y2 < y1`` has zero
    area; ``voc_plus_one`` adds 1 pixel to every width and height, as the devkit and the
    course's evaluation script do (``iw = min(x2) - max(x1) + 1``). ``iscrowd`` and
    ``area`` are not read.

    ``protocol="coco"``: pycocotools' ``COCOeval`` (iouType ``"bbox"``, default params;
    ``evaluate(); accumulate(); summarize()``), reproduced rule for rule:

    - Boxes become float64 and COCO's XYWH (``w = x2 - x1``); IoU follows ``maskUtils.iou``
      (zero unless both overlaps are ``> 0``); against a crowd GT the union is the
      detection's area. A detection's area is ``w * h``; a GT's is ``area`` when given,
      else ``w * h``.
    - Per image and class, detections are sorted by score with a stable sort (ties keep
      input order) and only the first 100 are kept; nothing sees the rest.
    - For each IoU threshold ``t`` in ``np.linspace(.5, .95, 10)`` and area range (all,
      small, medium, large: ``[0, 1e10]``, ``[0, 32²]``, ``[32², 96²]``, ``[96², 1e10]``,
      inclusive), a GT is ignored if it is crowd or its area is outside the range. In
      score order each detection takes, among the GT not yet matched (crowd GT stay
      free), a non-ignored GT if any has IoU ``>= min(t, 1 - 1e-10)``, else an ignored
      one; within that, the highest IoU, the last GT in input order on ties. A detection
      matched to an ignored GT, or unmatched with its area outside the range, is ignored.
    - Per class, area range and maxDets ``m`` in (1, 10, 100): the first ``m`` detections
      of each image, merged by score with a stable sort (ties: image order, then the
      per-image order), ignored ones dropped; ``recall = tp / n_gt`` (non-ignored GT),
      ``precision = tp / (tp + fp + eps)``, made monotone from the right, read at the 101
      recall points :data:`COCO_RECALL_THRESHOLDS` (first detection with recall ``>=``
      the point; 0 past the last). A class without non-ignored GT gets -1 and is left out
      of every mean; a mean over nothing is -1.

    There is no departure from pycocotools 2.0.11 (tests compare all 12 stats and the
    precision and recall arrays on generated sets with ties, crowd boxes, empty images,
    over 100 detections in an image and classes seen only in detections).

    Args:
        detections (list[dict]): per image, ``boxes [K, 4]`` (float), ``labels [K]``
            (integer), ``scores [K]`` (float, higher is more confident). ``K`` may be 0.
        ground_truths (list[dict]): per image, ``boxes [G, 4]``, ``labels [G]`` and for
            COCO optionally ``iscrowd [G]`` and ``area [G]``; same length as
            ``detections``. ``G`` may be 0. VOC's ``difficult`` flags are not supported: a
            ``"difficult"`` key raises ValueError (other extra keys are not read).
        num_classes (int): number of classes ``C``.
        iou_threshold (float): VOC only: the IoU a true positive needs (``>=``), in [0, 1].
        protocol (str): ``"voc"`` or ``"coco"``.
        iou_thresholds (sequence of float, optional): VOC only: several thresholds, each in
            [0, 1] (a list, a tuple or a 1-D array); it replaces ``iou_threshold``.
        voc_plus_one (bool): VOC only: widths and heights are ``x2 - x1 + 1``.

    Returns:
        dict[str, Tensor]: on the inputs' device.

        ``protocol="voc"``, in the dtype of the detection scores (float32 when there are
        no images):

        - ``"map"`` (scalar): mean over thresholds of the mean AP over classes with GT;
          NaN when no class has GT.
        - ``"ap_per_class"`` ``[C]``: per class, AP averaged over the thresholds (NaN for a
          class without GT).
        - ``"map_per_threshold"`` ``[T]``: the mean AP at each threshold.

        ``protocol="coco"``, float64, torchmetrics' names: the 12 scalars ``map``,
        ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large``, ``mar_1``,
        ``mar_10``, ``mar_100``, ``mar_small``, ``mar_medium``, ``mar_large``
        (``COCOeval.stats`` in that order); ``map_per_class`` and ``mar_100_per_class``
        ``[C]`` (-1 for a class without GT); ``precision`` ``[10, 101, C, 4, 3]`` and
        ``recall`` ``[10, C, 4, 3]`` (COCOeval's ``eval["precision"]`` and
        ``eval["recall"]``: IoU, recall point, class, area range, maxDets);
        ``iou_thresholds`` ``[10]`` and ``rec_thresholds`` ``[101]``.

    Raises:
        TypeError, ValueError: malformed dicts, a label outside ``[0, C)``, NaN boxes or
            scores, a threshold outside [0, 1], an unknown protocol, VOC-only options
            with ``protocol="coco"``.

    Note:
        Syncs with the device a handful of times (validation flags, index sizes). Work is
        vectorized over all detections and pairs; the Python loops are the per-image
        concatenation of the input lists and, for COCO, the rounds of the greedy matcher
        (each round settles every detection whose choice no earlier undecided detection
        can change; typically 2-4 rounds, at most one per detection of an image and
        class). COCO's memory is dominated by 40 work items (10 thresholds x 4 area
        ranges) per (detection, GT) pair of IoU >= 0.5: about 0.5-0.7 GB for 5,000 images
        of 100 detections.
    """
    if not isinstance(protocol, str) or protocol not in _PROTOCOLS:
        raise ValueError(f"{_OP}: protocol must be one of {list(_PROTOCOLS)}, got {protocol!r}")
    if not isinstance(detections, Sequence) or isinstance(detections, (str, bytes, Mapping)):
        raise TypeError(
            f"{_OP}: detections must be a list of dicts, got {type(detections).__name__}"
        )
    if not isinstance(ground_truths, Sequence) or isinstance(ground_truths, (str, bytes, Mapping)):
        raise TypeError(
            f"{_OP}: ground_truths must be a list of dicts, got {type(ground_truths).__name__}"
        )
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"{_OP}: detections and ground_truths must list the same images, got "
            f"{len(detections)} and {len(ground_truths)} entries"
        )
    num_classes = check_int(_OP, "num_classes", num_classes)
    if num_classes < 1:
        raise ValueError(f"{_OP}: num_classes must be >= 1, got {num_classes}")
    if protocol == "coco":
        if iou_thresholds is not None or iou_threshold != 0.5 or voc_plus_one:
            raise ValueError(
                f"{_OP}: iou_threshold, iou_thresholds and voc_plus_one apply to "
                f"protocol='voc' only (COCO's thresholds are fixed), got "
                f"iou_threshold={iou_threshold!r}, iou_thresholds={iou_thresholds!r}, "
                f"voc_plus_one={voc_plus_one!r}"
            )
        thresholds: tuple[float, ...] = _COCO_IOU
    else:
        thresholds = (iou_threshold,) if iou_thresholds is None else _listed(iou_thresholds)
        name = "iou_threshold" if iou_thresholds is None else "iou_thresholds"
        if not thresholds:
            raise ValueError(f"{_OP}: iou_thresholds must hold at least one threshold, got ()")
        thresholds = tuple(check_unit_interval(_OP, name, value) for value in thresholds)
        voc_plus_one = check_bool(_OP, "voc_plus_one", voc_plus_one)

    dets = [
        _check_image_dict(_OP, "detections", i, d, ("boxes", "labels", "scores"))
        for i, d in enumerate(detections)
    ]
    gt_optional = ("iscrowd", "area") if protocol == "coco" else ()
    gts = [
        _check_image_dict(_OP, "ground_truths", i, g, ("boxes", "labels"), gt_optional)
        for i, g in enumerate(ground_truths)
    ]
    num_images = len(dets)
    if num_images:
        device = dets[0]["boxes"].device
        out_dtype = dets[0]["scores"].dtype
    else:
        device, out_dtype = torch.device("cpu"), torch.float32
    devices = {t.device for item in dets + gts for t in item.values()}
    if len(devices) > 1:
        raise ValueError(
            f"{_OP}: all tensors must be on one device, got {sorted(map(str, devices))}"
        )

    f64, i64 = torch.float64, torch.int64

    def cat(items, key, dtype, width=None):
        if not items:
            return torch.zeros((0, width) if width else (0,), dtype=dtype, device=device)
        return torch.cat([item[key] for item in items]).to(dtype)

    det_boxes = cat(dets, "boxes", f64, 4)
    det_labels = cat(dets, "labels", i64)
    det_scores = cat(dets, "scores", f64)
    det_counts = torch.tensor([d["boxes"].shape[0] for d in dets], dtype=i64, device=device)
    det_image = owner_index(det_counts, det_labels.shape[0])
    gt_boxes = cat(gts, "boxes", f64, 4)
    gt_labels = cat(gts, "labels", i64)
    gt_counts = torch.tensor([g["boxes"].shape[0] for g in gts], dtype=i64, device=device)
    gt_image = owner_index(gt_counts, gt_labels.shape[0])

    # Rules on the inputs: message, (input, owning image and count per image), key, values,
    # the rows breaking it. One host sync checks them all; the first offender is named.
    dets_side = ("detections", det_image, det_counts)
    gts_side = ("ground_truths", gt_image, gt_counts)
    rules = [
        (
            f"detections labels must lie in [0, {num_classes})",
            dets_side, "labels", det_labels, (det_labels < 0) | (det_labels >= num_classes),
        ),
        (
            f"ground_truths labels must lie in [0, {num_classes}) (remove padding rows of -1)",
            gts_side, "labels", gt_labels, (gt_labels < 0) | (gt_labels >= num_classes),
        ),
        (
            "detections boxes must not contain NaN",
            dets_side, "boxes", det_boxes, det_boxes.isnan().any(1),
        ),
        (
            "ground_truths boxes must not contain NaN",
            gts_side, "boxes", gt_boxes, gt_boxes.isnan().any(1),
        ),
        (
            "detections scores must not contain NaN",
            dets_side, "scores", det_scores, det_scores.isnan(),
        ),
    ]  # fmt: skip
    gt_crowd = gt_area = None
    if protocol == "coco":
        # COCO's XYWH, as a results file would hold it; areas as loadRes computes them.
        det_boxes = torch.cat([det_boxes[:, :2], det_boxes[:, 2:] - det_boxes[:, :2]], 1)
        gt_boxes = torch.cat([gt_boxes[:, :2], gt_boxes[:, 2:] - gt_boxes[:, :2]], 1)
        gt_area = gt_boxes[:, 2] * gt_boxes[:, 3]
        gt_crowd = torch.zeros(gt_labels.shape[0], dtype=torch.bool, device=device)
        has_crowd = [i for i, g in enumerate(gts) if "iscrowd" in g]
        has_area = [i for i, g in enumerate(gts) if "area" in g]
        if has_crowd or has_area:
            gt_start = (torch.cumsum(gt_counts, 0) - gt_counts).tolist()
        if has_crowd:
            rows = torch.cat(
                [torch.arange(gts[i]["labels"].shape[0]) + gt_start[i] for i in has_crowd]
            ).to(device)
            values = torch.cat([gts[i]["iscrowd"] for i in has_crowd]) != 0
            gt_crowd = gt_crowd.index_put((rows,), values)
        if has_area:
            rows = torch.cat(
                [torch.arange(gts[i]["labels"].shape[0]) + gt_start[i] for i in has_area]
            ).to(device)
            values = torch.cat([gts[i]["area"].to(f64) for i in has_area])
            gt_area = gt_area.index_put((rows,), values)
            # (a NaN box, whose computed area is NaN too, is named by its own rule first)
            message = "ground_truths area must not contain NaN"
            rules.append((message, gts_side, "area", gt_area, gt_area.isnan()))

    flags = torch.stack([breaking.any() for *_, breaking in rules]).tolist()
    for flag, (message, (side, image, counts), key, values, breaking) in zip(
        flags, rules, strict=True
    ):
        if flag:
            first = int(breaking.nonzero()[0, 0])
            owner = int(image[first])
            row = first - int(counts[:owner].sum())
            got = values[first].tolist()
            raise ValueError(f"{_OP}: {message}, got {got} at {side}[{owner}]['{key}'][{row}]")

    if protocol == "coco":
        return _coco(
            det_boxes, det_labels, det_scores, det_image,
            gt_boxes, gt_labels, gt_image, gt_crowd, gt_area,
            num_images, num_classes,
        )  # fmt: skip
    return _voc(
        det_boxes, det_labels, det_scores, det_image, gt_boxes, gt_labels, gt_image,
        num_images, num_classes, thresholds, 1.0 if voc_plus_one else 0.0, out_dtype,
    )  # fmt: skip


def _voc(
    det_boxes, det_labels, det_scores, det_image, gt_boxes, gt_labels, gt_image,
    num_images, num_classes, thresholds, plus_one, out_dtype,
) -> dict[str, Tensor]:  # fmt: skip
    """The VOC devkit's AP; see :func:`mean_average_precision`."""
    f64, i64 = torch.float64, torch.int64
    device = det_boxes.device
    num_dets, num_gts = det_boxes.shape[0], gt_boxes.shape[0]
    thr = torch.tensor(thresholds, dtype=f64, device=device)
    num_thr = thr.shape[0]
    gt_per_class = torch.bincount(gt_labels, minlength=num_classes).to(f64)

    # 1. Candidate (detection, GT) pairs: same image and same class.
    pair_det, pair_gt = _candidate_pairs(
        det_image * num_classes + det_labels,
        gt_image * num_classes + gt_labels,
        max(num_images, 1) * num_classes,
    )
    iou = _pair_iou(
        det_boxes.index_select(0, pair_det), gt_boxes.index_select(0, pair_gt), plus_one
    )

    # 2. Each detection's best GT: highest IoU, lowest GT index among ties.
    best_iou = torch.full((num_dets,), -1.0, dtype=f64, device=device)
    best_iou = best_iou.scatter_reduce(0, pair_det, iou, "amax", include_self=True)
    is_best = iou == best_iou.index_select(0, pair_det)
    best_gt = torch.full((num_dets,), num_gts, dtype=i64, device=device)
    best_gt = best_gt.scatter_reduce(
        0, pair_det, torch.where(is_best, pair_gt, num_gts), "amin", include_self=True
    )

    # 3. Sort by class, then score descending (stable: ties keep input order).
    by_score = torch.sort(det_scores, descending=True, stable=True).indices
    by_label = torch.sort(det_labels.index_select(0, by_score), stable=True).indices
    order = by_score.index_select(0, by_label)
    labels_s = det_labels.index_select(0, order)
    best_iou_s, best_gt_s = best_iou.index_select(0, order), best_gt.index_select(0, order)
    position = torch.arange(num_dets, device=device)

    # 4. True positives: the first detection (in sorted order) that claims a GT with
    #    IoU >= t. Claims are keyed by (threshold, GT) so all thresholds go in one pass.
    claims = best_iou_s.unsqueeze(0) >= thr.unsqueeze(1)  # [T, D]
    claim_key = torch.arange(num_thr, device=device).unsqueeze(1) * (num_gts + 1) + best_gt_s
    first_claim = torch.full((num_thr * (num_gts + 1),), num_dets, dtype=i64, device=device)
    claimant = torch.where(claims, position, num_dets).reshape(-1)
    first_claim = first_claim.scatter_reduce(0, claim_key.reshape(-1), claimant, "amin")
    tp = claims & (first_claim.index_select(0, claim_key.reshape(-1)).view_as(claims) == position)

    # 5. Precision after every detection, within its class.
    class_start = _group_starts(labels_s, num_classes)[0].index_select(0, labels_s)
    cum_tp = torch.cumsum(tp.to(f64), dim=1)
    before = cum_tp - tp.to(f64)  # TPs strictly before each position
    cum_tp_class = cum_tp - before.index_select(1, class_start)
    precision = cum_tp_class / (position - class_start + 1).to(f64)

    # 6. Envelope = max precision at or after a position within the class (reverse,
    #    segmented cummax: an offset that grows by 2 per class keeps classes apart, and the
    #    returned indices pick the exact precision back out).
    offset = 2.0 * (num_classes - 1 - labels_s).to(f64)
    flipped = torch.flip(precision + offset, dims=[1])
    if num_dets:
        _, arg = torch.cummax(flipped, dim=1)
        envelope = torch.flip(torch.gather(torch.flip(precision, dims=[1]), 1, arg), dims=[1])
    else:
        envelope = precision

    # 7. Every TP adds 1 / n_gt of recall at the envelope precision.
    contribution = torch.where(tp, envelope, torch.zeros_like(envelope))
    ap_sum = torch.zeros((num_thr, num_classes), dtype=f64, device=device)
    ap_sum = ap_sum.index_add(1, labels_s, contribution)
    has_gt = gt_per_class > 0
    ap = torch.where(has_gt, ap_sum / gt_per_class.clamp(min=1), torch.full_like(ap_sum, torch.nan))
    map_per_threshold = (
        ap.nanmean(dim=1)
        if bool(has_gt.any())
        else torch.full((num_thr,), torch.nan, dtype=f64, device=device)
    )
    return {
        "map": map_per_threshold.mean().to(out_dtype),
        "ap_per_class": ap.mean(dim=0).to(out_dtype),
        "map_per_threshold": map_per_threshold.to(out_dtype),
    }


def _coco_iou(det: Tensor, gt: Tensor, crowd: Tensor) -> Tensor:
    """``maskUtils.iou`` (``bbIou``) of XYWH rows, pairwise by row, float64."""
    w = torch.minimum(det[:, 0] + det[:, 2], gt[:, 0] + gt[:, 2]) - torch.maximum(
        det[:, 0], gt[:, 0]
    )
    h = torch.minimum(det[:, 1] + det[:, 3], gt[:, 1] + gt[:, 3]) - torch.maximum(
        det[:, 1], gt[:, 1]
    )
    inter = w * h
    det_area = det[:, 2] * det[:, 3]
    union = torch.where(crowd, det_area, det_area + gt[:, 2] * gt[:, 3] - inter)
    overlap = (w > 0) & (h > 0)
    return torch.where(overlap, inter / torch.where(overlap, union, 1.0), 0.0)


def _coco(
    det_boxes, det_labels, det_scores, det_image,
    gt_boxes, gt_labels, gt_image, gt_crowd, gt_area,
    num_images, num_classes,
) -> dict[str, Tensor]:  # fmt: skip
    """COCOeval's bbox evaluation; see :func:`mean_average_precision`. Boxes are XYWH."""
    f64, i64 = torch.float64, torch.int64
    device = det_boxes.device
    C = num_classes
    num_gts = gt_boxes.shape[0]
    iou_thr = torch.tensor(_COCO_IOU, dtype=f64, device=device)
    rec_thr = torch.tensor(COCO_RECALL_THRESHOLDS, dtype=f64, device=device)
    area_lo = torch.tensor([a for a, _ in COCO_AREA_RANGES], dtype=f64, device=device)
    area_hi = torch.tensor([b for _, b in COCO_AREA_RANGES], dtype=f64, device=device)
    T, R, A = len(_COCO_IOU), len(COCO_RECALL_THRESHOLDS), len(COCO_AREA_RANGES)
    TA = T * A
    max_det = COCO_MAX_DETECTIONS[-1]
    num_keys = max(num_images, 1) * C

    # 1. Per (image, class): stable sort by score, keep the first 100.
    det_key = det_image * C + det_labels
    by_score = torch.sort(det_scores, descending=True, stable=True).indices
    order = by_score.index_select(
        0, torch.sort(det_key.index_select(0, by_score), stable=True).indices
    )
    key_sorted = det_key.index_select(0, order)
    key_start = _group_starts(det_key, num_keys)[0]
    rank = torch.arange(order.shape[0], device=device) - key_start.index_select(0, key_sorted)
    kept = order[rank < max_det]
    rank = rank[rank < max_det]
    key = det_key.index_select(0, kept)
    label = det_labels.index_select(0, kept)
    boxes = det_boxes.index_select(0, kept)
    num_kept = kept.shape[0]
    det_area = boxes[:, 2] * boxes[:, 3]
    # [A, G] / [A, D]: ignored GT; detections whose area lies outside the range.
    gt_ignored = gt_crowd.unsqueeze(0) | (gt_area < area_lo[:, None]) | (gt_area > area_hi[:, None])
    det_outside = (det_area < area_lo[:, None]) | (det_area > area_hi[:, None])

    # 2. Candidate pairs (same image and class) with IoU >= 0.5, the lowest threshold.
    pair_det, pair_gt = _candidate_pairs(key, gt_image * C + gt_labels, num_keys)
    iou = _coco_iou(
        boxes.index_select(0, pair_det),
        gt_boxes.index_select(0, pair_gt),
        gt_crowd.index_select(0, pair_gt),
    )
    bar = torch.clamp(iou_thr, max=1 - 1e-10)  # COCOeval: iou = min([t, 1 - 1e-10])
    near = iou >= bar[0]
    pair_det, pair_gt, iou = pair_det[near], pair_gt[near], iou[near]

    # 3. Greedy matching, for every (threshold, area range) row at once, in rounds.
    #    COCOeval lets the detections of an image and class choose one after another, each
    #    taking its preferred free GT: not ignored first, then the highest IoU, then the
    #    last GT. A choice is final as soon as no earlier undecided detection could take
    #    it: it is no GT (nothing free is left), a crowd GT (never taken), or a GT that no
    #    earlier undecided detection finds free and eligible. Each round decides at least
    #    the first undecided detection of every image and class; a chain needs about one
    #    round per GT it takes, not one per detection. Work items are (row, pair) triples.
    has_pair = torch.bincount(pair_det, minlength=num_kept) > 0
    num_cand = int(has_pair.sum())
    cand_of_det = torch.cumsum(has_pair.to(i64), 0) - 1
    pair_cand = cand_of_det.index_select(0, pair_det)  # non-decreasing
    passed = (iou.unsqueeze(0) >= bar.unsqueeze(1)).sum(0)  # thresholds passed: a prefix
    eligible = torch.arange(T, device=device).unsqueeze(1) < passed  # [T, P]
    t_of, a_of, tr_pair = torch.nonzero(
        eligible.unsqueeze(1).expand(T, A, -1), as_tuple=True
    )  # ordered by row, then pair: units (row, candidate) are contiguous runs
    tr_row = t_of * A + a_of
    tr_gt = pair_gt.index_select(0, tr_pair)
    tr_cand = pair_cand.index_select(0, tr_pair)
    # Preference: not ignored (bit 62), then IoU (a float64 >= 0 orders as its bits).
    regular = ((~gt_ignored).to(i64) << 62).view(-1)  # [A * G]
    tr_pref = regular.index_select(0, a_of * num_gts + tr_gt)
    tr_pref |= iou.view(i64).index_select(0, tr_pair)
    tr_crowd = gt_crowd.index_select(0, tr_gt)
    tr_slot = tr_row * (num_gts + 1) + tr_gt  # into taken
    tr_unit = tr_row * num_cand + tr_cand  # into match
    del t_of, a_of, tr_pair, tr_row, eligible
    match = torch.full((TA * num_cand + 1,), -1, dtype=torch.int32, device=device)
    taken = torch.zeros(TA * (num_gts + 1) + 1, dtype=torch.bool, device=device)
    no_slot, no_unit = taken.shape[0] - 1, match.shape[0] - 1
    while tr_slot.shape[0]:
        n = tr_slot.shape[0]
        first = torch.ones(n, dtype=torch.bool, device=device)
        first[1:] = tr_unit[1:] != tr_unit[:-1]
        uid = torch.cumsum(first, 0) - 1
        best = torch.full((n,), -1, dtype=i64, device=device)
        best = best.scatter_reduce(0, uid, tr_pref, "amax")
        top = tr_pref == best.index_select(0, uid)
        choice = torch.full((n,), -1, dtype=i64, device=device)
        choice = choice.scatter_reduce(0, uid, torch.where(top, tr_gt, -1), "amax")
        claim = torch.full((taken.shape[0],), num_cand, dtype=i64, device=device)
        claim = claim.scatter_reduce(0, tr_slot, tr_cand, "amin")  # earliest claimant
        chosen = top & (tr_gt == choice.index_select(0, uid))
        final = chosen & (tr_crowd | (claim.index_select(0, tr_slot) == tr_cand))
        match.scatter_(0, torch.where(final, tr_unit, no_unit), tr_gt.to(torch.int32))
        taken.scatter_(0, torch.where(final & ~tr_crowd, tr_slot, no_slot), True)
        decided = torch.zeros(n + 1, dtype=torch.bool, device=device)  # per unit
        decided.scatter_(0, torch.where(final, uid, n), True)
        keep = ~decided.index_select(0, uid) & (tr_crowd | ~taken.index_select(0, tr_slot))
        keep = torch.nonzero(keep).flatten()
        tr_slot, tr_unit, tr_cand = tr_slot[keep], tr_unit[keep], tr_cand[keep]
        tr_gt, tr_pref, tr_crowd = tr_gt[keep], tr_pref[keep], tr_crowd[keep]
    match = match[:-1].view(TA, num_cand)  # the GT each candidate took, -1: none

    # 4. Accumulate: per class, detections by score (stable: image, then per-image order,
    #    which is the global stable score order), i.e. by_score restricted to the kept.
    kept_index = torch.full((det_scores.shape[0],), -1, dtype=i64, device=device)
    kept_index[kept] = torch.arange(num_kept, device=device)
    acc = kept_index.index_select(0, by_score)
    acc = acc[acc >= 0]
    acc = acc.index_select(0, torch.sort(label.index_select(0, acc), stable=True).indices)
    acc_label = label.index_select(0, acc)
    acc_rank = rank.index_select(0, acc)
    acc_outside = det_outside.index_select(1, acc)  # [A, D]
    acc_class_start = _group_starts(acc_label, C)[0].index_select(0, acc_label)
    acc_pos = torch.nonzero(has_pair.index_select(0, acc)).flatten()  # candidates, acc order
    c_index = cand_of_det.index_select(0, acc.index_select(0, acc_pos))
    # Matches as events, ordered by (threshold x area row, class, score order).
    c_match = match.index_select(1, c_index)  # [TA, NC]
    del match
    row, col = torch.nonzero(c_match >= 0, as_tuple=True)
    ev_gt = c_match[row, col].to(i64)
    del c_match
    ev_a = row % A
    ev_pos = acc_pos.index_select(0, col)
    ev_label = acc_label.index_select(0, ev_pos)
    ev_rank = acc_rank.index_select(0, ev_pos)
    ev_gt_ignored = gt_ignored[ev_a, ev_gt]
    ev_outside = acc_outside[ev_a, ev_pos]
    ev_segment = row * C + ev_label
    ev_segment_start = _group_starts(ev_segment, TA * C)[0].index_select(0, ev_segment)

    npig = torch.zeros((A, C), dtype=i64, device=device).index_add_(
        1, gt_labels, (~gt_ignored).to(i64)
    )  # non-ignored GT per area range and class
    absent = npig == 0
    eps = torch.finfo(f64).eps  # np.spacing(1)

    def within(counts: Tensor, start: Tensor) -> Tensor:
        """Inclusive running counts along the last dim, restarted at each segment."""
        running = torch.cumsum(counts, -1)
        return running - (running - counts).index_select(-1, start)

    # All three maxDets at once: [M, E] over events, [A, M, D] over detections.
    M = len(COCO_MAX_DETECTIONS)
    max_dets = torch.tensor(COCO_MAX_DETECTIONS, device=device).unsqueeze(1)  # [M, 1]
    included = ev_rank.unsqueeze(0) < max_dets  # [M, E]
    tp = included & ~ev_gt_ignored
    tp_run = within(tp.to(i64), ev_segment_start)
    # FPs up to a position = kept, in-range, unmatched detections: all in-range detections
    # (dense, per area range) minus the matched in-range ones (events).
    matched_in_range = within((included & ~ev_outside).to(i64), ev_segment_start)
    in_range = (~acc_outside).unsqueeze(1) & (acc_rank.unsqueeze(0) < max_dets).unsqueeze(0)
    in_range = within(in_range.to(i64), acc_class_start)  # [A, M, D]
    m_of, hit = torch.nonzero(tp, as_tuple=True)
    hit_a, hit_pos = ev_a.index_select(0, hit), ev_pos.index_select(0, hit)
    n_tp = tp_run[m_of, hit].to(f64)
    n_fp = (in_range[hit_a, m_of, hit_pos] - matched_in_range[m_of, hit]).to(f64)
    segment = ev_segment.index_select(0, hit)  # row * C + class
    n_gt = npig[hit_a, ev_label.index_select(0, hit)].to(f64)
    rc = n_tp / n_gt
    pr = n_tp / (n_fp + n_tp + eps)
    # The envelope at the first TP with recall >= r is the max precision of all TPs whose
    # recall reaches r: scatter each TP into its last recall point, take the max from the
    # right.
    point = searchsorted(rec_thr, rc, right=True) - 1
    table = torch.zeros(TA * C * M * R, dtype=f64, device=device)
    table = table.scatter_reduce(0, ((segment * M + m_of) * R + point), pr, "amax")
    table = torch.flip(torch.cummax(torch.flip(table.view(T, A, C, M, R), [4]), 4).values, [4])
    class_sum = table.sum(4)  # [T, A, C, M], for the means
    absent_ac = absent.view(1, A, C, 1)
    precision = torch.where(absent_ac.unsqueeze(-1), -1.0, table).permute(0, 4, 2, 1, 3)
    events = (ev_segment.unsqueeze(0) * M + torch.arange(M, device=device).unsqueeze(1)).view(-1)
    found = torch.bincount(events, weights=tp.view(-1).to(f64), minlength=TA * C * M)
    recall_tacm = torch.where(absent_ac, -1.0, found.view(T, A, C, M) / npig.view(1, A, C, 1))
    recall = recall_tacm.permute(0, 2, 1, 3)  # [T, C, A, M]

    # COCOeval.summarize: the mean over entries > -1 (classes with GT), -1 if none.
    present = (~absent).to(f64)  # [A, C]
    classes = present.sum(1)  # [A]

    def mean_ap(t: slice, a: int) -> Tensor:
        total = (class_sum[t, a, :, 2] * present[a]).sum()
        count = classes[a] * R * len(range(T)[t])
        return torch.where(count > 0, total / count.clamp(min=1), -1.0)

    def mean_ar(a: int, m: int) -> Tensor:
        total = (recall_tacm[:, a, :, m] * present[a]).sum()
        count = classes[a] * T
        return torch.where(count > 0, total / count.clamp(min=1), -1.0)

    t50 = _COCO_IOU.index(0.5)
    t75 = _COCO_IOU.index(0.75)
    stats = {
        "map": mean_ap(slice(None), 0),
        "map_50": mean_ap(slice(t50, t50 + 1), 0),
        "map_75": mean_ap(slice(t75, t75 + 1), 0),
        "map_small": mean_ap(slice(None), 1),
        "map_medium": mean_ap(slice(None), 2),
        "map_large": mean_ap(slice(None), 3),
        "mar_1": mean_ar(0, 0),
        "mar_10": mean_ar(0, 1),
        "mar_100": mean_ar(0, 2),
        "mar_small": mean_ar(1, 2),
        "mar_medium": mean_ar(2, 2),
        "mar_large": mean_ar(3, 2),
    }
    no_gt = absent[0]
    return {
        **stats,
        "map_per_class": torch.where(no_gt, -1.0, class_sum[:, 0, :, 2].sum(0) / (T * R)),
        "mar_100_per_class": torch.where(no_gt, -1.0, recall_tacm[:, 0, :, 2].mean(0)),
        "precision": precision.contiguous(),
        "recall": recall.contiguous(),
        "iou_thresholds": iou_thr,
        "rec_thresholds": rec_thr,
    }


def gt_dicts_from_padded(gt_boxes: Tensor) -> list[dict[str, Tensor]]:
    """Padded GT ``[B, N, 5]`` (rows of -1 are padding) to per-image dicts for the metric.

    Args:
        gt_boxes (Tensor[B, N, 5]): ``(x1, y1, x2, y2, class)`` rows as the datasets
            return them; a row whose class is -1 is padding and is dropped.

    Returns:
        list[dict[str, Tensor]]: per image, ``boxes [G, 4]`` (dtype of ``gt_boxes``) and
        ``labels [G]`` (int64).
    """
    op = "gt_dicts_from_padded"
    check_tensor(op, "gt_boxes", gt_boxes)
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 5:
        raise ValueError(f"{op}: gt_boxes must have shape [B, N, 5], got {shape_str(gt_boxes)}")
    keep = gt_boxes[..., 4] != -1
    return [
        {"boxes": rows[mask, :4], "labels": rows[mask, 4].to(torch.int64)}
        for rows, mask in zip(gt_boxes, keep, strict=True)
    ]
