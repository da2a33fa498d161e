"""fcos_inference: equal to the course code's per-image loop (seed-style, in the family
module) at B = 1, equal to per-image calls at B > 1, edge inputs and the error table. The
comparison with the NumPy reference on hypothesis inputs is in
tests/test_against_reference.py."""

import math
import re

import numpy as np
import pytest
import torch

import reference.inference as ref
from detops import class_spec_nms, get_fpn_location_coords
from detops.bench.cases.losses import seed_style_inference
from detops.inference import FCOSDetections, fcos_inference
from detops.testing.compare import assert_trees_close
from detops.testing.families.losses import INFERENCE_TOLERANCES

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def _head(batch, size=96, classes=5, seed=0, cls_mean=-3.0, device="cpu", strides=STRIDES):
    shapes = {k: (-(-size // s), -(-size // s)) for k, s in strides.items()}
    locations = get_fpn_location_coords(shapes, strides, device=device)
    gen = torch.Generator().manual_seed(seed)
    cls, box, ctr = {}, {}, {}
    for level, loc in locations.items():
        n = len(loc)
        cls[level] = (torch.randn(batch, n, classes, generator=gen) * 2 + cls_mean).to(device)
        box[level] = (torch.rand(batch, n, 4, generator=gen) * 4 - 0.5).to(device)
        ctr[level] = torch.randn(batch, n, 1, generator=gen).to(device)
    return locations, strides, cls, box, ctr, (size, size)


def _seed_loop(args, score_thresh, nms_thresh):
    # detops.class_spec_nms in the course loop: the course NMS's tie rules are unspecified.
    return seed_style_inference(*args, score_thresh, nms_thresh, class_spec_nms=class_spec_nms)


def _reference(args, score_thresh, nms_thresh, **options):
    """reference.fcos_inference on the float64 copies of the head's outputs."""
    numpy_args = [
        {k: v.double().numpy() for k, v in a.items()} if isinstance(a, dict) and a
        and isinstance(next(iter(a.values())), torch.Tensor) else a
        for a in args
    ]  # fmt: skip
    return ref.fcos_inference(*numpy_args, score_thresh, nms_thresh, **options)


def _assert_matches_reference(result, args, score_thresh, nms_thresh, **options):
    expected = _reference(args, score_thresh, nms_thresh, **options)
    got = [tuple(image) for image in result.per_image()]
    assert_trees_close(got, expected, INFERENCE_TOLERANCES[torch.float32], f"{options}")


def _assert_equal_to(result, per_image, tolerance=None):
    """Exactly equal, or (``tolerance``) classes exact and boxes/scores within it."""
    assert isinstance(result, FCOSDetections)
    got = result.per_image()
    assert len(got) == len(per_image)
    for b, (mine, theirs) in enumerate(zip(got, per_image, strict=True)):
        for name, a, e in zip(("boxes", "classes", "scores"), mine, theirs, strict=True):
            assert a.dtype == e.dtype, (b, name, a.dtype, e.dtype)
            if tolerance is None or name == "classes":
                assert torch.equal(a, e), f"image {b}: {name} differ\n{a}\n{e}"
            else:
                assert_trees_close(a, e, tolerance, f"image {b}: {name}")


@pytest.mark.parametrize(("seed", "score_thresh", "nms_thresh"),
                         [(0, 0.3, 0.5), (1, 0.2, 0.6), (2, 0.05, 0.3)])  # fmt: skip
def test_batch_of_one_equals_seed_style_loop(seed, score_thresh, nms_thresh):
    args = _head(1, seed=seed)
    result = fcos_inference(*args, score_thresh, nms_thresh)
    expected = _seed_loop(args, score_thresh, nms_thresh)
    assert result.counts.item() == len(expected[0][0]) > 0
    _assert_equal_to(result, expected)
    _assert_matches_reference(result, args, score_thresh, nms_thresh)


def test_batch_equals_per_image_calls():
    locations, strides, cls, box, ctr, size = _head(4, seed=3)
    result = fcos_inference(locations, strides, cls, box, ctr, size, 0.2, 0.5,
                            topk_candidates=10, max_detections=28)  # fmt: skip
    per_image = []
    for b in range(4):
        one = {k: v[b : b + 1] for k, v in cls.items()}, {k: v[b : b + 1] for k, v in box.items()}
        ctr_one = {k: v[b : b + 1] for k, v in ctr.items()}
        single = fcos_inference(locations, strides, one[0], one[1], ctr_one, size, 0.2, 0.5,
                                topk_candidates=10, max_detections=28)  # fmt: skip
        per_image.append(single.per_image()[0])
    assert len({len(p[0]) for p in per_image}) > 1  # images differ in their counts
    # Vectorized sigmoid/sqrt round the last bit by lane position, which depends on B.
    _assert_equal_to(result, per_image, INFERENCE_TOLERANCES[torch.float32])
    # Padding past each image's count.
    k = result.scores.shape[1]
    for b, count in enumerate(result.counts.tolist()):
        assert (result.class_ids[b, count:] == -1).all() and (result.scores[b, count:] == 0).all()
        assert (result.boxes[b, count:] == 0).all() and count <= 28 and k <= 28


def test_matches_reference_with_topk_and_max_detections():
    args = _head(2, size=64, seed=4)
    for topk, max_det in [(3, None), (None, 4), (5, 2), (0, None)]:
        result = fcos_inference(*args, 0.25, 0.5, topk_candidates=topk, max_detections=max_det)
        _assert_matches_reference(
            result, args, 0.25, 0.5, topk_candidates=topk, max_detections=max_det
        )


def test_no_candidate_above_the_threshold():
    locations, strides, cls, box, ctr, size = _head(3, seed=5, cls_mean=-20.0)
    result = fcos_inference(locations, strides, cls, box, ctr, size, 0.3, 0.5)
    assert result.boxes.shape == (3, 0, 4) and result.class_ids.shape == (3, 0)
    assert result.scores.shape == (3, 0) and result.counts.tolist() == [0, 0, 0]
    assert [len(b) for b, _, _ in result.per_image()] == [0, 0, 0]


def test_thresholds_zero_and_one():
    args = _head(2, size=32, seed=6)
    everything = fcos_inference(*args, 0.0, 1.0)  # no score is 0; IoU is never > 1
    total = sum(len(v) for v in args[0].values())
    assert everything.counts.tolist() == [total, total]
    assert fcos_inference(*args, 1.0, 0.5).counts.tolist() == [0, 0]  # no score is > 1


def test_all_candidates_tied():
    # Equal logits everywhere: equal scores, class 0 (the lowest id) everywhere; equal
    # scores are kept in candidate order (level, then location), as the seed loop does.
    locations, strides, cls, box, ctr, size = _head(1, size=64, seed=7)
    cls = {k: torch.zeros_like(v) for k, v in cls.items()}
    ctr = {k: torch.zeros_like(v) for k, v in ctr.items()}
    result = fcos_inference(locations, strides, cls, box, ctr, size, 0.3, 0.5)
    assert (result.scores[0] == 0.5).all() and (result.class_ids[0] == 0).all()
    _assert_equal_to(result, _seed_loop((locations, strides, cls, box, ctr, size), 0.3, 0.5))
    _assert_matches_reference(result, (locations, strides, cls, box, ctr, size), 0.3, 0.5)
    # With disjoint boxes nothing is suppressed: every location, in location order.
    box = {k: torch.zeros_like(v) for k, v in box.items()}  # zero-size boxes never suppress
    result = fcos_inference(locations, strides, cls, box, ctr, size, 0.3, 0.5)
    flat = torch.cat(list(locations.values()))
    assert torch.equal(result.boxes[0], torch.cat([flat, flat], dim=1))


def test_single_level_and_odd_stride():
    args = _head(2, size=50, seed=8, strides={"p3": 7})
    result = fcos_inference(*args, 0.2, 0.5)
    assert result.counts.min().item() > 0
    _assert_equal_to(result, _seed_loop(args, 0.2, 0.5))
    _assert_matches_reference(result, args, 0.2, 0.5)


def test_saturated_logits():
    locations, strides, cls, box, ctr, size = _head(1, size=64, seed=9)
    cls = {k: torch.where(v > -3.0, 1e4, -1e4) for k, v in cls.items()}
    ctr = {k: torch.full_like(v, 1e4) for k, v in ctr.items()}
    box = {k: v * 1e4 for k, v in box.items()}  # huge boxes: clipped to the image
    result = fcos_inference(locations, strides, cls, box, ctr, size, 0.3, 0.5)
    assert result.counts.item() > 0
    assert (result.scores[0] == 1.0).all() and torch.isfinite(result.boxes).all()
    assert (result.boxes >= 0).all() and (result.boxes <= 64).all()
    _assert_equal_to(result, _seed_loop((locations, strides, cls, box, ctr, size), 0.3, 0.5))
    _assert_matches_reference(result, (locations, strides, cls, box, ctr, size), 0.3, 0.5)


def test_threshold_is_strict_in_the_score_dtype():
    # Score 0.5 exactly (logits 0, 0): not above 0.5; the float32 just below 0.5 is kept
    # only when the threshold is below it.
    locations = {"p3": torch.tensor([[4.0, 4.0]])}
    cls = {"p3": torch.zeros(1, 1, 1)}
    ctr = {"p3": torch.zeros(1, 1, 1)}
    box = {"p3": torch.ones(1, 1, 4)}
    args = (locations, {"p3": 8}, cls, box, ctr, (8, 8))
    assert fcos_inference(*args, 0.5, 0.5).counts.item() == 0
    assert fcos_inference(*args, math.nextafter(0.5, 0.0), 0.5).counts.item() == 1


def test_non_finite_deltas_of_non_candidates_are_ignored():
    locations, strides, cls, box, ctr, size = _head(1, size=64, seed=10)
    low = {k: v < -1.0 for k, v in cls.items()}  # mostly non-candidates
    box_nan = {k: torch.where(low[k].all(-1, keepdim=True), math.nan, v) for k, v in box.items()}
    cls_low = {k: torch.where(low[k].all(-1, keepdim=True), -50.0, v) for k, v in cls.items()}
    result = fcos_inference(locations, strides, cls_low, box_nan, ctr, size, 0.3, 0.5)
    assert result.counts.item() > 0 and torch.isfinite(result.boxes).all()
    # the same detections as with the finite deltas: non-candidates never reach the boxes
    finite = fcos_inference(locations, strides, cls_low, box, ctr, size, 0.3, 0.5)
    _assert_equal_to(result, finite.per_image())


def test_inputs_not_modified_and_helpers(device):
    args = _head(2, size=64, seed=11, device=device)
    before = [{k: v.clone() for k, v in a.items()} for a in args[2:5]]
    result = fcos_inference(*args, 0.2, 0.5)
    for a, b in zip(args[2:5], before, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert result.boxes.device.type == device and result.counts.dtype == torch.int64
    dicts = result.as_dicts()
    assert [len(d["scores"]) for d in dicts] == result.counts.tolist()
    for d, (boxes, class_ids, scores) in zip(dicts, result.per_image(), strict=True):
        # torchvision's detection dict: "labels" are the class ids.
        assert set(d) == {"boxes", "labels", "scores"}
        assert torch.equal(d["boxes"], boxes) and torch.equal(d["labels"], class_ids)
        assert torch.equal(d["scores"], scores)
        assert (scores[:-1] >= scores[1:]).all()  # descending


def test_float64_and_half_logits():
    locations, strides, cls, box, ctr, size = _head(1, size=64, seed=12)
    double = fcos_inference(
        {k: v.double() for k, v in locations.items()}, strides,
        {k: v.double() for k, v in cls.items()}, {k: v.double() for k, v in box.items()},
        {k: v.double() for k, v in ctr.items()}, size, 0.3, 0.5,
    )  # fmt: skip
    assert double.boxes.dtype == double.scores.dtype == torch.float64
    half = fcos_inference(locations, strides, {k: v.half() for k, v in cls.items()}, box,
                          {k: v.half() for k, v in ctr.items()}, size, 0.3, 0.5)  # fmt: skip
    assert half.scores.dtype == torch.float16 and half.boxes.dtype == torch.float32
    assert half.counts.item() > 0


# (logits, deltas and locations dtypes): NMS takes one dtype, and scores are computed in
# float32 or wider while boxes keep the deltas' dtype; these raised "scores must have the
# dtype of boxes" before (so did FCOS.half() and .bfloat16() in eval mode).
MIXED_DTYPES = [
    (torch.float16, torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float16, torch.float16),
    (torch.float64, torch.float32, torch.float32),
    (torch.float32, torch.float64, torch.float64),
]
# Boxes decoded in float16 / bfloat16 at up to 64 px: a few roundings of 2**-5 / 2**-2 px.
_HALF_BOX_ATOL = {torch.float16: 0.25, torch.bfloat16: 2.0}


@pytest.mark.parametrize(("cls_dtype", "box_dtype", "loc_dtype"), MIXED_DTYPES)
def test_half_and_mixed_dtypes_match_the_reference(cls_dtype, box_dtype, loc_dtype):
    locations, strides, cls, box, ctr, size = _head(2, size=64, seed=21)
    args = (
        {k: v.to(loc_dtype) for k, v in locations.items()}, strides,
        {k: v.to(cls_dtype) for k, v in cls.items()}, {k: v.to(box_dtype) for k, v in box.items()},
        {k: v.to(cls_dtype) for k, v in ctr.items()}, size,
    )  # fmt: skip
    # Half boxes round by a pixel's fraction, which can move an IoU across an NMS
    # threshold: there nothing is suppressed (IoU > 1 never holds), and the NMS call still
    # takes the half boxes with float32 scores.
    half_boxes = torch.promote_types(box_dtype, loc_dtype) in _HALF_BOX_ATOL
    nms_thresh = 1.0 if half_boxes else 0.5
    result = fcos_inference(*args, 0.3, nms_thresh)
    assert result.boxes.dtype == torch.promote_types(box_dtype, loc_dtype)
    assert result.scores.dtype == cls_dtype
    expected = _reference(args, 0.3, nms_thresh)
    assert [len(e[0]) for e in expected] == result.counts.tolist()
    assert min(result.counts.tolist()) > 0
    box_atol = _HALF_BOX_ATOL.get(result.boxes.dtype, 1e-4)
    score_rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(cls_dtype, 1e-5)
    for (boxes, class_ids, scores), (ref_boxes, ref_ids, ref_scores) in zip(
        result.per_image(), expected, strict=True
    ):
        assert class_ids.tolist() == ref_ids.tolist()
        torch.testing.assert_close(
            boxes.double(), torch.from_numpy(ref_boxes), rtol=0, atol=box_atol
        )
        torch.testing.assert_close(
            scores.double(), torch.from_numpy(ref_scores), rtol=score_rtol, atol=1e-6
        )


def _valid_args():
    return _head(1, size=32, seed=13)


def _replace(position, value):
    args = list(_valid_args())
    args[position] = value(args[position]) if callable(value) else value
    return args


ERROR_INPUTS = [
    (lambda: _replace(0, [1, 2]), TypeError,
     r"fcos_inference: locations_per_fpn_level must be a mapping"),
    (lambda: _replace(0, {}), ValueError, r"must name at least one level"),
    (lambda: _replace(1, {"p3": 8}), ValueError,
     r"strides_per_fpn_level must name every level"),
    (lambda: _replace(1, lambda s: {**s, "p4": 0}), ValueError,
     r"strides_per_fpn_level\['p4'\] must be a positive finite number, got 0"),
    (lambda: _replace(2, lambda c: {"p3": c["p3"]}), ValueError,
     r"pred_cls_logits must have the same level names as locations_per_fpn_level"),
    (lambda: _replace(2, lambda c: {**c, "p4": c["p4"][0]}), ValueError,
     r"pred_cls_logits\['p4'\] must have shape \[B, HW, C\], got \[4, 5\]"),
    (lambda: _replace(3, lambda c: {**c, "p4": c["p4"][..., :2]}), ValueError,
     r"pred_boxreg_deltas\['p4'\] must have shape \[B, HW, 4\], got \[1, 4, 2\]"),
    (lambda: _replace(4, lambda c: {**c, "p3": c["p3"][:, :3]}), ValueError,
     r"pred_ctr_logits\['p3'\] must have HW = 16 rows"),
    (lambda: _replace(4, lambda c: {**c, "p5": c["p5"].expand(2, -1, -1)}), ValueError,
     r"every prediction must have the same batch size B = 1"),
    (lambda: _replace(2, lambda c: {**c, "p5": c["p5"][..., :2]}), ValueError,
     r"every level must have the same number of classes C = 5"),
    (lambda: _replace(2, lambda c: {**c, "p3": c["p3"].long()}), TypeError,
     r"pred_cls_logits\['p3'\] must have a floating dtype"),
    (lambda: _replace(0, lambda c: {**c, "p3": c["p3"][:, :1]}), ValueError,
     r"locations_per_fpn_level\['p3'\] must have shape \[HW, 2\], got \[16, 1\]"),
    (lambda: _replace(5, (32.0, 32)), TypeError, r"image_size must be a \(height, width\) pair"),
    (lambda: _replace(5, (0, 32)), ValueError, r"image_size must be a positive"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "match"), ERROR_INPUTS)
def test_error_inputs(build, error, match):
    with pytest.raises(error, match=match):
        fcos_inference(*build())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"score_thresh": 1.5}, ValueError, r"fcos_inference: score_thresh must lie in \[0, 1\]"),
    ({"nms_thresh": -0.1}, ValueError, r"fcos_inference: nms_thresh must lie in \[0, 1\]"),
    ({"score_thresh": "0.3"}, TypeError, r"score_thresh must be a float"),
    ({"topk_candidates": -1}, ValueError, r"topk_candidates must be None or an int >= 0"),
    ({"max_detections": 2.0}, TypeError, r"max_detections must be None or an int >= 0"),
])  # fmt: skip
def test_error_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        fcos_inference(*_valid_args(), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_devices():
    args = list(_valid_args())
    args[2] = {**args[2], "p3": args[2]["p3"].cuda()}
    with pytest.raises(ValueError, match=r"fcos_inference: all tensors must be on one device"):
        fcos_inference(*args)


def test_reference_agrees_on_a_hand_case():
    # One location at (4, 4), stride 8, deltas (1, 1, 1, 1) -> box (-4, -4, 12, 12),
    # clipped to an 8 x 10 (H x W) image -> (0, 0, 10, 8). Logits (0, 2) and ctr 2:
    # best class 1, score sqrt(sigmoid(2)^2) = sigmoid(2).
    locations = {"p3": torch.tensor([[4.0, 4.0]])}
    cls = {"p3": torch.tensor([[[0.0, 2.0]]])}
    ctr = {"p3": torch.tensor([[[2.0]]])}
    box = {"p3": torch.ones(1, 1, 4)}
    result = fcos_inference(locations, {"p3": 8}, cls, box, ctr, (8, 10), 0.3, 0.5)
    sig2 = 1 / (1 + math.exp(-2))
    np.testing.assert_allclose(result.boxes[0].numpy(), [[0, 0, 10, 8]])
    assert result.class_ids.tolist() == [[1]]
    np.testing.assert_allclose(result.scores[0].numpy(), [sig2], rtol=1e-6)


def test_a_tensor_where_a_stride_belongs_is_summarized_not_printed():
    # The course's argument order puts the class logits where detops takes the strides.
    locations, strides, cls, box, ctr, size = _head(1, size=64, seed=13)
    with pytest.raises(ValueError) as error:
        fcos_inference(locations, cls, cls, box, ctr, size, 0.3, 0.5)
    message = str(error.value)
    assert re.match(
        r"fcos_inference: strides_per_fpn_level\['p3'\] must be a positive finite number, "
        r"got a tensor of shape \[1, \d+, \d+\] and dtype torch.float32$",
        message,
    ), message
    assert "tensor(" not in message and "\n" not in message


def test_old_names_of_the_class_ids_still_read_them_with_a_deprecation_warning():
    found = FCOSDetections(
        boxes=torch.zeros(1, 1, 4),
        class_ids=torch.tensor([[3]]),
        scores=torch.ones(1, 1),
        counts=torch.tensor([1]),
    )
    with pytest.warns(DeprecationWarning, match="use FCOSDetections.class_ids"):
        assert found.classes is found.class_ids
    (image,) = found.as_dicts()
    assert sorted(image) == ["boxes", "labels", "scores"]
    with pytest.warns(DeprecationWarning, match='use "labels"'):
        assert image["classes"].tolist() == [3]
    with pytest.raises(KeyError):
        image["class"]
