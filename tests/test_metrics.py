import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import reference.metrics as ref
from detops import mean_average_precision
from detops.bench.cases.metrics import devkit_style_map, map_bench_inputs
from detops.metrics import COCO_IOU_THRESHOLDS, gt_dicts_from_padded
from detops.testing.compare import compare_trees
from detops.testing.entry import case_to_torch
from detops.testing.families.metrics import ENTRIES, map_cases

ENTRY = ENTRIES[0]
TOL = ENTRY.tolerances[torch.float64]


def det(boxes, labels, scores, dtype=torch.float64):
    return {
        "boxes": torch.tensor(boxes, dtype=dtype).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=dtype),
    }


def gt(boxes, labels, dtype=torch.float64):
    return {
        "boxes": torch.tensor(boxes, dtype=dtype).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def to_torch(case):
    return case_to_torch(case.args, torch.float64, "cpu"), case.kwargs


def assert_same(actual, expected, context):
    result = compare_trees(actual, expected, TOL)
    assert result.ok, f"{context}\n{result.message}"


# Hand-computed example (class 0 of 3, two images):
#   image A: GT g1 = [0,0,10,10] (class 0), GT [5,5,15,15] (class 1)
#   image B: GT g2 = [0,0,10,10], g3 = [20,20,30,30] (class 0)
#   d1 0.9 A [0,0,10,10]  IoU(g1)=1            -> TP   P=1/1 R=1/3
#   d2 0.8 A [0,0,10,10]  best GT g1, taken    -> FP   P=1/2 R=1/3
#   d3 0.7 B [0,0,10,5]   IoU(g2)=50/100=0.5   -> TP   P=2/3 R=2/3 (at t=0.5; FP at 0.75)
#   d4 0.6 B [50,50,60,60] no overlap          -> FP   P=2/4 R=2/3
#   g3 is never found.
#   t=0.5: envelope at R=1/3 is max(1, 1/2, 2/3, 1/2) = 1, at R=2/3 is max(2/3, 1/2) = 2/3
#          AP0 = 1/3 * 1 + 1/3 * 2/3 = 5/9
#   t=0.75: only d1 is a TP: AP0 = 1/3 * 1 = 1/3
#   class 1 has one GT and no detection: AP1 = 0. Class 2 has no GT (its detection in
#   image B is ignored): AP2 = NaN, left out of the mean.
HAND_DETS = [
    det([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8]),
    det([[0, 0, 10, 5], [50, 50, 60, 60], [0, 0, 5, 5]], [0, 0, 2], [0.7, 0.6, 0.95]),
]
HAND_GTS = [
    gt([[0, 0, 10, 10], [5, 5, 15, 15]], [0, 1]),
    gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0]),
]


def test_hand_computed_example():
    out = mean_average_precision(HAND_DETS, HAND_GTS, 3)
    assert out["ap_per_class"][0].item() == pytest.approx(5 / 9, abs=1e-12)
    assert out["ap_per_class"][1].item() == 0.0
    assert math.isnan(out["ap_per_class"][2].item())
    assert out["map"].item() == pytest.approx((5 / 9 + 0) / 2, abs=1e-12)


def test_hand_computed_example_iou_range():
    out = mean_average_precision(HAND_DETS, HAND_GTS, 3, iou_thresholds=(0.5, 0.75))
    # Per threshold: (5/9 + 0) / 2 = 5/18 and (1/3 + 0) / 2 = 1/6; mean 2/9.
    assert out["map_per_threshold"].tolist() == pytest.approx([5 / 18, 1 / 6], abs=1e-12)
    assert out["map"].item() == pytest.approx(2 / 9, abs=1e-12)
    assert out["ap_per_class"][0].item() == pytest.approx((5 / 9 + 1 / 3) / 2, abs=1e-12)


def test_the_reference_gives_the_hand_computed_example():
    expected = ref.mean_average_precision(
        [{k: v.numpy() for k, v in d.items()} for d in HAND_DETS],
        [{k: v.numpy() for k, v in g.items()} for g in HAND_GTS],
        3,
    )
    assert expected["map"] == pytest.approx(5 / 18, abs=1e-12)


