"""detops.nms: explicit semantics, equality with torchvision, laws and error tables.

The property tests against the NumPy reference live in tests/test_against_reference.py
(registry entries in detops/testing/families/nms.py).
"""

import dataclasses
import importlib
import sys
import types

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from nms_paths import sparse_class_spec_nms
from torchvision.ops.boxes import _batched_nms_coordinate_trick, _batched_nms_vanilla

import reference.nms as ref
from detops import batched_nms_per_image, class_spec_nms, nms
from detops.bench.cases.nms import random_detections
from detops.testing import REGISTRY
from detops.testing.families.nms import (
    class_nms_cases,
    distinct_scores,
    nms_boxes,
    nms_cases,
)

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tensor(values, dtype=torch.float32, device="cpu"):
    return torch.tensor(values, dtype=dtype, device=device)


def by_score_then_index(indices, scores):
    """torchvision's batched_nms sorts its result with an unstable sort: put ties in index
    order (the detops contract) before comparing."""
    s = scores.double().cpu()
    return sorted(indices.tolist(), key=lambda i: (-s[i].item(), i))


# ----------------------------------------------------------------------------------------
# explicit semantics
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_equal_scores_go_to_the_lower_index(device, dtype):
    disjoint = tensor([[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]], dtype, device)
    assert nms(disjoint, tensor([0.5, 0.5, 0.5], dtype, device), 0.5).tolist() == [0, 1, 2]
    # Two identical boxes with one score: the lower index is visited first and kept.
    same = tensor([[0, 0, 4, 4], [9, 9, 12, 12], [0, 0, 4, 4]], dtype, device)
    scores = tensor([0.5, 0.9, 0.5], dtype, device)
    assert nms(same, scores, 0.5).tolist() == [1, 0]
    classes = torch.tensor([3, 3, 3], device=device)
    assert class_spec_nms(same, scores, classes, 0.5).tolist() == [1, 0]
    batched = batched_nms_per_image(same[None], scores[None], classes[None], 0.5)
    assert batched.tolist() == [[1, 0]]
    if dtype == torch.float32:  # torchvision sorts stably too
        assert torchvision.ops.nms(same, scores, 0.5).tolist() == [1, 0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_iou_exactly_at_the_threshold_is_kept(device, dtype):
    # (0,0,3,1) and (1,0,4,1): intersection 2, union 3 + 3 - 2 = 4 -> IoU 0.5 exactly.
    half = tensor([[0, 0, 3, 1], [1, 0, 4, 1]], dtype, device)
    # (0,0,2.5,1) and (1.5,0,4,1): intersection 1, union 2.5 + 2.5 - 1 = 4 -> IoU 0.25.
    quarter = tensor([[0, 0, 2.5, 1], [1.5, 0, 4, 1]], dtype, device)
    scores = tensor([0.9, 0.8], dtype, device)
    for boxes, iou in ((half, 0.5), (quarter, 0.25)):
        assert nms(boxes, scores, iou).tolist() == [0, 1]
        assert nms(boxes, scores, iou - 0.01).tolist() == [0]
        classes = torch.zeros(2, dtype=torch.int64, device=device)
        assert class_spec_nms(boxes, scores, classes, iou).tolist() == [0, 1]
        assert batched_nms_per_image(boxes[None], scores[None], None, iou).tolist() == [[0, 1]]
        assert ref.nms(boxes.double().cpu().numpy(), [0.9, 0.8], iou).tolist() == [0, 1]


def test_threshold_is_compared_in_torchvisions_arithmetic():
    # (0,0,6.5,1) and (3.5,0,10,1): intersection 3, union 6.5 + 6.5 - 3 = 10, IoU 3/10.
    # In float32 3/10 rounds to 0.30000001192..., which is > 0.3 (a float64): torchvision
    # suppresses, and so does detops (drop-in). In float64 3/10 == 0.3: both keep.
    # The float64 reference keeps too; hypothesis inputs keep IoUs away from the threshold.
    boxes = tensor([[0, 0, 6.5, 1], [3.5, 0, 10, 1]])
    scores = tensor([0.9, 0.8])
    assert torchvision.ops.nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes.double(), scores.double(), 0.3).tolist() == [0, 1]
    assert torchvision.ops.nms(boxes.double(), scores.double(), 0.3).tolist() == [0, 1]
    assert ref.nms(boxes.double().numpy(), scores.double().numpy(), 0.3).tolist() == [0, 1]


