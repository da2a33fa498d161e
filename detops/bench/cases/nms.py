"""Benchmarks of detops.nms against torchvision: plain, class-specific and per-image NMS."""

from __future__ import annotations

import itertools

import torch

import reference.nms as ref
from detops.nms import batched_nms_per_image, class_spec_nms, nms
from detops.testing.inputs import random_boxes

from ._case import BenchCase, BenchFunctions

__all__ = [
    "BENCHMARKS",
    "CLASSES",
    "ROTATION",
    "THRESHOLD",
    "clustered_detections",
    "random_detections",
]

THRESHOLD = 0.5
CLASSES = 20


def random_detections(
    n: int, *, seed: int = 0, batch: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The benchmark's random detections ``(boxes, scores, classes)``: corners uniform in
    [0, 1000)^2, width and height uniform in [8, 200), scores uniform in [0, 1), classes
    uniform in 0..19 (float32)."""
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes((*batch, n), extent=1000.0, min_side=8.0, max_side=200.0, generator=g)
    scores = torch.rand(*batch, n, generator=g, dtype=torch.float32)
    classes = torch.randint(0, CLASSES, (*batch, n), generator=g)
    return boxes, scores, classes


def clustered_detections(
    n: int, *, per_object: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections as a detector's candidates look before NMS: ``n // per_object``
    objects (centres uniform in [100, 900)^2, sides uniform in [30, 180)), each box drawn
    around a random object with its corners moved by N(0, 0.1) of the object's side,
    scores uniform in [0, 1), and each object's boxes of one class (0..19). NMS keeps
    about 4% of them (the scattered :func:`random_detections` keep 40-90%)."""
    g = torch.Generator().manual_seed(seed)
    objects = max(1, n // per_object)
    centres = torch.rand(objects, 2, generator=g, dtype=torch.float32) * 800 + 100
    sides = torch.rand(objects, 2, generator=g, dtype=torch.float32) * 150 + 30
    owner = torch.randint(0, objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g, dtype=torch.float32) * 0.1
    centre, side = centres[owner], sides[owner]
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1) + jitter * side.repeat(1, 2)
    scores = torch.rand(n, generator=g, dtype=torch.float32)
    object_class = torch.randint(0, CLASSES, (objects,), generator=g)
    return boxes.float(), scores, object_class[owner]


# Each timed callable takes this many inputs (seeds 0, 1, ...) in turn. On one input
# repeated, torchvision's kernel ran quicker than it runs on new data (AMD EPYC: 148 µs at
# 200 random boxes against 207-212 on 8-64 inputs in turn; 237 against 312-318 at 1000
# clustered ones): its branches on box values are learned over repeats (the likely cause),
# so a figure from one input depends on the CPU's branch predictor. 16 inputs lost all
# of that gain there (8 most of it).
ROTATION = 16


def _in_turn(call, inputs):
    """A zero-argument callable: ``call(*inputs[k % len(inputs)])`` on its ``k``-th call,
    counting from 0 (each callable made here counts its own calls)."""
    following = itertools.cycle(inputs).__next__
    return lambda: call(*following())


def _detections(n: int, clustered: bool):
    """ROTATION inputs ``(boxes, scores, classes)`` of ``n`` boxes, seeds 0, 1, ..."""
    draw = clustered_detections if clustered else random_detections
    return [draw(n, seed=seed) for seed in range(ROTATION)]


def _nms_setup(n: int, with_reference: bool, clustered: bool = False):
    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        drawn = [(b, s) for b, s, _ in _detections(n, clustered)]
        inputs = [(b.to(device), s.to(device)) for b, s in drawn]
        arrays = [(b.double().numpy(), s.double().numpy()) for b, s in drawn]
        return BenchFunctions(
            detops=_in_turn(lambda b, s: nms(b, s, THRESHOLD), inputs),
            peer=_in_turn(lambda b, s: torchvision.ops.nms(b, s, THRESHOLD), inputs),
            reference=_in_turn(lambda b, s: ref.nms(b, s, THRESHOLD), arrays)
            if with_reference
            else None,
        )

    return setup


def _class_setup(n: int, with_reference: bool, clustered: bool = False, classes: int = CLASSES):
    classes_kept = classes  # (ids modulo this: fewer classes, each with more objects)

    def setup(device):
        import torchvision  # the peer, imported when a benchmark runs (verify never needs it)

        drawn = [(b, s, ids % classes_kept) for b, s, ids in _detections(n, clustered)]
        inputs = [tuple(t.to(device) for t in parts) for parts in drawn]
        arrays = [(b.double().numpy(), s.double().numpy(), c.numpy()) for b, s, c in drawn]
        return BenchFunctions(
            detops=_in_turn(lambda b, s, c: class_spec_nms(b, s, c, THRESHOLD), inputs),
            peer=_in_turn(lambda b, s, c: torchvision.ops.batched_nms(b, s, c, THRESHOLD), inputs),
            reference=_in_turn(lambda b, s, c: ref.class_spec_nms(b, s, c, THRESHOLD), arrays)
            if with_reference
            else None,
        )

    return setup


def _loop_of_batched_nms(boxes, scores, classes, limit):
    # What torchvision users write: one batched_nms per image, results padded into a batch.
    from torchvision.ops import batched_nms  # (a dict lookup after the first call)

    kept = [
        batched_nms(boxes[i], scores[i], classes[i], THRESHOLD)[:limit]
        for i in range(boxes.shape[0])
    ]
    width = max(len(k) for k in kept)
    out = torch.full((len(kept), width), -1, dtype=torch.int64, device=boxes.device)
    for i, k in enumerate(kept):
        out[i, : len(k)] = k
    return out


def _batched_setup(
    images: int, n: int, with_reference: bool, limit: int = 100, clustered: bool = False
):
    def setup(device):
        if clustered:
            per_image = [clustered_detections(n, seed=i) for i in range(images)]
            boxes, scores, classes = (torch.stack(parts) for parts in zip(*per_image, strict=True))
        else:
            boxes, scores, classes = random_detections(n, batch=(images,))
        b, s, c = boxes.to(device), scores.to(device), classes.to(device)
        bn, sn, cn = boxes.double().numpy(), scores.double().numpy(), classes.numpy()
        return BenchFunctions(
            detops=lambda: batched_nms_per_image(b, s, c, THRESHOLD, max_detections=limit),
            peer=lambda: _loop_of_batched_nms(b, s, c, limit),
            reference=(
                lambda: ref.batched_nms_per_image(bn, sn, cn, THRESHOLD, max_detections=limit)
            )
            if with_reference
            else None,
        )

    return setup


_NOTES = "random boxes (see random_detections), IoU threshold 0.5"
_CLUSTERED_NOTES = (
    "clustered boxes, 50 per object, one class per object (see clustered_detections), "
    "IoU threshold 0.5"
)
_IN_TURN = f"; {ROTATION} inputs (seeds 0-{ROTATION - 1}), which each side takes in turn"


def _notes(clustered: bool, classes: int = CLASSES) -> str:
    if not clustered:
        notes = _NOTES if classes == CLASSES else f"{_NOTES}, class ids modulo {classes}"
    else:
        notes = _CLUSTERED_NOTES
        if classes != CLASSES:
            notes = notes.replace("one class per object", f"class ids modulo {classes}")
    return notes + _IN_TURN


def _nms_case(n: int, *, clustered: bool = False, reference: bool = False) -> BenchCase:
    """``nms`` on ``n`` boxes against torchvision (20k only in full runs)."""
    return BenchCase(
        "nms",
        f"{n} clustered" if clustered else str(n),
        "torchvision.ops.nms",
        _nms_setup(n, reference, clustered),
        quick=n < 20000,
        notes=_notes(clustered),
    )


def _class_case(
    n: int, *, classes: int = CLASSES, clustered: bool = False, reference: bool = False
) -> BenchCase:
    """``class_spec_nms`` on ``n`` boxes of ``classes`` classes against torchvision's
    ``batched_nms`` (20k only in full runs)."""
    return BenchCase(
        "class_spec_nms",
        f"{n}{' clustered' if clustered else ''}, {classes} classes",
        "torchvision.ops.batched_nms",
        _class_setup(n, reference, clustered, classes),
        quick=n < 20000,
        notes=_notes(clustered, classes),
    )


BENCHMARKS = (
    *(_nms_case(n, reference=n <= 200) for n in (10, 50, 200, 500, 1000, 5000, 20000)),
    *(_nms_case(n, clustered=True) for n in (1000, 2000, 5000, 20000)),
    *(_class_case(n, reference=n <= 200) for n in (10, 50, 200, 500, 1000, 5000, 20000)),
    # (a detector's candidates for one image after its score threshold: a few hundred)
    *(_class_case(n, clustered=True) for n in (200, 500, 1000, 5000, 20000)),
    *(_class_case(n, classes=2, clustered=True) for n in (200, 1000)),
    # (few classes, more boxes: the kernel once per class, where one call pays kept * N)
    _class_case(1000, classes=4),
    _class_case(3000, classes=4, clustered=True),
    BenchCase(
        "batched_nms_per_image",
        "4x100, 20 classes",
        "loop of torchvision.ops.batched_nms",
        _batched_setup(4, 100, True),
        notes=_NOTES + ", max_detections 100",
    ),
    BenchCase(
        "batched_nms_per_image",
        "16x1000, 20 classes",
        "loop of torchvision.ops.batched_nms",
        _batched_setup(16, 1000, False),
        notes=_NOTES + ", max_detections 100",
    ),
    *(
        BenchCase(
            "batched_nms_per_image",
            f"16x{n} clustered, 20 classes",
            "loop of torchvision.ops.batched_nms",
            _batched_setup(16, n, False, clustered=True),
            notes=_CLUSTERED_NOTES + ", max_detections 100",
        )
        for n in (200, 1000)
    ),
)
