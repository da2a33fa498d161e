"""Above 1200 boxes on CPU (class_spec_nms: 768), nms and class_spec_nms choose between
torchvision's kernel (cheap on clustered detections, where it skips suppressed boxes) and
detops' sparse path (cheap on scattered boxes) by a cost model and an estimate of the share
of boxes kept.

The choice must never change the answer: both routes are checked against each other and
against the reference. The choice itself is deterministic (no timing, no random state),
so the tests below pin it on inputs far from the boundary.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from nms_paths import per_class_kernel, sparse_class_spec_nms

import reference.nms as ref
from detops import batched_nms_per_image, class_spec_nms, nms
from detops._nms_numpy import best_box_hits, kept_share, kernel_per_group, top_hits
from detops.bench.cases.nms import clustered_detections, random_detections

NMS = sys.modules["detops.nms"]  # detops.nms the attribute is the function


def _inputs(kind: str, n: int, dtype: torch.dtype):
    boxes, scores, classes = (
        clustered_detections(n, seed=n) if kind == "clustered" else random_detections(n, seed=n)
    )
    return boxes.to(dtype), scores.to(dtype), classes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["clustered", "scattered"])
@pytest.mark.parametrize("n", [1300, 3000, 6000])
def test_both_routes_give_the_same_answer(n, kind, dtype, monkeypatch):
    boxes, scores, classes = _inputs(kind, n, dtype)
    answers = {}
    for route in (True, False):
        monkeypatch.setattr(NMS, "_kernel_is_cheaper", lambda *args, route=route, **kwargs: route)
        answers[route] = (nms(boxes, scores, 0.5), class_spec_nms(boxes, scores, classes, 0.5))
    assert torch.equal(answers[True][0], answers[False][0])
    assert torch.equal(answers[True][1], answers[False][1])
    # and both are torchvision's answer (its kernel: plain, and once per class)
    assert torch.equal(answers[True][0], torchvision.ops.nms(boxes, scores, 0.5))
    assert answers[True][1].tolist() == per_class_kernel(boxes, scores, classes, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    classes=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
)
def test_kernel_per_group_matches_the_reference(n, classes, seed, threshold):
    # float64 integer boxes: the kernel's IoU and the reference's are then the same
    # correctly rounded quotient (in float32 an IoU of exactly 0.3 rounds above 0.3).
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 40, (n, 2), generator=g).double()
    boxes = torch.cat([xy, xy + torch.randint(1, 30, (n, 2), generator=g)], 1)
    scores = torch.randint(0, 8, (n,), generator=g).double()  # ties: lower index first
    ids = torch.randint(0, classes, (n,), generator=g)
    got = kernel_per_group(boxes, scores, ids, threshold, NMS._kernel_nms)
    expected = ref.class_spec_nms(boxes.numpy(), scores.numpy(), ids.numpy(), threshold)
    assert got.tolist() == list(expected)


@pytest.mark.parametrize("kind", ["clustered", "scattered"])
@pytest.mark.parametrize("n", [2000, 8000])
def test_kept_share_is_close_to_the_share_kept(kind, n):
    boxes, scores, _ = _inputs(kind, n, torch.float32)
    true_share = nms(boxes, scores, 0.5).shape[0] / n
    estimate = kept_share(boxes, scores, None, functools.partial(NMS._window_nms, 0.5), 64)
    assert estimate is not None
    assert abs(estimate - true_share) <= 0.15, (estimate, true_share)


@pytest.mark.parametrize("n", [2000, 8000])
def test_clusters_go_to_the_kernel_scattered_boxes_to_the_sparse_path(n):
    boxes, scores, classes = _inputs("clustered", n, torch.float32)
    assert NMS._kernel_is_cheaper(boxes, scores, None, 0.5)
    assert NMS._kernel_is_cheaper(boxes, scores, classes, 0.5)
    boxes, scores, classes = _inputs("scattered", n, torch.float32)
    assert not NMS._kernel_is_cheaper(boxes, scores, None, 0.5)
    if n == 8000:  # 20 classes of 400 scattered boxes: the kernel would be ~4x slower
        assert not NMS._kernel_is_cheaper(boxes, scores, classes, 0.5)


def test_the_kernel_route_needs_finite_float_cpu_input():
    boxes, scores, classes = _inputs("clustered", 2000, torch.float32)
    bad = boxes.clone()
    bad[5, 2] = float("inf")
    assert not NMS._kernel_is_cheaper(bad, scores, None, 0.5)
    assert not NMS._kernel_is_cheaper(boxes.half(), scores.half(), None, 0.5)
    assert not NMS._kernel_is_cheaper(boxes, scores, classes.to(torch.int16), 0.5)


@pytest.mark.parametrize("classes", [2, 20, 400])
@pytest.mark.parametrize("kind", ["clustered", "scattered"])
@pytest.mark.parametrize("n", [1300, 3000])
def test_class_spec_numpy_path_up_to_3000_boxes_equals_the_sparse_path(n, kind, classes):
    # Up to 3000 boxes class_spec_nms takes the NumPy path (pairs, or the kernel per large
    # class); the sparse torch path is an independent implementation of the same contract.
    boxes, scores, _ = _inputs(kind, n, torch.float32)
    ids = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(n))
    for threshold in (0.3, 0.7):
        expected = sparse_class_spec_nms(boxes, scores, ids, threshold)
        assert torch.equal(class_spec_nms(boxes, scores, ids, threshold), expected)


def test_best_box_hits_counts_the_other_boxes_of_its_group_the_best_box_suppresses():
    boxes = np.tile(np.array([[10, 20, 50, 60]], dtype=np.float32), (40, 1))
    boxes[30:] += 35  # 10 boxes apart from the pile (IoU with it below 0.5)
    scores = np.linspace(1, 0, 40, dtype=np.float32)  # box 0 is the best
    assert best_box_hits(boxes, scores, 0.5) == 29  # itself not counted
    assert best_box_hits(boxes, scores, 0.5, np.arange(40) % 2) == 14
    assert best_box_hits(boxes, scores, 1.0) == 0  # IoU 1 is not above 1
    scores[35] = 2  # the best box now lies outside the pile
    assert best_box_hits(boxes, scores, 0.5) == 9


def test_top_hits_counts_only_boxes_of_the_top_boxes_groups():
    # 40 copies of one box, each in a group of its own (say, 40 images of a batch): one
    # pile, but no box can suppress another.
    boxes = np.tile(np.array([[10, 20, 50, 60]], dtype=np.float32), (40, 1))
    scores = np.linspace(0, 1, 40, dtype=np.float32)
    assert top_hits(boxes, scores, 0.5) == 39
    assert top_hits(boxes, scores, 0.5, np.arange(40)) == 0
    assert top_hits(boxes, scores, 0.5, np.arange(40) // 20) == 19
    image = np.repeat(np.arange(16), 1000)
    clustered = [clustered_detections(1000, seed=seed) for seed in range(16)]
    boxes, scores, _ = (torch.stack(parts) for parts in zip(*clustered, strict=True))
    flat_boxes, flat_scores = boxes.reshape(-1, 4).numpy(), scores.reshape(-1).numpy()
    assert top_hits(flat_boxes, flat_scores, 0.5, image) >= 20


def test_top_hits_tells_clusters_from_scattered_boxes():
    boxes, scores, _ = _inputs("clustered", 2000, torch.float32)
    assert top_hits(boxes.numpy(), scores.numpy(), 0.5) >= 20
    boxes, scores, _ = _inputs("scattered", 2000, torch.float32)
    assert top_hits(boxes.numpy(), scores.numpy(), 0.5) < 3


@pytest.mark.parametrize("route", [True, False, None], ids=["kernel", "sparse", "chosen"])
@pytest.mark.parametrize("kind", ["clustered", "scattered"])
def test_batched_nms_per_image_above_768_boxes_equals_per_image_calls(kind, route, monkeypatch):
    if route is not None:
        monkeypatch.setattr(NMS, "_kernel_is_cheaper", lambda *args, **kwargs: route)
    data = [_inputs(kind, 400, torch.float32) for _ in range(3)]
    boxes = torch.stack([d[0] for d in data])
    scores = torch.stack([d[1] for d in data])
    classes = torch.stack([d[2] for d in data])
    scores[1, ::5] = float("-inf")  # padding
    batched = batched_nms_per_image(boxes, scores, classes, 0.5, max_detections=50)
    for b in range(3):
        valid = (scores[b] > float("-inf")).nonzero().squeeze(1)
        expected = valid[class_spec_nms(boxes[b, valid], scores[b, valid], classes[b, valid], 0.5)]
        assert batched[b][batched[b] >= 0].tolist() == expected[:50].tolist()


@pytest.mark.parametrize("n", [1500, 3000])
def test_huge_coordinates_raise_no_numpy_warning(n):
    # The route choice computes IoU-like values in NumPy; overflow there must stay silent
    # (as in the kernel) even where NumPy errors are set to raise.
    boxes, scores, classes = _inputs("clustered", n, torch.float32)
    boxes = boxes * 1e30
    before = np.geterr()
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = nms(boxes, scores, 0.5)
        got_classes = class_spec_nms(boxes, scores, classes, 0.5)
    assert np.geterr() == before
    assert torch.equal(got, torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(got_classes, sparse_class_spec_nms(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("n", [1500, 4000])
def test_inputs_with_the_negative_bit_set(n):
    # z.conj().imag is a float tensor with its negative bit set: .numpy() refuses it.
    boxes, scores, classes = _inputs("clustered", n, torch.float32)
    neg_boxes = torch.complex(torch.zeros_like(boxes), -boxes).conj().imag
    neg_scores = torch.complex(torch.zeros_like(scores), -scores).conj().imag
    assert neg_boxes.is_neg() and torch.equal(neg_boxes, boxes)
    assert torch.equal(nms(neg_boxes, neg_scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    expected = sparse_class_spec_nms(boxes, scores, classes, 0.5)  # the independent torch path
    assert torch.equal(class_spec_nms(neg_boxes, neg_scores, classes, 0.5), expected)
    batched = batched_nms_per_image(neg_boxes[None], neg_scores[None], classes[None], 0.5)
    assert batched[0].tolist() == expected.tolist()


@pytest.mark.parametrize("shape", ["ring", "line"])
def test_scattered_boxes_the_middle_window_misses_stay_on_the_sparse_path(shape):
    # Centres on a ring leave the middle of the data empty; boxes along one line put
    # every box in the middle y band. NMS keeps ~97% of them: the kernel would be ~6x
    # slower, and the window estimate must still find that out.
    g = torch.Generator().manual_seed(0)
    n = 6000
    if shape == "ring":
        angle = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
        radius = 5000 + torch.randn(n, generator=g, dtype=torch.float64) * 20
        cx, cy = radius * torch.cos(angle), radius * torch.sin(angle)
        boxes = torch.stack([cx - 5, cy - 5, cx + 5, cy + 5], 1).float()
    else:
        x = torch.rand(n, generator=g) * 1e6
        boxes = torch.stack([x, torch.zeros(n), x + 20, torch.full((n,), 10.0)], 1)
    scores = torch.rand(n, generator=g)
    window_nms = functools.partial(NMS._window_nms, 0.5)
    share = kept_share(boxes, scores, None, window_nms, 64)
    true_share = torchvision.ops.nms(boxes, scores, 0.5).shape[0] / n
    assert share is not None and abs(share - true_share) <= 0.1
    assert not NMS._kernel_is_cheaper(boxes, scores, None, 0.5)


@pytest.mark.parametrize(
    "threshold",
    [
        np.float32(0.5),
        np.float64(0.3),
        np.int64(0),
        np.float16(0.7),
        torch.tensor(0.5),
        torch.tensor([0.3], dtype=torch.float64),
    ],
    ids=repr,
)
def test_numpy_scalar_and_tensor_thresholds_work_as_in_torchvision(threshold):
    boxes, scores, classes = _inputs("scattered", 300, torch.float32)
    expected = torchvision.ops.nms(boxes, scores, threshold)  # torchvision takes them too
    assert torch.equal(nms(boxes, scores, threshold), expected)
    by_class = ref.class_spec_nms(
        boxes.double().numpy(), scores.double().numpy(), classes.numpy(), float(threshold)
    )
    assert class_spec_nms(boxes, scores, classes, threshold).tolist() == list(by_class)
    batched = batched_nms_per_image(boxes[None], scores[None], classes[None], threshold)
    assert batched[0].tolist() == list(by_class)


def test_one_large_group_per_image_is_costed_as_plain_nms():
    # batched_nms_per_image without classes: one group per image. The sparse path's cost
    # of such a group is plain NMS's, far above the per-box cost of many small groups
    # (before, 10000 clustered boxes went to the sparse path: 81 ms against 15 ms).
    for kind, kernel in (("clustered", True), ("scattered", False)):
        boxes, scores, _ = _inputs(kind, 6000, torch.float32)
        image = torch.zeros(6000, dtype=torch.int64)
        chosen = NMS._kernel_is_cheaper(boxes, scores, image, 0.5, NMS._SPARSE_BATCHED_S)
        assert chosen is kernel, kind


def test_meta_tensors_are_refused_by_name():
    boxes, scores, classes = (t.to("meta") for t in _inputs("scattered", 5, torch.float32))
    calls = {
        "nms": lambda: nms(boxes, scores, 0.5),
        "class_spec_nms": lambda: class_spec_nms(boxes, scores, classes, 0.5),
        "batched_nms_per_image": lambda: batched_nms_per_image(
            boxes[None], scores[None], classes[None], 0.5
        ),
    }
    for op, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{op}: boxes and scores are on the meta device"):
            call()


@pytest.mark.parametrize("classes", [8, 2])
def test_scattered_boxes_are_routed_without_the_window_estimate(classes, monkeypatch):
    # Where the group heads (or, for a few classes, the best box) suppress few boxes, the
    # cost model is given a scattered share: the window estimate (kept_share, ~0.4 ms at
    # this size) would only confirm it.
    boxes, scores, ids = random_detections(1500, seed=3)
    ids = ids % classes
    windows = []
    share = NMS.kept_share

    def counted(*args, **kwargs):
        windows.append(args[0].shape[0])
        return share(*args, **kwargs)

    monkeypatch.setattr(NMS, "kept_share", counted)
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert windows == []
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)