def test_nan_is_refused_where_torchvision_keeps_it_first():
    boxes = tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = tensor([float("nan"), 0.9, 0.8])
    # torchvision: the NaN-scored box sorts first, is kept and suppresses box 1.
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    classes = torch.zeros(3, dtype=torch.int64)
    for call in (
        lambda s, b: nms(b, s, 0.5),
        lambda s, b: class_spec_nms(b, s, classes, 0.5),
        lambda s, b: batched_nms_per_image(b[None], s[None], None, 0.5),
    ):
        with pytest.raises(ValueError, match="scores must not contain NaN"):
            call(scores, boxes)
        nan_box = boxes.clone()
        nan_box[1, 2] = float("nan")
        with pytest.raises(ValueError, match="boxes must not contain NaN"):
            call(tensor([0.3, 0.9, 0.8]), nan_box)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_empty_input(device, dtype):
    boxes, scores = torch.zeros(0, 4, dtype=dtype, device=device), torch.zeros(0, dtype=dtype)
    scores = scores.to(device)
    for out in (
        nms(boxes, scores, 0.5),
        class_spec_nms(boxes, scores, torch.zeros(0, dtype=torch.int64, device=device), 0.5),
    ):
        assert out.shape == (0,) and out.dtype == torch.int64 and out.device.type == device
    padded = batched_nms_per_image(
        torch.zeros(3, 5, 4, dtype=dtype, device=device),
        torch.full((3, 5), float("-inf"), dtype=dtype, device=device),
        None,
        0.5,
    )
    assert padded.shape == (3, 0) and padded.dtype == torch.int64
    assert padded.device.type == device
    no_images = torch.zeros(0, 7, 4, dtype=dtype, device=device)
    assert batched_nms_per_image(no_images, no_images[..., 0], None, 0.5).shape == (0, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_works_where_torchvision_cpu_refuses(device, dtype):
    boxes, scores, classes = random_detections(300, seed=3)
    boxes, scores = boxes.to(dtype).to(device), scores.to(dtype).to(device)
    # The float32 result on the same (exactly upcast) values is the expected answer.
    expected = torchvision.ops.nms(boxes.float().cpu(), scores.float().cpu(), 0.5)
    assert nms(boxes, scores, 0.5).cpu().tolist() == expected.tolist()
    expected = _batched_nms_vanilla(boxes.float().cpu(), scores.float().cpu(), classes, 0.5)
    got = class_spec_nms(boxes, scores, classes.to(device), 0.5).cpu()
    assert got.tolist() == by_score_then_index(expected, scores.float())
    if device == "cpu":
        with pytest.raises(RuntimeError):
            torchvision.ops.nms(boxes, scores, 0.5)


# ----------------------------------------------------------------------------------------
# the class-offset trick (torchvision batched_nms up to 1000 boxes on CPU, the course code)
# ----------------------------------------------------------------------------------------


def _per_class_reference(boxes, scores, classes, threshold):
    return ref.class_spec_nms(
        boxes.double().cpu().numpy(),
        scores.double().cpu().numpy(),
        classes.cpu().numpy(),
        threshold,
    ).tolist()


def test_offset_trick_breaks_with_negative_coordinates():
    # All coordinates <= -1, so max + 1 <= 0: the class offsets stack the classes.
    boxes = tensor([[-10, -10, -1, -1], [-10, -10, -1, -1], [-30, -30, -20, -20]])
    scores, classes = tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1])
    expected = _per_class_reference(boxes, scores, classes, 0.5)
    assert expected == [0, 1, 2]  # one box per class in the same place: both kept
    assert _batched_nms_coordinate_trick(boxes, scores, classes, 0.5).tolist() != expected
    assert torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist() != expected
    assert class_spec_nms(boxes, scores, classes, 0.5).tolist() == expected


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        (2, [0, 1, 2]),  # IoU 2 / 6 = 1/3: both kept; the offset boxes coincide
        (1, [0, 2]),  # IoU 3 / 5 = 0.6: suppressed; the offset boxes no longer overlap enough
    ],
)
def test_offset_trick_breaks_with_huge_coordinates(shift, expected):
    # Width-4 boxes at x = 1e7 (float32-exact). Offset by class * (max + 1) ~ 1e7 they
    # land near 2e7, where float32's spacing is 2, and their corners round.
    x = 1.0e7
    boxes = tensor([[x, 0, x + 4, 1], [x + shift, 0, x + shift + 4, 1], [0, 0, 10, 10]])
    scores, classes = tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 0])
    assert _per_class_reference(boxes, scores, classes, 0.5) == expected
    assert _batched_nms_coordinate_trick(boxes, scores, classes, 0.5).tolist() != expected
    assert class_spec_nms(boxes, scores, classes, 0.5).tolist() == expected


def test_offset_trick_breaks_in_float16(device):
    # Class 19 holds two boxes with IoU 32 / (64 + 64 - 32) = 1/3 (both kept). Offset by
    # 19 * 1001 in float16 (spacing 16 there) they round onto each other.
    boxes = tensor([[990, 990, 1000, 1000], [0, 0, 8, 8], [4, 0, 12, 8]], torch.float16, device)
    scores = tensor([0.7, 0.9, 0.8], torch.float16, device)
    classes = torch.tensor([0, 19, 19], device=device)
    expected = _per_class_reference(boxes, scores, classes, 0.5)
    assert expected == [1, 2, 0]
    if device == "cuda":
        trick = _batched_nms_coordinate_trick(boxes, scores, classes, 0.5)
    else:  # torchvision's CPU kernel refuses float16: offset in float16 as it does, then NMS
        offsets = classes.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        trick = torchvision.ops.nms((boxes + offsets[:, None]).float(), scores.float(), 0.5)
    assert trick.tolist() != expected
    assert class_spec_nms(boxes, scores, classes, 0.5).tolist() == expected


# ----------------------------------------------------------------------------------------
# equality with torchvision
# ----------------------------------------------------------------------------------------


def _integer_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 300, (n, 2), generator=g)
    wh = torch.randint(1, 60, (n, 2), generator=g)
    return torch.cat((xy, xy + wh), 1).float()


def _shifted_box(a, shift):
    """``a`` moved right by ``shift`` and the IoU of the two in torchvision's float32 steps."""
    f = np.float32
    x1 = f(a[0] + shift)
    x2 = f(x1 + f(a[2] - a[0]))
    height = f(a[3] - a[1])
    inter = f(f(min(a[2], x2) - max(a[0], x1)) * height)
    area_a, area_b = f(f(a[2] - a[0]) * height), f(f(x2 - x1) * height)
    return float(inter / f(f(area_a + area_b) - inter)), (x1, a[1], x2, a[3])


def _near_threshold_boxes(pairs, threshold, seed):
    """Pairs of boxes whose float32 IoU (torchvision's arithmetic) is just above, at or just
    below ``threshold``, shifted along x: IoU = (w - s) / (w + s) for a shift s."""
    rng = np.random.default_rng(seed)
    f = np.float32
    rows = []
    for k in range(pairs):
        x, y = f(rng.uniform(0, 900)), f(rng.uniform(0, 900))
        w, h = f(rng.uniform(10, 100)), f(rng.uniform(10, 100))
        a = (x, y, f(x + w), f(y + h))
        shift = f(w * (1 - threshold) / (1 + threshold))
        # Walk the shift by float32 steps until the IoU crosses the threshold.
        above = k % 3 != 0  # two in three just above, one in three at or just below
        value, box = _shifted_box(a, shift)
        for _ in range(10000):
            if (above and value > threshold) or (not above and value <= threshold):
                break
            shift = np.nextafter(shift, f(-np.inf) if above else f(np.inf))
            value, box = _shifted_box(a, shift)
        assert abs(value - threshold) < 1e-4
        rows += [a, box]
    return torch.tensor(np.array(rows, dtype=np.float32))