def test_tied_scores_keep_input_order():
    # The VOC devkit sorts with a stable sort: tied detections are taken in input order
    # (image, then row), each its own curve point. Two GT; scores 0.9 (hit), 0.9 (miss),
    # 0.8 (hit): P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> AP = 1/2 + 1/2 * 2/3 = 5/6. With
    # the miss first: P = 0, 1/2, 2/3 at R = 0, 1/2, 1 -> AP = 2/3.
    ground = [gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])]
    hit, miss, hit2 = [0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]
    out = mean_average_precision([det([hit, miss, hit2], [0] * 3, [0.9, 0.9, 0.8])], ground, 1)
    assert out["map"].item() == pytest.approx(5 / 6, abs=1e-12)
    out = mean_average_precision([det([miss, hit, hit2], [0] * 3, [0.9, 0.9, 0.8])], ground, 1)
    assert out["map"].item() == pytest.approx(2 / 3, abs=1e-12)
    # Across images: the earlier image's detection comes first.
    grounds = [gt([[0, 0, 10, 10]], [0]), gt([], [])]
    dets = [det([hit], [0], [0.5]), det([miss], [0], [0.5])]
    assert mean_average_precision(dets, grounds, 1)["map"].item() == 1.0
    dets = [det([miss], [0], [0.5]), det([hit], [0], [0.5])]
    grounds = [gt([], []), gt([[0, 0, 10, 10]], [0])]
    assert mean_average_precision(dets, grounds, 1)["map"].item() == pytest.approx(0.5)


def test_voc_plus_one_pixel():
    # GT [0,0,9,9] and detection [0,0,9,4] in the devkit's inclusive pixels: 10x10 and
    # 10x5 -> IoU 0.5 (a TP at 0.5); without the +1: 9x9 and 9x4 -> 36/81 = 0.44 (a FP).
    ground = [gt([[0, 0, 9, 9]], [0])]
    dets = [det([[0, 0, 9, 4]], [0], [0.9])]
    assert mean_average_precision(dets, ground, 1, voc_plus_one=True)["map"].item() == 1.0
    assert mean_average_precision(dets, ground, 1)["map"].item() == 0.0


def test_threshold_is_inclusive():
    # IoU exactly 0.5 (50 / 100) is a TP at threshold 0.5 but not above it.
    ground = [gt([[0, 0, 10, 10]], [0])]
    dets = [det([[0, 0, 10, 5]], [0], [0.9])]
    assert mean_average_precision(dets, ground, 1, 0.5)["map"].item() == 1.0
    assert mean_average_precision(dets, ground, 1, 0.5001)["map"].item() == 0.0


def test_images_without_detections_still_count_their_gt():
    # The course export skips images with no detection; then recall would be 1 and AP 1.
    ground = [gt([[0, 0, 10, 10]], [0]), gt([[0, 0, 10, 10]], [0])]
    dets = [det([[0, 0, 10, 10]], [0], [0.9]), det([], [], [])]
    assert mean_average_precision(dets, ground, 1)["map"].item() == pytest.approx(0.5)


def test_voc_rule_no_second_best_gt():
    # g1 = [0,0,10,10], g2 = [4,0,14,10]. d1 = g1 (score 0.9) takes g1.
    # d2 = [1,0,11,10]: IoU(g1) = 90/110 = 0.818, IoU(g2) = 70/130 = 0.538. Its best GT is
    # g1, already taken -> FP (VOC devkit), although g2 is free and passes 0.5 (COCO's
    # matcher would make it a TP). Points: P=1 R=1/2, then P=1/2 R=1/2 -> AP = 1/2.
    ground = [gt([[0, 0, 10, 10], [4, 0, 14, 10]], [0, 0])]
    dets = [det([[0, 0, 10, 10], [1, 0, 11, 10]], [0, 0], [0.9, 0.8])]
    assert mean_average_precision(dets, ground, 1)["map"].item() == pytest.approx(0.5)


