"""Benchmarks of detops.boxes against torchvision and the course dataset's transforms."""

from __future__ import annotations

import torch

import reference.boxes as ref
from detops import boxes
from detops.testing.inputs import random_boxes

from ._case import BenchCase, BenchFunctions


def _iou_setup(batch: int | None, n: int, with_reference: bool):
    shape = (batch, n) if batch else (n,)

    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        b1 = random_boxes(shape, seed=1).to(device)
        b2 = random_boxes(shape, seed=2).to(device)
        if batch:
            # torchvision users loop over images (its box_iou would broadcast, but the
            # batched call is undocumented; the loop is what the course code does).
            def peer():
                return [torchvision.ops.box_iou(b1[i], b2[i]) for i in range(batch)]
        else:

            def peer():
                return torchvision.ops.box_iou(b1, b2)

        n1, n2 = b1.cpu().double().numpy(), b2.cpu().double().numpy()
        return BenchFunctions(
            detops=lambda: boxes.box_iou(b1, b2),
            peer=peer,
            reference=(lambda: ref.box_iou(n1, n2)) if with_reference else None,
        )

    return setup


def _clip_setup(n: int):
    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        b = (random_boxes((n,), seed=3, extent=800.0) - 100.0).to(device)
        size = (480, 640)
        nb = b.cpu().double().numpy()
        return BenchFunctions(
            detops=lambda: boxes.clip_boxes_to_image(b, size),
            peer=lambda: torchvision.ops.clip_boxes_to_image(b, size),
            reference=(lambda: ref.clip_boxes_to_image(nb, size)) if n <= 1000 else None,
        )

    return setup


def _seed_style_resize(gt: torch.Tensor, original_size, image_size: int) -> torch.Tensor:
    # The course dataset's box transform (normalize, float resized size, floored offset).
    original_height, original_width = original_size
    gt = gt.clone()
    norm = torch.tensor([original_width, original_height] * 2, dtype=gt.dtype)
    gt[:, :4] /= norm
    if original_height >= original_width:
        new_width, new_height = image_size, original_height * image_size / original_width
    else:
        new_height, new_width = image_size, original_width * image_size / original_height
    _x1 = (new_width - image_size) // 2
    _y1 = (new_height - image_size) // 2
    gt[:, 0] = torch.clamp(gt[:, 0] * new_width - _x1, min=0)
    gt[:, 1] = torch.clamp(gt[:, 1] * new_height - _y1, min=0)
    gt[:, 2] = torch.clamp(gt[:, 2] * new_width - _x1, max=image_size)
    gt[:, 3] = torch.clamp(gt[:, 3] * new_height - _y1, max=image_size)
    invalid = (gt[:, 0] > gt[:, 2]) | (gt[:, 1] > gt[:, 3])
    gt[invalid] = -1
    return gt


def _resize_setup(device):
    xyxy = random_boxes((40,), seed=4, extent=400.0)
    gt = torch.cat((xyxy, torch.randint(0, 20, (40, 1)).float()), dim=-1)
    original = (375, 500)
    return BenchFunctions(
        detops=lambda: boxes.resize_and_center_crop_boxes(gt, original, 224),
        peer=lambda: _seed_style_resize(gt, original, 224),
        reference=lambda: ref.resize_and_center_crop_boxes(gt.double().numpy(), original, 224),
    )


def _seed_style_pad(boxes_list, max_boxes):
    # The course dataset: torch.cat with a -1 block per image, then the collate's stack.
    return torch.stack(
        [torch.cat([b, torch.zeros(max_boxes - len(b), 5).fill_(-1.0)]) for b in boxes_list]
    )


def _pad_setup(device):
    gen = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 9, (16,), generator=gen).tolist()
    boxes_list = [torch.rand(c, 5, generator=gen) * 200 for c in counts]
    arrays = [b.double().numpy() for b in boxes_list]
    return BenchFunctions(
        detops=lambda: boxes.pad_gt_boxes(boxes_list, 40),
        peer=lambda: _seed_style_pad(boxes_list, 40),
        reference=lambda: ref.pad_gt_boxes(arrays, 40),
    )


_IOU = "IoU matrix of two sets of random float32 XYXY boxes, forward only"
_CLIP = "random float32 boxes, some beyond the image, clamped to 480x640; forward only"

BENCHMARKS = (
    BenchCase(
        "box_iou", "10x10", "torchvision.ops.box_iou", _iou_setup(None, 10, True), notes=_IOU
    ),
    BenchCase(
        "box_iou", "100x100", "torchvision.ops.box_iou", _iou_setup(None, 100, True), notes=_IOU
    ),
    BenchCase(
        "box_iou",
        "1000x1000",
        "torchvision.ops.box_iou",
        _iou_setup(None, 1000, False),
        notes=_IOU,
    ),
    BenchCase(
        "box_iou",
        "16x1000x1000",
        "loop of torchvision.ops.box_iou per image",
        _iou_setup(16, 1000, False),
        quick=False,
        notes="a batch of 16 IoU matrices in one call, " + _IOU,
    ),
    BenchCase(
        "clip_boxes_to_image",
        "1000",
        "torchvision.ops.clip_boxes_to_image",
        _clip_setup(1000),
        notes=_CLIP,
    ),
    BenchCase(
        "clip_boxes_to_image",
        "100000",
        "torchvision.ops.clip_boxes_to_image",
        _clip_setup(100000),
        notes=_CLIP,
    ),
    BenchCase(
        "resize_and_center_crop_boxes",
        "40 rows 375x500->224",
        "course-style dataset transform",
        _resize_setup,
        devices=("cpu",),
        notes="40 GT rows (XYXY + class) of a 375x500 image mapped to its 224 center crop; "
        "forward only",
    ),
    BenchCase(
        "pad_gt_boxes",
        "16 images to 40",
        "course-style cat + stack",
        _pad_setup,
        devices=("cpu",),
        notes="a list of 16 images' [0-8, 5] GT rows padded with -1 rows to one [16, 40, 5]",
    ),
)