def _datasets(n, threshold):
    boxes, scores, _ = random_detections(n, seed=n)
    yield "random", boxes, scores
    yield "integer", _integer_boxes(n, seed=n), scores
    if n >= 2:
        near = _near_threshold_boxes(n // 2, threshold, seed=n)
        g = torch.Generator().manual_seed(n + 1)
        yield "near threshold", near, torch.rand(near.shape[0], generator=g)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("n", [0, 1, 10, 1000, 5000])
def test_nms_equals_torchvision(n, threshold):
    for name, boxes, scores in _datasets(n, threshold):
        expected = torchvision.ops.nms(boxes, scores, threshold)
        got = nms(boxes, scores, threshold)
        assert torch.equal(got, expected), f"{name}, n={n}, threshold={threshold}"


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("n", [0, 1, 10, 1000, 5000])
def test_class_spec_nms_equals_torchvision_batched_nms(n, threshold):
    for name, boxes, _ in _datasets(n, threshold):
        g = torch.Generator().manual_seed(7)
        scores = torch.randperm(len(boxes), generator=g).float() / max(len(boxes), 1)
        classes = torch.randint(0, 20, (len(boxes),), generator=g)
        got = class_spec_nms(boxes, scores, classes, threshold)
        # batched_nms itself (its per-class loop above 1000 boxes, the offset trick below,
        # exact for integer boxes); torchvision's own per-class loop for float boxes.
        if len(boxes) > 1000 or name == "integer":
            expected = torchvision.ops.batched_nms(boxes, scores, classes, threshold)
        else:
            expected = _batched_nms_vanilla(boxes, scores, classes, threshold)
        assert got.tolist() == by_score_then_index(expected, scores), (name, n, threshold)


def test_degenerate_boxes_equal_torchvision():
    inf = float("inf")
    boxes = tensor(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 10],  # duplicate
            [5, 5, 5, 5],  # point
            [5, 5, 5, 5],  # the same point: zero union
            [0, 0, 10, 0],  # line
            [10, 10, 0, 0],  # inverted
            [2, 2, 12, inf],  # infinite
            [-inf, 0, 5, 5],
            [1, 1, 9, 9],
        ]
    )
    scores = tensor([0.1, 0.9, 0.8, 0.85, 0.7, 0.95, 0.6, 0.5, 0.4])
    for threshold in (0.0, 0.3, 0.5, 1.0):
        expected = torchvision.ops.nms(boxes, scores, threshold)
        assert torch.equal(nms(boxes, scores, threshold), expected), threshold


def test_long_suppression_chain_across_blocks():
    # Box k = [k, 0, k + 10, 10], scores falling along the chain: IoU(k, k+1) = 9/11 > 0.7
    # and IoU(k, k+2) = 8/12 < 0.7, so the greedy result alternates and every decision
    # depends on the one before (2500 boxes: a chain through several resolution blocks).
    k = torch.arange(2500, dtype=torch.float32)
    boxes = torch.stack((k, torch.zeros_like(k), k + 10, torch.full_like(k, 10)), 1)
    scores = 1 - k / 2500
    expected = torchvision.ops.nms(boxes, scores, 0.7)
    assert expected.tolist() == list(range(0, 2500, 2))
    assert torch.equal(nms(boxes, scores, 0.7), expected)


# Each internal path of detops.nms forced on (module constants), against torchvision.
INTERNAL_PATHS = {
    "exact x-windows": {"_BUCKET_MAX": -1},
    "y-bins": {"_CPU_TILE": 1 << 10},
    "greedy by blocks": {"_ROUNDS": 0, "_BLOCK": 64},
    "all pairs of each group": {"_DENSE": 1e-9},
    "pairs listed one by one": {"_EXPLICIT_COST": 1e-3},
    "dense tiles only": {"_EXPLICIT_COST": 1e9, "_TILE_COST": 0},
    "dense tiles in small steps, frequent flushes": {
        "_EXPLICIT_COST": 1e9,
        "_TILE_COST": 0,
        "_CPU_STEP": 512,
        "_FLUSH": 8,
    },
    "pairs listed in small ranges": {"_EXPLICIT_COST": 1e-3, "_CPU_LISTED": 64},
    "greedy resolution in torch ops (the CUDA path)": {"_NUMPY_GREEDY": False},
    "greedy in torch ops, by blocks": {"_NUMPY_GREEDY": False, "_ROUNDS": 0, "_BLOCK": 64},
}


@pytest.mark.parametrize("settings_", INTERNAL_PATHS.values(), ids=INTERNAL_PATHS.keys())
def test_every_internal_path_equals_torchvision(settings_, monkeypatch):
    module = sys.modules["detops.nms"]  # detops.nms the attribute is the function
    for name, value in settings_.items():
        monkeypatch.setattr(module, name, value)
    # (the kernel, which clustered input may be routed to above 800 boxes, is not ours)
    monkeypatch.setattr(module, "_kernel_is_cheaper", lambda *args, **kwargs: False)
    for n in (300, 2000):
        boxes, scores, classes = random_detections(n, seed=n)
        boxes[::7] = boxes[::7, [2, 3, 0, 1]]  # some inverted boxes
        for threshold in (0.3, 0.7):
            assert torch.equal(
                nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
            )
            expected = _batched_nms_vanilla(boxes, scores, classes, threshold)
            got = class_spec_nms(boxes, scores, classes, threshold)
            assert got.tolist() == by_score_then_index(expected, scores)
        drop = torch.rand(3, n, generator=torch.Generator().manual_seed(n)) < 0.3
        padded = torch.where(drop, float("-inf"), scores.expand(3, n))
        batched = batched_nms_per_image(boxes.expand(3, n, 4), padded, classes.expand(3, n), 0.5)
        for b in range(3):
            valid = (padded[b] > float("-inf")).nonzero().squeeze(1)
            row = valid[class_spec_nms(boxes[valid], padded[b, valid], classes[valid], 0.5)]
            assert batched[b][batched[b] >= 0].tolist() == row.tolist()


@pytest.mark.parametrize(
    "entry",
    [e for e in REGISTRY if e.op in (nms, class_spec_nms, batched_nms_per_image)],
    ids=lambda e: e.name,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_windowed_path_matches_reference(entry, dtype):
    # Registry inputs are small enough for the NumPy and all-pairs paths; switch them off so
    # that the windows, tiles and greedy resolution meet the reference on them too.
    @settings(max_examples=30)
    @given(case=entry.strategy())
    def check(case):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys.modules["detops.nms"], "_DENSE", float("inf"))
            patch.setattr(sys.modules["detops.nms"], "NUMPY_NMS_MAX_BOXES", 0)
            entry.assert_matches(case, dtype, "cpu")

    check()


