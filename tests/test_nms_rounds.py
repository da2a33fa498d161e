"""The rounds of class_spec_nms and batched_nms_per_image (``detops._nms_numpy``): every
group's best box left is kept each round and suppresses its group's boxes; rounds stop
when they remove few boxes, and the boxes left go to the pairs, the kernel once per
group, or the sparse path. Whatever the stopping point and the route after it, the answer
is greedy NMS per group: checked against torchvision's kernel once per class
(``_batched_nms_vanilla``, exact), detops' independent sparse torch path, and the NumPy
reference.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nms_paths import per_class_kernel, sparse_class_spec_nms

import reference.nms as ref
from detops import _nms_numpy as numpy_nms
from detops import batched_nms_per_image, class_spec_nms
from detops.bench.cases.nms import clustered_detections, random_detections

NMS = sys.modules["detops.nms"]  # detops.nms the attribute is the function


def _rounds_of(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, t: float):
    """_head_rounds on the inputs as numpy_greedy_nms prepares them: (kept, left), where
    ``left`` is what the rounds leave undecided (also when they stop early for the kernel
    per group)."""
    b, s, g = boxes.numpy(), scores.numpy(), classes.numpy()
    order, grouped = numpy_nms._by_group(s, g)
    planes = np.ascontiguousarray(b.take(order, axis=0).T)
    area = (planes[2] - planes[0]) * (planes[3] - planes[1])
    threshold = NMS._threshold_in(t, boxes.dtype)
    with np.errstate(all="ignore"):  # as numpy_greedy_nms calls them (0 / 0 for empty boxes)
        heads, alive, _ = numpy_nms._head_rounds(planes, area, grouped, threshold)
    return order.take(heads), order.take(alive)


@st.composite
def clustered_inputs(draw, max_boxes=400):
    """Clusters of boxes around a few objects, several objects per class: integer-valued
    float64 coordinates and scores with ties, so the reference's float64 IoU and the
    kernel's are the same correctly rounded quotients."""
    n = draw(st.integers(81, max_boxes))  # above 80 boxes the groups take the rounds
    objects = draw(st.integers(1, 12))
    classes = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(0, 300, (objects, 2), generator=g)
    sides = torch.randint(4, 80, (objects, 2), generator=g)
    owner = torch.randint(0, objects, (n,), generator=g)
    spread = draw(st.integers(0, 12))
    jitter = torch.randint(-spread, spread + 1, (n, 4), generator=g)
    corner = centres[owner] - sides[owner] // 2
    boxes = (torch.cat([corner, corner + sides[owner]], 1) + jitter).double()
    scores = torch.randint(0, draw(st.sampled_from([5, 1000])), (n,), generator=g).double()
    object_class = torch.randint(0, classes, (objects,), generator=g)
    ids = object_class[owner] * draw(st.sampled_from([1, -7, 1 << 40]))
    return boxes, scores, ids


@settings(max_examples=80, deadline=None)
@given(
    data=clustered_inputs(),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    rule=st.sampled_from([(0, 0.0, 0), (25, 1 / 50, 64), (0, 0.6, 0), (5, 0.2, 0)]),
    # the rest resolved from its IoU matrix: never, as shipped, after any round at any size
    dense_rest=st.sampled_from([(0, 99), (16, 3), (400, 1), (400, 2), (8, 1)]),
    # the rest to the kernel per group after the first round: never, as shipped, always
    kernel_after=st.sampled_from([(0, 2), (4, 2), (1000, 0)]),
)
def test_class_spec_nms_equals_the_reference_wherever_the_rounds_stop(
    data, threshold, rule, dense_rest, kernel_after
):
    boxes, scores, ids = data
    expected = ref.class_spec_nms(boxes.numpy(), scores.numpy(), ids.numpy(), threshold)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numpy_nms, "_ROUND_MIN", rule[0])
        patch.setattr(numpy_nms, "_ROUND_SHARE", rule[1])
        patch.setattr(numpy_nms, "_ROUND_TAIL", rule[2])
        patch.setattr(numpy_nms, "_DENSE_REST", dense_rest[0])
        patch.setattr(numpy_nms, "_DENSE_REST_AFTER", dense_rest[1])
        patch.setattr(numpy_nms, "_KERNEL_GROUPS_MAX", kernel_after[0])
        patch.setattr(numpy_nms, "_ROUNDS_LEFT_FOR_KERNEL", kernel_after[1])
        assert class_spec_nms(boxes, scores, ids, threshold).tolist() == expected.tolist()
        for dtype in (torch.float32, torch.float64):
            b, s = boxes.to(dtype), scores.to(dtype)
            got = class_spec_nms(b, s, ids, threshold)
            assert got.tolist() == per_class_kernel(b, s, ids, threshold)