def _unique_gt(case):
    """Drop GT boxes that repeat another GT of the same class in the same image (under the
    VOC rule a perfect detection of the second copy is matched to the first)."""
    cleaned = []
    for g in case.args[1]:
        seen, keep = set(), []
        for box, label in zip(g["boxes"].tolist(), g["labels"].tolist(), strict=True):
            key = (tuple(box), label)
            keep.append(key not in seen)
            seen.add(key)
        keep = np.array(keep, dtype=bool)
        cleaned.append({"boxes": g["boxes"][keep], "labels": g["labels"][keep]})
    return cleaned


@given(case=map_cases())
def test_perfect_detections_give_one(case):
    gts = [{k: torch.as_tensor(v) for k, v in g.items()} for g in _unique_gt(case)]
    num_classes = case.args[2]
    rng = np.random.default_rng(0)
    dets = [
        {
            "boxes": g["boxes"].clone(),
            "labels": g["labels"].clone(),
            "scores": torch.as_tensor(rng.permutation(len(g["labels"])) + 1.0, dtype=torch.float64),
        }
        for g in gts
    ]
    out = mean_average_precision(dets, gts, num_classes, **case.kwargs)
    if sum(len(g["labels"]) for g in gts) == 0:
        assert math.isnan(out["map"].item())
    else:
        assert out["map"].item() == pytest.approx(1.0, abs=1e-12), case


@given(case=map_cases(), which=st.integers(0, 3))
def test_false_positive_below_every_detection_leaves_ap_unchanged(case, which):
    (dets, gts, num_classes), kwargs = to_torch(case)
    before = mean_average_precision(dets, gts, num_classes, **kwargs)
    all_scores = torch.cat([d["scores"] for d in dets]) if dets else torch.zeros(0)
    low = (all_scores.min().item() if all_scores.numel() else 1.0) - 0.5
    label = which % num_classes
    # A far-away box in a new image with no GT: a false positive at every threshold.
    extra_det = det([[1000, 1000, 1010, 1010]], [label], [low])
    after = mean_average_precision([*dets, extra_det], [*gts, gt([], [])], num_classes, **kwargs)
    assert_same(after, before, f"extra FP of class {label} at score {low} on {case}")
    if dets and kwargs.get("iou_threshold", 0.5) > 0:
        # The same FP inside an existing image (IoU 0 with every GT there).
        i = which % len(dets)
        dets2 = list(dets)
        dets2[i] = {
            "boxes": torch.cat([dets[i]["boxes"], extra_det["boxes"]]),
            "labels": torch.cat([dets[i]["labels"], extra_det["labels"]]),
            "scores": torch.cat([dets[i]["scores"], extra_det["scores"]]),
        }
        after2 = mean_average_precision(dets2, gts, num_classes, **kwargs)
        assert_same(after2, before, f"extra FP in image {i} on {case}")


@given(case=map_cases(), data=st.data())
def test_invariant_to_image_order(case, data):
    # Only without tied scores: ties are taken in input order (image, then row).
    scores = np.concatenate([d["scores"] for d in case.args[0]] or [np.zeros(0)])
    assume(len(np.unique(scores)) == len(scores))
    (dets, gts, num_classes), kwargs = to_torch(case)
    order = data.draw(st.permutations(range(len(dets))))
    before = mean_average_precision(dets, gts, num_classes, **kwargs)
    after = mean_average_precision(
        [dets[i] for i in order], [gts[i] for i in order], num_classes, **kwargs
    )
    assert_same(after, before, f"image order {order} on {case}")


def test_devkit_peer_agrees_on_benchmark_inputs():
    # The benchmark's peer must compute the same number (distinct random scores, no ties).
    dets, gts = map_bench_inputs(30, 5, 10, seed=3)
    ours = mean_average_precision(dets, gts, 5)["map"].item()
    assert ours == pytest.approx(devkit_style_map(dets, gts, 5), abs=1e-6)