def test_batched_nms_per_image_equals_a_loop_of_batched_nms():
    boxes, scores, classes = random_detections(400, seed=11, batch=(6,))
    scores[1, 100:] = float("-inf")  # padding candidates
    scores[4] = float("-inf")  # an image without candidates
    for threshold, limit in ((0.5, None), (0.3, 50), (0.7, 1000)):
        got = batched_nms_per_image(boxes, scores, classes, threshold, max_detections=limit)
        for b in range(6):
            valid = (scores[b] > float("-inf")).nonzero().squeeze(1)
            kept = _batched_nms_vanilla(
                boxes[b, valid], scores[b, valid], classes[b, valid], threshold
            )
            row = [valid[i].item() for i in by_score_then_index(kept, scores[b, valid])][:limit]
            assert got[b, : len(row)].tolist() == row
            assert (got[b, len(row) :] == -1).all()
        agnostic = batched_nms_per_image(boxes, scores, None, threshold)
        for b in (0, 2):
            assert (
                agnostic[b][agnostic[b] >= 0].tolist()
                == nms(boxes[b], scores[b], threshold).tolist()
            )


def test_inputs_are_not_modified_and_may_require_grad_or_be_strided():
    boxes, scores, classes = random_detections(500, seed=5)
    strided = boxes.t().contiguous().t()  # the same values, column-major
    assert not strided.is_contiguous()
    grad_boxes, grad_scores = boxes.clone().requires_grad_(), scores.clone().requires_grad_()
    before = boxes.clone(), scores.clone()
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(nms(strided, scores, 0.5), expected)
    assert torch.equal(nms(grad_boxes, grad_scores, 0.5), expected)
    class_spec_nms(boxes, scores, classes, 0.5)
    batched_nms_per_image(boxes[None], scores[None], classes[None], 0.5)
    assert torch.equal(boxes, before[0]) and torch.equal(scores, before[1])


# ----------------------------------------------------------------------------------------
# laws (hypothesis)
# ----------------------------------------------------------------------------------------


def _iou32(boxes):
    """IoU in torchvision's float32 arithmetic, as float64 (compared like NMS compares)."""
    return torchvision.ops.box_iou(boxes, boxes).double()


def _as_torch(case):
    boxes, scores = (torch.tensor(a, dtype=torch.float32) for a in case.args[:2])
    return boxes, scores, case.args[-1]


@settings(max_examples=40)
@given(case=nms_cases())
def test_laws_of_nms(case):
    boxes, scores, threshold = _as_torch(case)
    keep = nms(boxes, scores, threshold)
    # Idempotent: the kept boxes survive another pass, in the same order.
    assert nms(boxes[keep], scores[keep], threshold).tolist() == list(range(len(keep)))
    iou = _iou32(boxes)
    kept = keep.tolist()
    # No two kept boxes overlap above the threshold.
    assert not (iou[keep][:, keep].fill_diagonal_(0) > threshold).any()
    # Every suppressed box overlaps a kept box visited before it above the threshold.
    rank = {i: (-scores[i].item(), i) for i in range(len(scores))}
    for i in sorted(set(range(len(scores))) - set(kept)):
        assert any(iou[i, k] > threshold and rank[k] < rank[i] for k in kept), i
    # Independent of the input order (scores are distinct).
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(len(kept)))
    assert perm[nms(boxes[perm], scores[perm], threshold)].tolist() == kept


@settings(max_examples=40)
@given(case=class_nms_cases())
def test_laws_of_class_spec_nms(case):
    boxes, scores, threshold = _as_torch(case)
    classes = torch.as_tensor(case.args[2])
    keep = class_spec_nms(boxes, scores, classes, threshold)
    same_class = classes[:, None] == classes[None, :]
    iou = torch.where(same_class, _iou32(boxes), 0.0)
    kept = keep.tolist()
    assert not (iou[keep][:, keep].fill_diagonal_(0) > threshold).any()
    rank = {i: (-scores[i].item(), i) for i in range(len(scores))}
    for i in sorted(set(range(len(scores))) - set(kept)):
        assert any(iou[i, k] > threshold and rank[k] < rank[i] for k in kept), i
    # Per class, it is plain nms; merged, it is sorted by score.
    for c in classes.unique():
        members = (classes == c).nonzero().squeeze(1)
        own = members[nms(boxes[members], scores[members], threshold)]
        assert sorted(own.tolist()) == sorted(k for k in kept if classes[k] == c)
    assert kept == sorted(kept, key=lambda i: rank[i])
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(len(kept)))
    assert (
        perm[class_spec_nms(boxes[perm], scores[perm], classes[perm], threshold)].tolist() == kept
    )


@settings(max_examples=20)
@given(data=st.data())
def test_batched_rows_equal_per_image_class_spec_nms(data):
    images, n = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 30))
    boxes = torch.tensor(
        np.stack([data.draw(nms_boxes(n)) for _ in range(images)]), dtype=torch.float32
    )
    scores = torch.tensor(
        np.stack([data.draw(distinct_scores(n)) for _ in range(images)]), dtype=torch.float32
    )
    scores = scores.reshape(images, n)
    boxes = boxes.reshape(images, n, 4)
    scores[torch.rand(images, n, generator=torch.Generator().manual_seed(n)) < 0.3] = float("-inf")
    classes = torch.randint(0, 3, (images, n), generator=torch.Generator().manual_seed(images))
    threshold = data.draw(st.sampled_from([0.2, 0.45, 0.6]))
    limit = data.draw(st.sampled_from([None, 2, 10]))
    out = batched_nms_per_image(boxes, scores, classes, threshold, max_detections=limit)
    for b in range(images):
        valid = (scores[b] > float("-inf")).nonzero().squeeze(1)
        row = valid[class_spec_nms(boxes[b, valid], scores[b, valid], classes[b, valid], threshold)]
        row = row.tolist()[:limit]
        assert out[b, : len(row)].tolist() == row and (out[b, len(row) :] == -1).all()


# ----------------------------------------------------------------------------------------
# error tables
# ----------------------------------------------------------------------------------------

B = tensor([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]])
S = tensor([0.9, 0.8, 0.7])
C = torch.tensor([0, 1, 0])
NAN_S = tensor([0.9, float("nan"), 0.7])
META_S = torch.zeros(3, device="meta")

