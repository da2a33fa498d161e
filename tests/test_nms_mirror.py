"""class_spec_nms of up to four classes in one kernel call (``detops._nms_numpy._mirrored``):
the boxes of each class are mirrored into a quadrant of their own (coordinates negated,
corners swapped), which leaves every IoU within a class bit for bit as it was and keeps
boxes of different classes from intersecting. Checked against torchvision's kernel once
per class (exact) and the NumPy reference, on inputs made to stress the arithmetic:
integer and fractional coordinates, zeros, -0.0, empty and inverted boxes, touching
boxes, tied scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nms_paths import per_class_kernel

import reference.nms as ref
from detops import _nms_numpy as numpy_nms
from detops import batched_nms_per_image, class_spec_nms
from detops.bench.cases.nms import clustered_detections, random_detections


@st.composite
def few_class_inputs(draw):
    """81 to 300 boxes (above the all-pairs path, where one call is always taken) of 2 to
    4 class ids (consecutive, or 7 apart), coordinates in a 64 x 64 world, so that boxes
    of one class overlap often: corners on a grid of 1/4 (or any float), some sides 0 or
    negative, some coordinates 0.0 or -0.0; each class moved by -2, -0.25, 0, 0.25 or 2
    on each axis, so that some inputs have negative coordinates whose classes stay apart
    once mirrored and some whose classes would overlap; scores with ties."""
    n = draw(st.integers(81, 300))
    classes = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g, dtype=torch.float64) * 64
    side = torch.rand(n, 2, generator=g, dtype=torch.float64) * 24 - 2  # some inverted
    on_grid = draw(st.booleans())
    if on_grid:
        corner, side = (corner * 4).round() / 4, (side * 4).round() / 4
    boxes = torch.cat([corner, corner + side], 1).clamp(min=0)
    zeros = torch.rand(n, 4, generator=g) < 0.05
    boxes[zeros] = draw(st.sampled_from([0.0, -0.0]))
    scores = torch.randint(0, draw(st.sampled_from([4, 1000])), (n,), generator=g).double()
    low = draw(st.sampled_from([0, -3, 1 << 40]))
    step = draw(st.sampled_from([1, 7]))  # consecutive ids, or ids ranked to quadrants
    rank = torch.randint(0, classes, (n,), generator=g)
    moves = st.sampled_from([-2.0, -0.25, 0.0, 0.0, 0.0, 0.25, 2.0])
    move = torch.tensor(draw(st.lists(moves, min_size=2 * classes, max_size=2 * classes)))
    boxes = boxes + move.view(classes, 2).repeat(1, 2).double()[rank]  # (exact on the grid)
    return boxes, scores, low + step * rank, on_grid


@settings(max_examples=100, deadline=None)
@given(data=few_class_inputs(), threshold=st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]))
def test_a_few_classes_in_one_mirrored_kernel_call_equal_per_class_calls(data, threshold):
    boxes, scores, ids, on_grid = data
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        assert class_spec_nms(b, s, ids, threshold).tolist() == per_class_kernel(
            b, s, ids, threshold
        )
    if on_grid:  # exact products: the reference's float64 IoU is the kernel's
        expected = ref.class_spec_nms(boxes.numpy(), scores.numpy(), ids.numpy(), threshold)
        assert class_spec_nms(boxes, scores, ids, threshold).tolist() == expected.tolist()


def _spy_routes(monkeypatch) -> dict[str, list[int]]:
    """The mirrored call (how many quadrants it fills) and the kernel per group (how many
    groups it is given), as class_spec_nms takes them."""
    calls: dict[str, list[int]] = {"mirrored": [], "per group": []}
    mirrored, per_group = numpy_nms._mirrored, numpy_nms._kernel_per_group
    mirrored_pair = numpy_nms._mirrored_pair

    def spy_mirrored(b, quadrant):
        calls["mirrored"].append(len(np.unique(quadrant)))
        return mirrored(b, quadrant)

    def spy_mirrored_pair(b, second):  # (the torch route of two consecutive ids)
        calls["mirrored"].append(len(second.unique()))
        return mirrored_pair(b, second)

    def spy_per_group(ranked, ranked_scores, order, bounds, iou_threshold, kernel):
        calls["per group"].append(len(bounds) - 1)
        return per_group(ranked, ranked_scores, order, bounds, iou_threshold, kernel)

    monkeypatch.setattr(numpy_nms, "_mirrored", spy_mirrored)
    monkeypatch.setattr(numpy_nms, "_mirrored_pair", spy_mirrored_pair)
    monkeypatch.setattr(numpy_nms, "_kernel_per_group", spy_per_group)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "n, classes, clustered, route",
    [
        (200, 2, False, "mirrored"),  # up to 300 boxes, any few-class input
        (300, 4, False, "mirrored"),
        (600, 2, False, "mirrored"),  # two classes: up to 1000 (batched_nms's one call)
        (700, 2, False, "mirrored"),
        (1000, 2, False, "mirrored"),
        (500, 2, True, "mirrored"),  # clusters: up to 1500
        (1000, 3, True, "mirrored"),
        (1500, 2, True, "mirrored"),
        (400, 3, False, "per group"),  # scattered: one call pays kept * N over all classes
        (1100, 2, False, "neither"),  # above 1000: the cost model picks the sparse path
        (1000, 4, False, "per group"),  # (the cost model, given a scattered share)
        (2000, 4, True, "per group"),  # many clusters: per class
        (3000, 2, True, "per group"),
        (2000, 2, False, "neither"),  # the sparse path is cheaper
    ],
)
def test_which_route_a_few_classes_take(n, classes, clustered, route, dtype, monkeypatch):
    make = clustered_detections if clustered else random_detections
    boxes, scores, ids = make(n)
    boxes, scores, ids = boxes.to(dtype).clamp(min=0), scores.to(dtype), ids % classes
    calls = _spy_routes(monkeypatch)
    got = class_spec_nms(boxes, scores, ids, 0.5)
    expected = {"mirrored": [], "per group": []}
    if route != "neither":
        expected[route] = [classes]
    assert calls == expected
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)


@pytest.mark.parametrize("n", [500, 1000])
def test_clustered_classes_that_cannot_be_mirrored_take_the_kernel_per_class(n, monkeypatch):
    # Negative coordinates in both classes (no mirrored call): the best box's cluster
    # still tells clustered boxes, which go to the kernel once per class, not to the
    # sparse path (4 ms against 0.3 ms at 1000 boxes, before that sign was looked at).
    boxes, scores, ids = clustered_detections(n)
    boxes, ids = boxes - 500, ids % 2
    calls = _spy_routes(monkeypatch)
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert calls == {"mirrored": [], "per group": [2]}
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)


@pytest.mark.parametrize("classes", [2, 3])  # (two consecutive ids: the torch route)
@pytest.mark.parametrize(
    "case, mirrored",
    [
        ("five classes", False),
        ("negative x, classes overlapping once mirrored", False),
        ("negative y, classes overlapping once mirrored", False),
        ("negative x, classes apart once mirrored", True),
        ("negative x and y, classes apart once mirrored", True),
        ("negative y, the negated class near 0 on x: apart on each axis", True),
    ],
)
def test_inputs_the_mirrored_call_takes_or_not(case, mirrored, classes, monkeypatch):
    # With a negative coordinate, classes take one mirrored call only where, on each
    # axis, the lowest coordinate of the boxes negated there plus the lowest of the others
    # is >= 0. Class 0 keeps its sign on both axes (quadrant 0); of two classes, class 1
    # is negated on both (quadrant 3), of three, class 1 on x and class 2 on y.
    boxes, scores, ids = clustered_detections(400)
    boxes, ids = boxes.clamp(min=0), ids % classes
    axis = 1 if " y" in case else 0
    negated = 2 if classes == 3 and axis == 1 else 1  # the class negated on that axis
    first, other = (int((ids == k).nonzero()[0]) for k in (0, negated))
    if case == "five classes":
        ids = torch.arange(400) % 5
    elif "near 0 on x" in case:  # (the lowest coordinates of each class sum to -1)
        boxes[first, 1], boxes[other, 0] = -3.0, 2.0
    elif "overlapping" in case:
        boxes[first, axis] = -0.5  # the negated class's lowest coordinate there: 0.25
        boxes[other, axis], boxes[other, axis + 2] = 0.25, 0.25 + 1e-3
    else:
        lowest = torch.minimum(boxes[:, :2], boxes[:, 2:])
        assert (lowest[ids != 0].amin(0) >= 10).all()  # (clusters away from the origin)
        boxes[first, : 2 if "and y" in case else 1] = -3.0
    calls = _spy_routes(monkeypatch)
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert calls["mirrored"] == ([len(ids.unique())] if mirrored else [])
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("n", [100, 400])  # (the NumPy route, then the torch route for 2)
def test_boxes_straddling_the_origin_in_two_classes_never_suppress_each_other(n, classes):
    # Mirroring the second class alone would move its copy of the box onto the first
    # class's box (IoU 4 / 238 = 0.017 > 0.01): both must be kept, as per class.
    boxes, scores, ids = clustered_detections(n)
    boxes, ids = boxes + 200, ids % classes
    ids[:2] = torch.tensor([0, classes - 1])
    boxes[:2] = torch.tensor([-1.0, -1.0, 10.0, 10.0])
    scores[:2] = torch.tensor([2.0, 1.5])
    got = class_spec_nms(boxes, scores, ids, 0.01).tolist()
    assert got[:2] == [0, 1]
    assert got == per_class_kernel(boxes, scores, ids, 0.01)
    expected = ref.class_spec_nms(
        boxes.double().numpy(), scores.double().numpy(), ids.numpy(), 0.01
    )
    assert got == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(301, 900),
    classes=st.integers(2, 4),
    low=st.sampled_from([0, -3, 1 << 40]),
    shift=st.sampled_from([0.0, -500.0]),
    seed=st.integers(0, 2**16),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
)
def test_a_few_classes_above_the_all_pairs_limit_equal_per_class_calls(
    n, classes, low, shift, seed, threshold
):
    # Scattered boxes above the mirrored call's limit, or with negative coordinates (which
    # cannot be mirrored), take the kernel once per class: tied scores must still go to
    # the lower index across classes, and ids far from 0 must still group correctly.
    boxes, scores, ids = random_detections(n, seed=seed)
    scores = (scores * 8).floor()  # ties
    boxes, ids = boxes + shift, low + ids % classes
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        assert class_spec_nms(b, s, ids, threshold).tolist() == per_class_kernel(
            b, s, ids, threshold
        )


def test_mirroring_keeps_boxes_of_different_quadrants_apart_and_sides_exact():
    boxes = np.array([[0.0, 0.0, 3.5, 2.25], [1.0, -0.0, 1.0, 7.0], [2.0, 3.0, 1.0, 4.0]])
    for dtype in (np.float32, np.float64):
        b = boxes.astype(dtype)
        for quadrant in range(4):
            m = numpy_nms._mirrored(b, np.full(3, quadrant))
            # widths and heights as the kernel forms them are the unmirrored ones
            assert np.array_equal(m[:, 2] - m[:, 0], b[:, 2] - b[:, 0])
            assert np.array_equal(m[:, 3] - m[:, 1], b[:, 3] - b[:, 1])
            assert ((m[:, [0, 2]] <= 0) if quadrant & 1 else (m[:, [0, 2]] >= 0)).all()
            assert ((m[:, [1, 3]] <= 0) if quadrant & 2 else (m[:, [1, 3]] >= 0)).all()
            if quadrant in (0, 3):  # two groups: the torch form gives the same boxes
                second = torch.full((3,), quadrant == 3)
                pair = numpy_nms._mirrored_pair(torch.from_numpy(b), second)
                assert np.array_equal(pair.numpy(), m)
                assert np.array_equal(np.signbit(pair.numpy()), np.signbit(m))
                assert np.array_equal(b, boxes.astype(dtype))  # the input is left alone


@pytest.mark.parametrize(
    "values",
    [(-28, 100), (-100, -50, 0, 50, 100), (0, 127)],
    ids=["2 ids 128 apart", "5 ids", "2 ids 127 apart"],
)
def test_int8_class_ids_far_apart(values):
    # The ids' offsets from the lowest are formed in a wide integer (in int8, -28 to 100
    # wrapped around and NumPy refused the negative bin).
    boxes, scores, _ = clustered_detections(200, seed=9)
    ids = torch.tensor(values, dtype=torch.int8)[torch.arange(200) % len(values)]
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert got.tolist() == per_class_kernel(boxes, scores, ids.to(torch.int64), 0.5)


@pytest.mark.parametrize("n", [10, 200, 1000])
def test_lazily_negated_class_ids(n):
    boxes, scores, ids = clustered_detections(n)
    ids = ids % 3
    negated = torch._neg_view(-ids)  # the same values, with the negative bit set
    assert negated.is_neg()
    expected = per_class_kernel(boxes, scores, ids, 0.5)
    assert class_spec_nms(boxes, scores, negated, 0.5).tolist() == expected
    batch = [clustered_detections(n, seed=i) for i in range(2)]
    b, s, c = (torch.stack(parts) for parts in zip(*batch, strict=True))
    c = c % 3
    kept = batched_nms_per_image(b, s, torch._neg_view(-c), 0.5)
    for image in range(2):  # each row: that image's class-specific NMS, then -1 padding
        expected = per_class_kernel(b[image], s[image], c[image], 0.5)
        row = kept[image].tolist()
        assert row == expected + [-1] * (len(row) - len(expected))


@pytest.mark.parametrize(
    "ids", [(0, 1), (0, 2), (0, 3), (5, 900), (-3, -2), (0, 2000), (-(2**40), 2**40)], ids=str
)
def test_two_classes_take_opposite_quadrants(ids, monkeypatch):
    # Apart on both axes, as class-offset boxes are (the kernel runs faster so).
    boxes, scores, _ = clustered_detections(200)
    classes = torch.tensor(ids)[torch.arange(200) % 2]
    seen = []
    mirrored, mirrored_pair = numpy_nms._mirrored, numpy_nms._mirrored_pair
    monkeypatch.setattr(
        numpy_nms, "_mirrored", lambda b, q: seen.append(sorted(set(q.tolist()))) or mirrored(b, q)
    )
    monkeypatch.setattr(
        numpy_nms,
        "_mirrored_pair",
        lambda b, second: (
            seen.append(sorted({3 * v for v in second.tolist()})) or mirrored_pair(b, second)
        ),
    )
    got = class_spec_nms(boxes, scores, classes, 0.5)
    assert seen == [[0, 3]]
    assert got.tolist() == per_class_kernel(boxes, scores, classes, 0.5)


def test_the_threshold_is_0_5_by_default_as_in_the_course_code():
    boxes, scores, ids = clustered_detections(200)
    assert class_spec_nms(boxes, scores, ids).tolist() == per_class_kernel(boxes, scores, ids, 0.5)


@pytest.mark.parametrize(
    "case", ["int32 ids", "boxes requiring grad", "ids far from 0", "inf coordinate", "NaN score"]
)
def test_the_torch_built_mirrored_call_on_odd_inputs(case, monkeypatch):
    # Consecutive ids, 81-1000 boxes: numpy_nms.mirrored_call, in torch ops only; inputs
    # it must not take fall through to the NumPy path.
    boxes, scores, ids = clustered_detections(400, seed=3)
    ids = ids % 2
    if case == "int32 ids":
        ids = ids.to(torch.int32)
    elif case == "boxes requiring grad":
        boxes.requires_grad_()
    elif case == "ids far from 0":
        ids = ids + (1 << 40)
    elif case == "inf coordinate":
        boxes[5, 2] = float("inf")
    elif case == "NaN score":
        scores[7] = float("nan")
    calls = _spy_routes(monkeypatch)
    if case == "NaN score":
        with pytest.raises(ValueError, match="class_spec_nms: scores must not contain NaN"):
            class_spec_nms(boxes, scores, ids, 0.5)
        return
    got = class_spec_nms(boxes, scores, ids, 0.5)
    expected_calls = [] if case == "inf coordinate" else [2]
    assert calls["mirrored"] == expected_calls
    if case == "inf coordinate":  # the reference's inf - inf is NaN: IoU 0, as detops'
        with np.errstate(invalid="ignore"):
            expected = ref.class_spec_nms(
                boxes.double().numpy(), scores.double().numpy(), ids.numpy(), 0.5
            ).tolist()
    else:
        expected = per_class_kernel(boxes.detach(), scores, ids.to(torch.int64), 0.5)
    assert got.tolist() == expected


@pytest.mark.parametrize("span", [1024, 2**40])
@pytest.mark.parametrize("classes", [2, 3, 4])
def test_a_few_classes_with_ids_far_apart_take_one_mirrored_call(span, classes, monkeypatch):
    # Ids spanning 1024 values or more are ranked by a sort (a bincount would be as long
    # as the span): still one mirrored call, as for ids close together.
    boxes, scores, ids = clustered_detections(300, seed=classes)
    ids = (ids % classes) * span
    calls = _spy_routes(monkeypatch)
    got = class_spec_nms(boxes, scores, ids, 0.5)
    assert calls == {"mirrored": [len(ids.unique())], "per group": []}
    assert got.tolist() == per_class_kernel(boxes, scores, ids, 0.5)
