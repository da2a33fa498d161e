"""The declarative checks of detops._checks: what each accepts, refuses and says."""

import re

import numpy as np
import pytest
import torch

import detops
from detops._checks import (
    check_bool,
    check_int,
    check_number,
    check_positive_number,
    check_shape,
)


@pytest.mark.parametrize(
    "shape, pattern, accepted",
    [
        ((10, 4), "[N, 4]", True),
        ((10, 5), "[N, 4]", False),
        ((4,), "[N, 4]", False),
        ((2, 3, 4), "[..., 4]", True),
        ((4,), "[..., 4]", True),
        ((), "[..., 4]", False),
        ((3, 5), "[N, 5] or [B, N, 5]", True),
        ((2, 3, 5), "[N, 5] or [B, N, 5]", True),
        ((2, 3, 4), "[N, 5] or [B, N, 5]", False),
        ((), "[]", True),
        ((1,), "[]", False),
    ],
)
def test_check_shape_patterns(shape, pattern, accepted):
    value = torch.zeros(shape)
    if accepted:
        assert check_shape("op", "x", value, pattern) is value
    else:
        dims = ", ".join(str(s) for s in shape)
        with pytest.raises(ValueError, match=rf"^op: x must have shape .*, got \[{dims}\]$"):
            check_shape("op", "x", value, pattern)


def test_check_shape_dtype_kinds_and_non_tensors():
    with pytest.raises(TypeError, match="op: x must have a floating dtype"):
        check_shape("op", "x", torch.zeros(2, 4, dtype=torch.int64), "[N, 4]", dtype="floating")
    with pytest.raises(TypeError, match="op: x must have an integer dtype, got torch.float32"):
        check_shape("op", "x", torch.zeros(2), "[N]", dtype="integer")
    with pytest.raises(TypeError, match="op: x must be a torch.Tensor, got list"):
        check_shape("op", "x", [[0.0] * 4], "[N, 4]")


def test_number_checks_refuse_bools_and_name_the_argument():
    assert check_int("op", "n", 3, minimum=0) == 3
    with pytest.raises(TypeError, match="op: n must be an int >= 0, got bool"):
        check_int("op", "n", True, minimum=0)
    with pytest.raises(ValueError, match="op: n must be an int >= 0, got -1"):
        check_int("op", "n", -1, minimum=0)
    assert check_number("op", "x", 2) == 2.0
    with pytest.raises(TypeError, match="op: x must be a number, got str"):
        check_number("op", "x", "2")
    for numpy_value in (np.float32(0.5), np.array(0.5), np.array(1, dtype=np.int8)):
        assert check_number("op", "x", numpy_value, numpy_scalars=True) == float(numpy_value)
        with pytest.raises(TypeError, match="op: x must be a number, got numpy."):
            check_number("op", "x", numpy_value)
    for refused in (np.array([0.5]), np.array(True), np.array("0.5")):
        with pytest.raises(TypeError, match="op: x must be a number, got numpy."):
            check_number("op", "x", refused, numpy_scalars=True)
    with pytest.raises(ValueError, match=r"op: s must be finite and > 0, got inf"):
        check_positive_number("op", "s", float("inf"), finite=True)
    assert check_positive_number("op", "s", float("inf")) == float("inf")