NMS_ERRORS = [
    (([[0, 0, 1, 1]], S[:1], 0.5), TypeError, r"nms: boxes must be a torch.Tensor, got list"),
    ((B, [0.9, 0.8, 0.7], 0.5), TypeError, r"nms: scores must be a torch.Tensor, got list"),
    ((B.long(), S, 0.5), TypeError, r"nms: boxes must have a floating dtype.*got torch.int64"),
    (
        (B, S.double(), 0.5),
        TypeError,
        r"scores must have the dtype of boxes \(torch.float32\), got torch.float64",
    ),
    ((B[:, :3], S, 0.5), ValueError, r"nms: boxes must have shape \[N, 4\], got \[3, 3\]"),
    ((B[None], S, 0.5), ValueError, r"boxes must have shape \[N, 4\], got \[1, 3, 4\]"),
    (
        (B, S[:2], 0.5),
        ValueError,
        r"scores must have shape \[N\] = \[3\] \(from boxes \[3, 4\]\), got \[2\]",
    ),
    ((B, S, -0.1), ValueError, r"nms: iou_threshold must lie in \[0, 1\], got -0.1"),
    ((B, S, 1.5), ValueError, r"iou_threshold must lie in \[0, 1\], got 1.5"),
    ((B, S, float("nan")), ValueError, r"iou_threshold must lie in \[0, 1\], got nan"),
    ((B, S, "0.5"), TypeError, r"iou_threshold must be a float in \[0, 1\], got str"),
    ((B, S, None), TypeError, r"iou_threshold must be a float in \[0, 1\], got NoneType"),
    (
        (B, S, torch.tensor(True)),
        TypeError,
        r"iou_threshold must be a float in \[0, 1\], got a torch.bool tensor of shape \[\]",
    ),
    (
        (B, S, torch.tensor([0.5, 0.5])),
        TypeError,
        r"iou_threshold must be .*, got a torch.float32 tensor of shape \[2\]",
    ),
    ((B, S, torch.tensor(1.5)), ValueError, r"nms: iou_threshold must lie in \[0, 1\]"),
    ((B, NAN_S, 0.5), ValueError, r"nms: scores must not contain NaN"),
    (
        (B, META_S, 0.5),
        ValueError,
        r"nms: all tensors must be on one device, got boxes on cpu, scores on meta",
    ),
]


@pytest.mark.parametrize(("args", "error", "match"), NMS_ERRORS)
def test_nms_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        nms(*args)


CLASS_ERRORS = [
    (
        (B, S, C.float(), 0.5),
        TypeError,
        r"class_spec_nms: class_ids must have an integer dtype, got torch.float32",
    ),
    ((B, S, C.bool(), 0.5), TypeError, r"class_ids must have an integer dtype, got torch.bool"),
    ((B, S, [0, 1, 0], 0.5), TypeError, r"class_ids must be a torch.Tensor, got list"),
    ((B, S, None, 0.5), TypeError, r"class_spec_nms: class_ids must be a torch.Tensor, got None"),
    (
        (B, S, C[:2], 0.5),
        ValueError,
        r"class_ids must have shape \[N\] = \[3\] \(from scores \[3\]\), got \[2\]",
    ),
    ((B[:, :2], S, C, 0.5), ValueError, r"class_spec_nms: boxes must have shape \[N, 4\]"),
    ((B.tolist(), S, C, 0.5), TypeError, r"class_spec_nms: boxes must be a torch.Tensor, got list"),
    ((B[0, 0], S, C, 0.5), ValueError, r"class_spec_nms: boxes must have shape \[N, 4\], got \[\]"),
    ((B, S.half(), C, 0.5), TypeError, r"class_spec_nms: scores must have the dtype of boxes"),
    ((B, S, C, 2.0), ValueError, r"class_spec_nms: iou_threshold must lie in \[0, 1\]"),
    (
        (B, S, C.to("meta"), 0.5),
        ValueError,
        r"all tensors must be on one device.*class_ids on meta",
    ),
    ((B, NAN_S, C, 0.5), ValueError, r"class_spec_nms: scores must not contain NaN"),
]


@pytest.mark.parametrize(("args", "error", "match"), CLASS_ERRORS)
def test_class_spec_nms_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        class_spec_nms(*args)


BATCHED_ERRORS = [
    (
        (B, S, None, 0.5),
        {},
        ValueError,
        r"batched_nms_per_image: boxes must have shape \[B, N, 4\], got \[3, 4\]",
    ),
    (
        (B[None], S, None, 0.5),
        {},
        ValueError,
        r"scores must have shape \[B, N\] = \[1, 3\] \(from boxes \[1, 3, 4\]\), got \[3\]",
    ),
    (
        (B[None], S[None], C, 0.5),
        {},
        ValueError,
        r"class_ids must have shape \[B, N\] = \[1, 3\].*got \[3\]",
    ),
    (
        (B[None], S[None], C[None].float(), 0.5),
        {},
        TypeError,
        r"class_ids must have an integer dtype",
    ),
    ((B[None], S[None].double(), None, 0.5), {}, TypeError, r"scores must have the dtype of boxes"),
    ((B[None], S[None], None, -1), {}, ValueError, r"iou_threshold must lie in \[0, 1\], got -1"),
    (
        (B[None], S[None], None, 0.5),
        {"max_detections": -1},
        ValueError,
        r"max_detections must be >= 0, got -1",
    ),
    (
        (B[None], S[None], None, 0.5),
        {"max_detections": 2.5},
        TypeError,
        r"max_detections must be None or an int >= 0, got float",
    ),
    (
        (B[None], S[None], None, 0.5),
        {"max_detections": True},
        TypeError,
        r"max_detections must be None or an int >= 0, got bool",
    ),
    (
        (B[None], NAN_S[None], None, 0.5),
        {},
        ValueError,
        r"batched_nms_per_image: scores must not contain NaN",
    ),
    ((B[None], META_S[None], None, 0.5), {}, ValueError, r"all tensors must be on one device"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), BATCHED_ERRORS)
def test_batched_nms_per_image_error_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        batched_nms_per_image(*args, **kwargs)


def test_boxes_and_scores_on_different_devices(device):
    if device == "cpu":
        pytest.skip("needs a second device (the meta-device rows of the tables cover cpu)")
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        nms(B.to(device), S, 0.5)


