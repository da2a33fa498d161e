"""Benchmarks of detops.metrics against a VOC-devkit-style Python loop."""

from __future__ import annotations

import torch

import reference.metrics as ref
from detops import metrics

from ._case import BenchCase, BenchFunctions


def devkit_style_map(detections, ground_truths, num_classes, iou_threshold=0.5):
    """The VOC devkit's loop as course code writes it: per class, per detection, in Python."""
    from torchvision.ops import box_iou  # (a dict lookup after the first call)

    aps = []
    for c in range(num_classes):
        gt_per_image = [g["boxes"][g["labels"] == c] for g in ground_truths]
        num_gt = sum(len(b) for b in gt_per_image)
        if num_gt == 0:
            continue
        taken = [torch.zeros(len(b), dtype=torch.bool) for b in gt_per_image]
        records = []
        for image, det in enumerate(detections):
            keep = det["labels"] == c
            for box, score in zip(det["boxes"][keep], det["scores"][keep], strict=True):
                records.append((score.item(), image, box))
        records.sort(key=lambda r: -r[0])
        tp = torch.zeros(len(records))
        for k, (_, image, box) in enumerate(records):
            gts = gt_per_image[image]
            if len(gts) == 0:
                continue
            ious = box_iou(box[None], gts)[0]
            best = int(ious.argmax())
            if ious[best] >= iou_threshold and not taken[image][best]:
                taken[image][best] = True
                tp[k] = 1
        cum_tp = torch.cumsum(tp, 0)
        recall = cum_tp / num_gt
        precision = cum_tp / torch.arange(1, len(records) + 1)
        mrec = torch.cat([torch.tensor([0.0]), recall, torch.tensor([1.0])])
        mpre = torch.cat([torch.tensor([0.0]), precision, torch.tensor([0.0])])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = torch.maximum(mpre[i], mpre[i + 1])
        steps = torch.nonzero(mrec[1:] != mrec[:-1]).flatten()
        aps.append(float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum()))
    return sum(aps) / len(aps)


def map_bench_inputs(num_images, num_classes, dets_per_image, seed=0):
    """Random detections and GT dicts for the mAP benchmark (and its tests)."""
    generator = torch.Generator().manual_seed(seed)
    detections, ground_truths = [], []
    for _ in range(num_images):
        num_gt = int(torch.randint(1, 5, (), generator=generator))
        xy = torch.rand(num_gt, 2, generator=generator) * 400
        wh = 20 + torch.rand(num_gt, 2, generator=generator) * 80
        gt = torch.cat([xy, xy + wh], dim=1)
        gt_labels = torch.randint(0, num_classes, (num_gt,), generator=generator)
        source = torch.randint(0, num_gt, (dets_per_image,), generator=generator)
        noise = torch.randn(dets_per_image, 4, generator=generator) * 12
        boxes = gt[source] + noise
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
        flip = torch.rand(dets_per_image, generator=generator) < 0.3
        labels = torch.where(
            flip,
            torch.randint(0, num_classes, (dets_per_image,), generator=generator),
            gt_labels[source],
        )
        scores = torch.rand(dets_per_image, generator=generator)
        detections.append({"boxes": boxes, "labels": labels, "scores": scores})
        ground_truths.append({"boxes": gt, "labels": gt_labels})
    return detections, ground_truths


def _numpy_images(images):
    return [
        {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in item.items()}
        for item in images
    ]


def _bench_setup(num_images, num_classes, dets_per_image, with_reference):
    def setup(device):
        dets, gts = map_bench_inputs(num_images, num_classes, dets_per_image)
        dets_d = [{k: v.to(device) for k, v in d.items()} for d in dets]
        gts_d = [{k: v.to(device) for k, v in g.items()} for g in gts]
        ref_dets, ref_gts = _numpy_images(dets), _numpy_images(gts)
        return BenchFunctions(
            detops=lambda: metrics.mean_average_precision(dets_d, gts_d, num_classes),
            peer=lambda: devkit_style_map(dets, gts, num_classes),
            reference=(lambda: ref.mean_average_precision(ref_dets, ref_gts, num_classes))
            if with_reference
            else None,
        )

    return setup


_NOTES = (
    "VOC-devkit mAP at IoU 0.5 of noisy copies of random GT boxes (1-4 a image), 30% with a "
    "wrong class, from per-image lists of tensors"
)

BENCHMARKS = (
    BenchCase(
        "mean_average_precision",
        "100 images x 20 dets, 20 classes",
        "VOC-devkit-style Python loop",
        _bench_setup(100, 20, 20, with_reference=True),
        devices=("cpu",),
        notes=_NOTES,
    ),
    BenchCase(
        "mean_average_precision",
        "500 images x 50 dets, 20 classes",
        "VOC-devkit-style Python loop",
        _bench_setup(500, 20, 50, with_reference=False),
        quick=False,
        devices=("cpu",),
        notes=_NOTES,
    ),
)