def test_devkit_peer_agrees_with_tied_scores():
    # Scores on 4 levels: many ties, taken in input order by both (the devkit's stable sort).
    dets, gts = map_bench_inputs(30, 5, 10, seed=4)
    dets = [{**d, "scores": torch.round(d["scores"] * 4) / 4} for d in dets]
    ours = mean_average_precision(dets, gts, 5)["map"].item()
    assert ours == pytest.approx(devkit_style_map(dets, gts, 5), abs=1e-6)


def test_dtype_device_and_inputs_untouched(device):
    dets = [{k: v.to(device) for k, v in d.items()} for d in HAND_DETS]
    dets = [{**d, "scores": d["scores"].float(), "boxes": d["boxes"].float()} for d in dets]
    gts = [{k: v.to(device) for k, v in g.items()} for g in HAND_GTS]
    copies = [{k: v.clone() for k, v in d.items()} for d in dets]
    out = mean_average_precision(dets, gts, 3)
    assert out["map"].dtype == torch.float32 and out["map"].device.type == device
    assert out["ap_per_class"].shape == (3,) and out["map_per_threshold"].shape == (1,)
    for d, c in zip(dets, copies, strict=True):
        assert all(torch.equal(d[k], c[k]) for k in d)


def test_empty_inputs():
    out = mean_average_precision([], [], 2)
    assert math.isnan(out["map"].item()) and out["map"].dtype == torch.float32
    out = mean_average_precision([det([], [], [])], [gt([[0, 0, 1, 1]], [1])], 2)
    assert out["map"].item() == 0.0
    out = mean_average_precision(
        [det([], [], [])], [gt([], [])], 2, iou_thresholds=COCO_IOU_THRESHOLDS
    )
    assert out["map_per_threshold"].shape == (10,) and math.isnan(out["map"].item())


def test_coco_thresholds():
    assert COCO_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_gt_dicts_from_padded():
    padded = torch.tensor(
        [[[0, 0, 4, 4, 2], [-1, -1, -1, -1, -1], [1, 1, 3, 3, 0]], [[-1] * 5] * 3],
        dtype=torch.float32,
    )
    out = gt_dicts_from_padded(padded)
    assert out[0]["boxes"].tolist() == [[0, 0, 4, 4], [1, 1, 3, 3]]
    assert out[0]["labels"].tolist() == [2, 0] and out[0]["labels"].dtype == torch.int64
    assert out[1]["boxes"].shape == (0, 4)
    with pytest.raises(
        ValueError, match=r"gt_dicts_from_padded: gt_boxes must have shape \[B, N, 5\]"
    ):
        gt_dicts_from_padded(torch.zeros(3, 5))