# ------------------------------------------ both paths of nms against the reference
# nms calls torchvision's kernel below _KERNEL_MAX_BOXES on finite float32/float64 CPU
# input; the registry's cases (small) then reach only the kernel. detops' own sparse path
# is checked on the same cases here, and the dispatch itself on each side of the cut-off.

NMS_ENTRY = next(entry for entry in REGISTRY if entry.op is nms)
SPARSE_NMS_ENTRY = dataclasses.replace(
    NMS_ENTRY, name="nms (sparse path)", op=importlib.import_module("detops.nms")._sparse_nms
)


@pytest.mark.parametrize("dtype", SPARSE_NMS_ENTRY.dtypes, ids=str)
def test_sparse_path_matches_reference_on_the_registry_cases(dtype):
    @given(case=SPARSE_NMS_ENTRY.strategy())
    def check(case):
        SPARSE_NMS_ENTRY.assert_matches(case, dtype, "cpu")

    check()


@pytest.mark.parametrize("n", [1, 10, 1199, 1200, 1300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernel_and_sparse_path_agree_on_each_side_of_the_cutoff(n, dtype):
    nms_module = importlib.import_module("detops.nms")
    boxes, scores, _ = random_detections(n, seed=n)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    scores[::7] = scores[0]  # ties
    expected = ref.nms(boxes.double().numpy(), scores.double().numpy(), 0.5)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5).numpy(), expected)
    np.testing.assert_array_equal(nms_module._sparse_nms(boxes, scores, 0.5).numpy(), expected)
    assert nms_module._kernel_gives_our_answer(boxes, scores) == (n < 1200)


# class_spec_nms takes a NumPy path up to NUMPY_NMS_MAX_BOXES finite boxes on CPU; the
# registry's cases reach it. The sparse torch path is checked on the same cases, and each
# internal branch of the NumPy path is forced on and compared with the reference.

CLASS_NMS_ENTRY = next(entry for entry in REGISTRY if entry.op is class_spec_nms)


@pytest.mark.parametrize("dtype", CLASS_NMS_ENTRY.dtypes, ids=str)
def test_class_spec_sparse_path_matches_reference_on_the_registry_cases(dtype):
    entry = dataclasses.replace(CLASS_NMS_ENTRY, op=sparse_class_spec_nms)

    @given(case=entry.strategy())
    def check(case):
        entry.assert_matches(case, dtype, "cpu")

    check()


NUMPY_PATHS = {
    "pairs read from one mask": {"_ALL_PAIRS_MAX": 10**9, "_DENSE_MAX": 0},
    "IoU of all pairs in one matrix": {
        "_ALL_PAIRS_MAX": 10**9,
        "_DENSE_MAX": 10**9,
        "_DENSE_SHARE": 10**9,
    },
    "pairs of each group": {"_ALL_PAIRS_MAX": 0, "_PAIRS_PER_KERNEL_CALL": 10**9},
    "kernel once per group": {"_ALL_PAIRS_MAX": 0, "_PAIRS_PER_KERNEL_CALL": 0},
    "greedy box by box": {"_ALL_PAIRS_MAX": 0, "_PAIR_LOOP_MAX": 0},
}


@pytest.mark.parametrize("settings_", NUMPY_PATHS.values(), ids=NUMPY_PATHS.keys())
@pytest.mark.parametrize("dtype", CLASS_NMS_ENTRY.dtypes, ids=str)
def test_class_spec_numpy_paths_match_reference_on_the_registry_cases(settings_, dtype):
    @settings(max_examples=40)
    @given(case=CLASS_NMS_ENTRY.strategy())
    def check(case):
        with pytest.MonkeyPatch.context() as patch:
            for name, value in settings_.items():
                patch.setattr(sys.modules["detops._nms_numpy"], name, value)
            CLASS_NMS_ENTRY.assert_matches(case, dtype, "cpu")

    check()


@pytest.mark.parametrize("settings_", NUMPY_PATHS.values(), ids=NUMPY_PATHS.keys())
@pytest.mark.parametrize("n, classes", [(1, 1), (30, 20), (300, 2), (300, 20), (767, 5)])
def test_class_spec_numpy_paths_on_crowded_and_sparse_scenes(settings_, n, classes, monkeypatch):
    for name, value in settings_.items():
        monkeypatch.setattr(sys.modules["detops._nms_numpy"], name, value)
    boxes, scores, _ = random_detections(n, seed=n)
    g = torch.Generator().manual_seed(n + classes)
    class_ids = torch.randint(0, classes, (n,), generator=g)
    boxes[1::3] = boxes[0] + torch.rand(4, generator=g)  # a crowd: long suppression chains
    scores[::5] = scores[0]  # ties
    expected = ref.class_spec_nms(
        boxes.double().numpy(), scores.double().numpy(), class_ids.numpy(), 0.5
    )
    np.testing.assert_array_equal(class_spec_nms(boxes, scores, class_ids, 0.5).numpy(), expected)
    sparse = sparse_class_spec_nms(boxes, scores, class_ids, 0.5)
    np.testing.assert_array_equal(sparse.numpy(), expected)


def test_class_spec_numpy_path_hands_inf_to_the_torch_path_and_refuses_nan():
    boxes, scores, class_ids = random_detections(50, seed=1)
    boxes[3, 2] = float("inf")
    with np.errstate(invalid="ignore"):  # the reference's inf - inf, which it treats as IoU 0
        expected = ref.class_spec_nms(
            boxes.double().numpy(), scores.double().numpy(), class_ids.numpy(), 0.5
        )
    np.testing.assert_array_equal(class_spec_nms(boxes, scores, class_ids, 0.5).numpy(), expected)
    boxes[3, 2] = float("nan")
    with pytest.raises(ValueError, match="class_spec_nms: boxes must not contain NaN"):
        class_spec_nms(boxes, scores, class_ids, 0.5)


def _reference_batched(boxes, scores, class_ids, threshold, max_detections):
    """Per image: the reference's class_spec_nms (or nms) on the non-padding candidates,
    cut to max_detections, padded with -1."""
    rows = []
    for b in range(scores.shape[0]):
        valid = (scores[b] > float("-inf")).nonzero().squeeze(1).numpy()
        bx, sc = boxes[b].double().numpy()[valid], scores[b].double().numpy()[valid]
        if class_ids is None:
            kept = ref.nms(bx, sc, threshold)
        else:
            kept = ref.class_spec_nms(bx, sc, class_ids[b].numpy()[valid], threshold)
        rows.append(valid[np.asarray(kept, dtype=np.int64)][:max_detections].tolist())
    width = max(len(r) for r in rows)
    return [r + [-1] * (width - len(r)) for r in rows]