@settings(max_examples=60, deadline=None)
@given(data=clustered_inputs(max_boxes=200), threshold=st.sampled_from([0.3, 0.5, 0.8]))
def test_the_boxes_the_rounds_keep_and_leave_finish_as_the_reference(data, threshold):
    # Rounds run to the end keep exactly the reference's boxes; stopped after any round,
    # what they kept plus greedy NMS of the boxes left alone is the reference's answer.
    boxes, scores, ids = data
    expected = sorted(ref.class_spec_nms(boxes.numpy(), scores.numpy(), ids.numpy(), threshold))
    for rule in ((0, 0.0), (0, 0.5), (10, 0.25)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(numpy_nms, "_ROUND_MIN", rule[0])
            patch.setattr(numpy_nms, "_ROUND_SHARE", rule[1])
            patch.setattr(numpy_nms, "_ROUND_TAIL", 0)
            patch.setattr(numpy_nms, "_KERNEL_GROUPS_MAX", 0)  # rounds to the end
            kept, left = _rounds_of(boxes, scores, ids, threshold)
        if rule == (0, 0.0):
            assert left.size == 0 and sorted(kept.tolist()) == expected
        if kept.size == 0:  # the first round was not worth it: nothing decided
            assert left.size == 0
            continue
        rest = ref.class_spec_nms(
            boxes.numpy()[left], scores.numpy()[left], ids.numpy()[left], threshold
        )
        assert sorted(kept.tolist() + left[rest].tolist()) == expected


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel"])
@pytest.mark.parametrize("n", [1500, 6000])
def test_boxes_the_rounds_leave_go_to_the_kernel_or_the_sparse_path(n, kernel, monkeypatch):
    # Clusters of 20 with 20 classes: rounds first, then the rest through the kernel once
    # per class (the cost model's yes) or detops' sparse path on those boxes alone (its
    # no; above 3000 boxes and where the pairs are too many). Each route must be taken.
    boxes, scores, classes = clustered_detections(n, per_object=20, seed=n)
    monkeypatch.setattr(numpy_nms, "_ROUND_SHARE", 0.05)  # stop early: a large rest
    monkeypatch.setattr(numpy_nms, "_ROUND_TAIL", 0)
    monkeypatch.setattr(numpy_nms, "_PAIRS_PER_KERNEL_CALL", 0)  # never the pairs
    monkeypatch.setattr(NMS, "_kernel_is_cheaper", lambda *args, **kwargs: kernel)
    taken = []
    per_group, finish = numpy_nms._kernel_per_group, NMS._sparse_subset
    monkeypatch.setattr(
        numpy_nms, "_kernel_per_group", lambda *a: taken.append("kernel") or per_group(*a)
    )
    monkeypatch.setattr(NMS, "_sparse_subset", lambda *a: taken.append("sparse") or finish(*a))
    heads, left = _rounds_of(boxes, scores, classes, 0.5)
    assert heads.size > 0 and left.size > 0
    got = class_spec_nms(boxes, scores, classes, 0.5)
    assert taken == ["kernel" if kernel else "sparse"]
    assert got.tolist() == per_class_kernel(boxes, scores, classes, 0.5)
    assert torch.equal(got, sparse_class_spec_nms(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n, classes", [(300, 2), (500, 2), (768, 3), (1000, 4), (2000, 2)])
def test_few_classes_of_many_clusters_go_to_the_kernel_per_class_after_one_round(
    n, classes, dtype, monkeypatch
):
    # Each class holds many clusters: one round keeps one box per class, and the rounds
    # left would be about as many as the clusters, so the rest goes to the kernel (above
    # 300 boxes the kernel per class is taken at once). (Negative coordinates: up to four
    # groups with non-negative ones go to one mirrored kernel call instead, see
    # test_nms_mirror.py.)
    boxes, scores, ids = clustered_detections(n)
    boxes, scores, ids = (boxes - 2000).to(dtype), scores.to(dtype), ids % classes * 1024
    taken = []
    per_group = numpy_nms._kernel_per_group
    monkeypatch.setattr(
        numpy_nms, "_kernel_per_group", lambda *a: taken.append(len(a[3]) - 1) or per_group(*a)
    )
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert taken == [classes]
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)
    expected = ref.class_spec_nms(boxes.double().numpy(), scores.double().numpy(), ids.numpy(), 0.5)
    assert sorted(got.tolist()) == sorted(expected.tolist())


@pytest.mark.parametrize("n", [1000, 5000, 20000])
def test_clustered_boxes_take_the_rounds_and_scattered_boxes_do_not(n):
    boxes, scores, classes = clustered_detections(n)
    kept, left = _rounds_of(boxes, scores, classes, 0.5)
    assert kept.size > 0
    got = class_spec_nms(boxes, scores, classes, 0.5)
    assert got.tolist() == per_class_kernel(boxes, scores, classes, 0.5)
    boxes, scores, classes = random_detections(n)
    kept, left = _rounds_of(boxes, scores, classes, 0.5)
    assert kept.size == 0 and left.size == 0


@pytest.mark.parametrize("n", [800, 1000, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_few_boxes_left_after_several_rounds_are_resolved_from_their_iou_matrix(
    n, dtype, monkeypatch
):
    # Clusters of 50 in 20 classes keep several boxes per class: after the third round a
    # handful of boxes is left, resolved at once. The matrix path must be taken, and the
    # answer be the per-class kernel's.
    boxes, scores, classes = clustered_detections(n)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    dense, calls = numpy_nms._dense_kept, []
    monkeypatch.setattr(numpy_nms, "_dense_kept", lambda *a: calls.append(a[1].size) or dense(*a))
    got = class_spec_nms(boxes, scores, classes, 0.5)
    assert calls and max(calls) <= numpy_nms._DENSE_REST
    assert got.tolist() == per_class_kernel(boxes, scores, classes, 0.5)


@pytest.mark.parametrize("padding", [False, True])
def test_batched_nms_per_image_on_clustered_images_equals_per_class_kernel_calls(padding):
    data = [clustered_detections(1000, seed=seed) for seed in range(6)]
    boxes = torch.stack([d[0] for d in data])
    scores = torch.stack([d[1] for d in data])
    classes = torch.stack([d[2] for d in data])
    if padding:
        scores[2, ::3] = float("-inf")
    got = batched_nms_per_image(boxes, scores, classes, 0.5)
    for b in range(6):
        valid = (scores[b] > float("-inf")).nonzero().squeeze(1)
        kept = per_class_kernel(boxes[b, valid], scores[b, valid], classes[b, valid], 0.5)
        assert got[b][got[b] >= 0].tolist() == valid[kept].tolist()


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, -1e-45, 3.4e38, -3.4e38, 1e-3]),
        min_size=1,
        max_size=60,
    ),
    spread=st.sampled_from([1, 3, 1 << 15, 1 << 40, 1 << 62]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_the_order_is_by_group_then_descending_score_then_index(scores, spread, dtype, seed):
    # A lexsort for few boxes; above, one uint64 sort key for float32 scores whose groups
    # fit, two stable sorts otherwise: all must order by group, then descending score
    # (0.0 and -0.0 equal), then index.
    s = np.array(scores, dtype=dtype)
    rng = np.random.default_rng(seed)
    g = rng.integers(-spread, spread, size=s.shape[0], dtype=np.int64)
    expected = sorted(range(s.shape[0]), key=lambda i: (g[i], -float(s[i]), i))
    for key_sort_from in (0, 10**9):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(numpy_nms, "_KEY_SORT_MIN_BOXES", key_sort_from)
            order, grouped = numpy_nms._by_group(s, g)
        assert order.tolist() == expected
        assert grouped.tolist() == g[expected].tolist()


@pytest.mark.parametrize("n", [300, 1500, 5000])
def test_inputs_that_require_grad_or_are_strided_views(n):
    boxes, scores, classes = clustered_detections(n, per_object=20)
    expected = per_class_kernel(boxes, scores, classes, 0.5)
    wide = torch.zeros(n, 8)
    wide[:, ::2] = boxes  # boxes as a strided view
    leaf_boxes = wide[:, ::2].requires_grad_(False).clone().requires_grad_(True)
    leaf_scores = scores.clone().requires_grad_(True)
    for b, s in ((wide[:, ::2], scores[:]), (leaf_boxes, leaf_scores)):
        got = class_spec_nms(b, s, classes, 0.5)
        assert got.tolist() == expected and got.grad_fn is None
        batched = batched_nms_per_image(b[None], s[None], classes[None], 0.5)
        assert batched[0].tolist() == expected


@pytest.mark.parametrize("n, classes", [(2000, 1), (3000, 2)])
def test_the_numpy_path_runs_once_when_it_hands_over_to_the_sparse_path(n, classes, monkeypatch):
    # Scattered boxes in one or two large classes: the NumPy path gives up (the cost
    # model turns the kernel down) and the sparse path answers; the NumPy path's work and
    # the cost model's estimate must not be repeated on the way.
    boxes, scores, _ = random_detections(n)
    ids = torch.arange(n) % classes
    calls = {"numpy": 0, "model": 0}
    numpy_path, model = NMS.numpy_greedy_nms, NMS._kernel_is_cheaper

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(NMS, "numpy_greedy_nms", counted("numpy", numpy_path))
    monkeypatch.setattr(NMS, "_kernel_is_cheaper", counted("model", model))
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert calls == {"numpy": 1, "model": 1}
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_clusters_among_scattered_boxes_in_any_float_dtype(dtype, monkeypatch):
    # Rounds for the clusters, then the scattered rest (thousands of boxes) to the sparse
    # path, whose boxes are gathered in NumPy (bfloat16 through its bits).
    mixed = zip(clustered_detections(3000), random_detections(3000, seed=3), strict=True)
    boxes, scores, classes = (torch.cat(p) for p in mixed)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    # torchvision's kernel once per class on the float32 values (which hold every float16
    # and bfloat16 value exactly): independent of the sparse path the rest is sent to
    expected = per_class_kernel(boxes.float(), scores.float(), classes, 0.5)
    monkeypatch.setattr(NMS, "_kernel_is_cheaper", lambda *args, **kwargs: False)
    subsets = []
    finish = NMS._sparse_subset
    monkeypatch.setattr(NMS, "_sparse_subset", lambda *a: subsets.append(len(a[-1])) or finish(*a))
    got = class_spec_nms(boxes.requires_grad_(), scores, classes, 0.5)
    assert subsets and subsets[0] > 3000
    assert got.tolist() == expected