def _sparse_calls():
    """(op, argument, call): each public op with one tensor argument sparse, at sizes
    that take the quick paths (NumPy, torchvision's kernel) and the checked ones."""
    import detops
    from detops.bench.cases.nms import random_detections

    def sparse(t):
        return t.to_sparse()

    boxes, scores, ids = random_detections(50)
    many_boxes, many_scores, _ = random_detections(2000)
    loc, gt5 = torch.rand(5, 2) * 8, torch.rand(5, 5)
    yield "nms", "boxes", lambda: detops.nms(sparse(boxes), scores, 0.5)
    yield "nms", "scores", lambda: detops.nms(boxes, sparse(scores), 0.5)
    yield "nms", "boxes", lambda: detops.nms(sparse(many_boxes), many_scores, 0.5)
    yield "nms", "iou_threshold", lambda: detops.nms(boxes, scores, sparse(torch.tensor(0.5)))
    yield (
        "class_spec_nms",
        "class_ids",
        lambda: detops.class_spec_nms(boxes, scores, sparse(ids), 0.5),
    )
    yield (
        "batched_nms_per_image",
        "scores",
        lambda: detops.batched_nms_per_image(boxes[None], sparse(scores[None]), ids[None], 0.5),
    )
    yield "box_iou", "boxes1", lambda: detops.box_iou(sparse(boxes), boxes)
    yield "clip_boxes_to_image", "boxes", lambda: detops.clip_boxes_to_image(sparse(boxes), (9, 9))
    yield (
        "sigmoid_focal_loss",
        "inputs",
        lambda: detops.sigmoid_focal_loss(sparse(torch.rand(4, 3)), torch.rand(4, 3)),
    )
    cls, box, ctr = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 1)
    matched, gt_deltas = torch.full((2, 3, 5), -1.0), torch.full((2, 3, 4), -1.0)
    yield (
        "fcos_loss",
        "normalizer",
        lambda: detops.fcos_loss(cls, box, ctr, matched, gt_deltas, sparse(torch.tensor(5.0))),
    )
    yield (
        "fcos_get_deltas_from_locations",
        "locations",
        lambda: detops.fcos_get_deltas_from_locations(sparse(loc), gt5, 8),
    )
    yield (
        "fcos_get_deltas_from_locations",
        "stride",
        lambda: detops.fcos_get_deltas_from_locations(loc, gt5, sparse(torch.full((5,), 8.0))),
    )
    yield (
        "fcos_make_centerness_targets",
        "deltas",
        lambda: detops.fcos_make_centerness_targets(sparse(torch.rand(5, 4))),
    )
    yield (
        "fcos_apply_deltas_to_locations",
        "deltas",
        lambda: detops.fcos_apply_deltas_to_locations(sparse(torch.rand(5, 4)), loc, 8),
    )
    yield (
        "fcos_match_locations_to_gt",
        "locations_per_fpn_level['p3']",
        lambda: detops.fcos_match_locations_to_gt({"p3": sparse(loc)}, {"p3": 8}, gt5),
    )
    yield (
        "fcos_match_locations_to_gt",
        "gt_boxes",
        lambda: detops.fcos_match_locations_to_gt({"p3": loc}, {"p3": 8}, sparse(gt5)),
    )


@pytest.mark.parametrize(
    "op, argument, call",
    [
        pytest.param(*call, id=f"{call[0]}({call[1]}) #{i}")
        for i, call in enumerate(_sparse_calls())
    ],
)
def test_a_sparse_tensor_is_refused_by_name(op, argument, call):
    # (NumPy refuses to view one, torchvision's kernel has no sparse backend: without the
    # check these were raw errors naming neither the op nor the argument)
    expected = f"{op}: {argument} must be a dense (torch.strided) tensor, got layout"
    with pytest.raises(TypeError, match="^" + re.escape(expected)):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda t: detops.box_iou(t, t),
        lambda t: detops.clip_boxes_to_image(t, (10, 10)),
        lambda t: detops.nms(t, torch.ones(2), 0.5),
        lambda t: detops.fcos_make_centerness_targets(t),
        lambda t: detops.fcos_get_deltas_from_locations(torch.rand(4, 2), t, 8),
        lambda t: detops.fcos_match_locations_to_gt({"p3": torch.rand(4, 2)}, {"p3": 8}, t),
    ],
)
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_nested_tensor_is_refused_by_name(call):
    # (was a raw RuntimeError from torch: "NestedTensorImpl doesn't support sizes")
    nested = torch.nested.nested_tensor([torch.rand(2, 4), torch.rand(3, 4)])
    with pytest.raises(TypeError, match=r"^\w+: \w+ must be a dense tensor, got a nested"):
        call(nested)


def test_check_bool_takes_python_and_numpy_bools_and_names_other_types():
    assert check_bool("op", "flag", True) is True
    assert check_bool("op", "flag", np.bool_(False)) is False  # a plain bool comes back
    assert type(check_bool("op", "flag", np.bool_(True))) is bool
    for value, shown in (
        (1, "int"),
        ("no", "str"),
        (None, "NoneType"),
        (np.int64(1), "numpy.int64"),
        (torch.tensor(True), "torch.Tensor"),
    ):
        with pytest.raises(TypeError, match=rf"^op: flag must be a bool, got {re.escape(shown)}$"):
            check_bool("op", "flag", value)