@pytest.mark.parametrize("with_classes", [True, False])
@pytest.mark.parametrize("max_detections", [None, 3])
@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy path", "torch path"])
def test_batched_nms_per_image_paths_with_padding_and_caps(
    with_classes, max_detections, numpy_path, monkeypatch
):
    if not numpy_path:
        monkeypatch.setattr(sys.modules["detops.nms"], "NUMPY_NMS_MAX_BOXES", 0)
    boxes, scores, class_ids = random_detections(60, seed=7, batch=(4,))
    boxes[:, 1::4] = boxes[:, :1] + 2.0  # overlaps to suppress
    scores[1, ::3] = float("-inf")  # padding
    scores[3] = float("-inf")  # an image with nothing
    class_ids = class_ids * 1000 - 7000 if with_classes else None  # negative, spread ids
    got = batched_nms_per_image(boxes, scores, class_ids, 0.5, max_detections=max_detections)
    assert got.tolist() == _reference_batched(boxes, scores, class_ids, 0.5, max_detections)


def test_batched_nms_per_image_numpy_path_refuses_nan_and_handles_huge_class_spans():
    boxes, scores, class_ids = random_detections(30, seed=8, batch=(2,))
    huge = class_ids.clone()
    huge[0, 0] = -(2**62)
    expected = _reference_batched(boxes, scores, huge, 0.5, None)
    assert batched_nms_per_image(boxes, scores, huge, 0.5).tolist() == expected
    scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match="batched_nms_per_image: scores must not contain NaN"):
        batched_nms_per_image(boxes, scores, class_ids, 0.5)


def _valid_by_the_full_checks(boxes, scores, threshold) -> bool:
    module = sys.modules["detops.nms"]
    try:
        boxes, scores = module._check_boxes_scores("nms", boxes, scores, batched=False)
        module._check_common("nms", boxes, scores, threshold)
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize(
    ("variant", "fast"),
    [
        ("float32", True),
        ("float64", True),
        ("float16", False),  # detops' own path (torchvision's CPU kernel refuses it)
        ("int threshold", False),
        ("threshold 1.5", False),
        ("3-D boxes", False),
        ("5 columns", False),
        ("scores of another length", False),
        ("scores of another dtype", False),
        ("no boxes", False),
        ("1200 boxes", False),
        ("meta device", False),
        ("a list", False),
    ],
)
def test_small_call_fast_path_takes_only_calls_the_full_checks_accept(variant, fast):
    """nms's fast path (argument checks in a few attribute reads, then torchvision's
    kernel) must never take a call that the full checks would refuse or send elsewhere."""
    boxes, scores, _ = random_detections(20, seed=3)
    threshold: object = 0.5
    if variant == "float64":
        boxes, scores = boxes.double(), scores.double()
    elif variant == "float16":
        boxes, scores = boxes.half(), scores.half()
    elif variant == "int threshold":
        threshold = 1
    elif variant == "threshold 1.5":
        threshold = 1.5
    elif variant == "3-D boxes":
        boxes = boxes[None]
    elif variant == "5 columns":
        boxes = torch.cat((boxes, boxes[:, :1]), dim=1)
    elif variant == "scores of another length":
        scores = scores[:-1]
    elif variant == "scores of another dtype":
        scores = scores.double()
    elif variant == "no boxes":
        boxes, scores = boxes[:0], scores[:0]
    elif variant == "1200 boxes":
        boxes, scores, _ = random_detections(1200, seed=3)
    elif variant == "meta device":
        boxes, scores = boxes.to("meta"), scores.to("meta")
    elif variant == "a list":
        boxes = boxes.tolist()
    module = sys.modules["detops.nms"]
    taken = module._is_common_cpu_call(boxes, scores, threshold, module._KERNEL_MAX_BOXES)
    assert taken == fast
    if variant == "1200 boxes":  # recognised too, then routed by size, not to the kernel
        taken = module._is_common_cpu_call(boxes, scores, threshold)
        assert taken
    if taken:
        assert _valid_by_the_full_checks(boxes, scores, threshold)
        assert torch.equal(
            nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
        )


@pytest.mark.parametrize(
    ("variant", "fast"),
    [
        ("int64 ids", True),
        ("int32 ids", True),
        ("768 boxes", True),
        ("769 boxes", False),
        ("float ids", False),
        ("bool ids", False),
        ("ids of another length", False),
        ("ids as a list", False),
    ],
)
def test_class_spec_fast_path_takes_only_calls_the_full_checks_accept(variant, fast):
    n = {"768 boxes": 768, "769 boxes": 769}.get(variant, 30)
    boxes, scores, classes = random_detections(n, seed=5)
    ids: object = classes
    if variant == "int32 ids":
        ids = classes.int()
    elif variant == "float ids":
        ids = classes.float()
    elif variant == "bool ids":
        ids = classes > 3
    elif variant == "ids of another length":
        ids = classes[:-1]
    elif variant == "ids as a list":
        ids = classes.tolist()
    module = sys.modules["detops.nms"]
    limit = module.NUMPY_NMS_MAX_BOXES + 1
    taken = module._is_common_cpu_call(boxes, scores, 0.5, limit, ids)
    assert taken == fast
    if taken:
        assert isinstance(ids, torch.Tensor)
        assert _valid_by_the_full_checks(boxes, scores, 0.5)
        module._check_class_ids("class_spec_nms", ids, scores, "[N]")  # raises if refused
        expected = _batched_nms_vanilla(boxes, scores, ids, 0.5)
        got = class_spec_nms(boxes, scores, ids, 0.5)
        assert got.tolist() == by_score_then_index(expected, scores)


# ----------------------------------------------------------------------------------------
# the fast paths' kernel call and finite checks
# ----------------------------------------------------------------------------------------