GOOD_D, GOOD_G = det([[0, 0, 1, 1]], [0], [0.5]), gt([[0, 0, 1, 1]], [0])
ERROR_INPUTS = [
    (([GOOD_D], [GOOD_G, GOOD_G], 1), {}, ValueError, r"same images, got 1 and 2"),
    ((GOOD_D, [GOOD_G], 1), {}, TypeError, r"detections must be a list of dicts, got dict"),
    (([GOOD_D], [GOOD_G], 0), {}, ValueError, r"num_classes must be >= 1, got 0"),
    (([GOOD_D], [GOOD_G], 1.0), {}, TypeError, r"num_classes must be an int, got float"),
    (
        ([GOOD_D], [GOOD_G], 1),
        {"iou_threshold": 1.5},
        ValueError,
        r"iou_threshold must lie in \[0, 1\], got 1.5",
    ),
    (([GOOD_D], [GOOD_G], 1), {"iou_thresholds": ()}, ValueError, r"at least one threshold"),
    *(
        (
            ([GOOD_D], [GOOD_G], 1),
            {"iou_thresholds": value},
            TypeError,
            r"iou_thresholds must be None or a sequence of floats in \[0, 1\] \(a list, tuple, "
            rf"or 1-D array\), got {name}",
        )
        for value, name in ((0.5, "float"), ("0.5", "str"), (torch.tensor(0.5), "Tensor"))
    ),
    (
        ([GOOD_D], [GOOD_G], 1),
        {"iou_thresholds": np.array([0.5, 1.5])},
        ValueError,
        r"iou_thresholds must lie in \[0, 1\], got 1.5",
    ),
    (
        ([GOOD_D], [GOOD_G | {"difficult": torch.tensor([True])}], 1),
        {},
        ValueError,
        r"ground_truths\[0\] has a 'difficult' key, which is not supported",
    ),
    (
        ([{"boxes": GOOD_D["boxes"], "labels": GOOD_D["labels"]}], [GOOD_G], 1),
        {},
        ValueError,
        r"detections\[0\] must have keys \['boxes', 'labels', 'scores'\]",
    ),
    (
        ([det([[0, 0, 1, 1]], [0], [0.5]) | {"boxes": torch.zeros(1, 5)}], [GOOD_G], 1),
        {},
        ValueError,
        r"detections\[0\]\['boxes'\] must have shape \[K, 4\], got \[1, 5\]",
    ),
    (
        ([GOOD_D | {"labels": torch.tensor([0.0])}], [GOOD_G], 1),
        {},
        TypeError,
        r"detections\[0\]\['labels'\] must have an integer dtype, got torch.float32",
    ),
    (
        ([GOOD_D | {"scores": torch.tensor([1, 2])}], [GOOD_G], 1),
        {},
        ValueError,
        r"detections\[0\]\['scores'\] must have shape \[1\]",
    ),
    (
        ([GOOD_D], [gt([[0, 0, 1, 1]], [-1])], 1),
        {},
        ValueError,
        r"ground_truths labels must lie in \[0, 1\) \(remove padding rows of -1\), got -1 "
        r"at ground_truths\[0\]\['labels'\]\[0\]",
    ),
    (
        ([GOOD_D, det([[0, 0, 1, 1], [0, 0, 2, 2]], [0, 5], [0.5, 0.4])], [GOOD_G, GOOD_G], 2),
        {},
        ValueError,
        r"detections labels must lie in \[0, 2\), got 5 at detections\[1\]\['labels'\]\[1\]",
    ),
    (
        ([det([[0, 0, 1, 1]], [3], [0.5])], [GOOD_G], 2),
        {},
        ValueError,
        r"detections labels must lie in \[0, 2\)",
    ),
    (
        ([det([[0, 0, 1, 1]], [0], [float("nan")])], [GOOD_G], 1),
        {},
        ValueError,
        r"detections scores must not contain NaN",
    ),
    (
        ([GOOD_D], [gt([[0, 0, float("nan"), 1]], [0])], 1),
        {},
        ValueError,
        r"ground_truths boxes must not contain NaN, got \[0.0, 0.0, nan, 1.0\] at "
        r"ground_truths\[0\]\['boxes'\]\[0\]",
    ),
    (
        ([GOOD_D], [{"boxes": [[0, 0, 1, 1]], "labels": GOOD_G["labels"]}], 1),
        {},
        TypeError,
        r"ground_truths\[0\]\['boxes'\] must be a torch.Tensor, got list",
    ),
]


def test_iou_thresholds_may_be_an_array_or_a_tensor():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    dets = [det(boxes.tolist(), [0, 0], [0.9, 0.8])]
    gts = [gt((boxes + torch.tensor([0.0, 0, 2, 0])).tolist(), [0, 0])]  # IoU 10/12
    listed = mean_average_precision(dets, gts, 1, iou_thresholds=[0.5, 0.9])
    assert float(listed["map"]) == 0.5  # AP 1 at 0.5, 0 at 0.9
    for values in (np.array([0.5, 0.9]), torch.tensor([0.5, 0.9], dtype=torch.float64)):
        other = mean_average_precision(dets, gts, 1, iou_thresholds=values)
        assert float(other["map"]) == float(listed["map"])


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), ERROR_INPUTS)
def test_error_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=r"mean_average_precision: .*" + match):
        mean_average_precision(*args, **kwargs)