def test_the_direct_kernel_callable_is_torchvisions_kernel():
    module = sys.modules["detops.nms"]
    kernel = module._torchvision_nms_kernel()
    default = getattr(torch.ops.torchvision.nms, "default", None)
    if default is not None and hasattr(default, "_op"):
        assert kernel is default._op  # the fastest callable, where this torch has it
    boxes, scores, _ = random_detections(200, seed=11)
    boxes[1::4] = boxes[::4] + 0.5  # overlaps to suppress
    scores[::7] = scores[0]  # ties
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        for threshold in (0.0, 0.3, 0.5, 1.0):
            expected = torchvision.ops.nms(b, s, threshold)
            assert torch.equal(kernel(b, s, threshold), expected)
            assert torch.equal(module._kernel_nms(b, s, threshold), expected)
            assert torch.equal(nms(b, s, threshold), expected)


def test_direct_callable_falls_back_where_private_attributes_are_missing():
    direct = sys.modules["detops.nms"]._direct_callable
    op = object()
    overload = types.SimpleNamespace(_op=op)
    assert direct(types.SimpleNamespace(default=overload)) is op
    bare_overload = types.SimpleNamespace()
    assert direct(types.SimpleNamespace(default=bare_overload)) is bare_overload
    packet = object()
    assert direct(packet) is packet


def _records_grad() -> bool:
    x = torch.ones(3, requires_grad=True)
    y = (x * 2).sum()
    return y.grad_fn is not None and y.requires_grad


@pytest.mark.parametrize("n", [10, 100])  # the finite check in Python, in torch
def test_fast_paths_leave_autograd_as_they_found_it(n):
    """The kernel runs below autograd inside the call only: afterwards grad mode is what
    it was, new tensors record grad again, and inputs that require grad still work."""
    boxes, scores, classes = random_detections(n, seed=12)
    boxes = boxes.requires_grad_()
    scores = scores.requires_grad_()
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    expected_classes = _batched_nms_vanilla(boxes.detach(), scores.detach(), classes, 0.5)
    assert torch.is_grad_enabled() and _records_grad()
    assert torch.equal(nms(boxes, scores, 0.5), expected)
    assert torch.is_grad_enabled() and _records_grad()
    got = class_spec_nms(boxes, scores, classes, 0.5)
    assert got.tolist() == by_score_then_index(expected_classes, scores.detach())
    assert torch.is_grad_enabled() and _records_grad()
    loss = (boxes * 2).sum() + scores.sum()  # the inputs still build a graph
    loss.backward()
    assert torch.equal(boxes.grad, torch.full_like(boxes, 2.0))
    with torch.no_grad():
        assert torch.equal(nms(boxes, scores, 0.5), expected)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    with pytest.raises(ValueError, match="nms: boxes must not contain NaN"):
        nms(boxes.detach().index_fill(0, torch.tensor([3]), float("nan")), scores, 0.5)
    assert torch.is_grad_enabled() and _records_grad()


@pytest.mark.parametrize("n", [10, 24, 25, 100])  # the finite check in Python, in torch
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("where", ["boxes", "scores"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_fast_path_finite_checks_send_nan_and_inf_to_detops_path(n, strided, where, value):
    boxes, scores, classes = random_detections(n, seed=13)
    if where == "boxes":
        boxes[n // 2, 2] = value
    else:
        scores[n // 2] = value
    if strided:
        boxes = boxes.t().contiguous().t()
        scores = torch.stack((scores, scores), 1)[:, 0]
        assert not boxes.is_contiguous() and not scores.is_contiguous()
    if np.isnan(value):
        with pytest.raises(ValueError, match=f"nms: {where} must not contain NaN"):
            nms(boxes, scores, 0.5)
        with pytest.raises(ValueError, match=f"class_spec_nms: {where} must not contain NaN"):
            class_spec_nms(boxes, scores, classes, 0.5)
        return
    bn, sn = boxes.double().numpy(), scores.double().numpy()
    with np.errstate(invalid="ignore"):  # the reference's inf - inf, which is IoU 0
        expected = ref.nms(bn, sn, 0.5)
        expected_classes = ref.class_spec_nms(bn, sn, classes.numpy(), 0.5)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5).numpy(), expected)
    got = class_spec_nms(boxes, scores, classes, 0.5).numpy()
    np.testing.assert_array_equal(got, expected_classes)


@pytest.mark.parametrize("n", [25, 50, 1000])  # (up to 24 boxes Python sums in float64)
def test_fast_path_finite_check_overflow_only_changes_the_route(n, monkeypatch):
    """Finite float32 scores near 1e20, whose squares and sums overflow: the finite check
    reads them as non-finite and sends the call to detops' own path, whose answer is still
    torchvision's and the reference's."""
    boxes, scores, _ = random_detections(n, seed=5)
    scores = scores * 1e20 + 1e20
    assert torch.isfinite(scores).all() and torch.isinf((scores * scores).sum())
    routes = []
    impl = sys.modules["detops.nms"]._nms_impl
    monkeypatch.setattr(
        sys.modules["detops.nms"], "_nms_impl", lambda *a: routes.append(a) or impl(*a)
    )
    got = nms(boxes, scores, 0.5)
    assert torch.equal(got, torchvision.ops.nms(boxes, scores, 0.5))
    np.testing.assert_array_equal(
        got.numpy(), ref.nms(boxes.double().numpy(), scores.double().numpy(), 0.5)
    )
    assert len(routes) == 1  # detops' own path, not the quick kernel call


@pytest.mark.parametrize("n", [81, 200, 768])
@pytest.mark.parametrize("class_id", [0, -7])
def test_class_spec_nms_with_one_class_is_plain_nms(n, class_id, monkeypatch):
    """Every box of one class: the NumPy path hands the whole call to torchvision's kernel
    (one call, no sort by class); the answer is plain NMS, as the reference says."""
    calls = []
    kernel = sys.modules["detops.nms"]._kernel_nms
    monkeypatch.setattr(
        sys.modules["detops.nms"], "_kernel_nms", lambda *a: calls.append(a[0]) or kernel(*a)
    )
    boxes, scores, _ = random_detections(n, seed=n)
    classes = torch.full((n,), class_id)
    kept = class_spec_nms(boxes, scores, classes, 0.5)
    assert len(calls) == 1 and calls[0] is boxes  # the caller's tensor, not a sorted copy
    expected = ref.class_spec_nms(boxes.numpy(), scores.numpy(), classes.numpy(), 0.5)
    assert kept.tolist() == list(expected)
    assert torch.equal(kept, nms(boxes, scores, 0.5))
