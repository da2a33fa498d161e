"""The ops inside torch.compile(fullgraph=True) and torch.export give the eager result.

Graphs are captured with the ``aot_eager`` backend: dynamo must trace the whole op with no
graph break (fullgraph), and AOTAutograd runs the custom ops' fake implementations, which
is what inductor and export rely on; no C++ compiler is needed, so the tests stay fast.
"""

from __future__ import annotations

import pytest
import torch

import detops
from detops.testing.families.losses import A4_STRIDES, _cat, _head_outputs, benchmark_inputs
from detops.testing.families.nms import random_boxes

COMPILED_OPS = ["nms", "class_spec_nms", "batched_nms_per_image", "box_iou", "clip_boxes_to_image"]


def op_inputs(name: str):
    boxes, scores, classes = random_boxes(60, seed=4)
    if name == "nms":
        return (boxes, scores, 0.5)
    if name == "class_spec_nms":
        return (boxes, scores, classes, 0.5)
    if name == "batched_nms_per_image":
        batch, batch_scores, batch_classes = random_boxes(40, batch=(3,), seed=5)
        return (batch, batch_scores, batch_classes, 0.5)
    if name == "box_iou":
        return (boxes, random_boxes(20, seed=6)[0])
    return (boxes, (100, 120))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED_OPS)
def test_op_compiles_with_fullgraph_and_equals_eager(name):
    op = getattr(detops, name)
    args = op_inputs(name)
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), op(*args), rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_nms_still_refuses_nan():
    boxes, scores, _ = random_boxes(10, seed=7)
    scores[3] = float("nan")
    compiled = torch.compile(detops.nms, fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="nms: scores must not contain NaN"):
        compiled(boxes, scores, 0.5)


class _ScoreThenNMS(torch.nn.Module):
    def forward(self, boxes, logits, classes):
        scores = logits.sigmoid()
        return detops.class_spec_nms(boxes, scores, classes, 0.5)


@pytest.mark.slow
def test_class_spec_nms_exports_and_the_program_equals_eager():
    boxes, scores, classes = random_boxes(60, seed=8)
    logits = torch.logit(scores.clamp(1e-4, 1 - 1e-4))
    module = _ScoreThenNMS()
    program = torch.export.export(module, (boxes, logits, classes))
    torch.testing.assert_close(
        program.module()(boxes, logits, classes), module(boxes, logits, classes), rtol=0, atol=0
    )


def target_path_calls():
    """Zero-argument calls of the FCOS target and inference ops on a small A4-like batch."""
    locations, gt, flat_locations, flat_strides = benchmark_inputs(
        64, 64, A4_STRIDES, rows=10, real=(1, 4), device="cpu"
    )
    matched = _cat(detops.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
    deltas = detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    cls, box, ctr = _head_outputs(locations, 16, 5, "cpu")
    shapes = {level: (1, 8, 64 // s, 64 // s) for level, s in A4_STRIDES.items()}
    return {
        "get_fpn_location_coords": lambda: detops.get_fpn_location_coords(shapes, A4_STRIDES),
        "fcos_match_locations_to_gt": lambda: detops.fcos_match_locations_to_gt(
            locations, A4_STRIDES, gt
        ),
        "fcos_get_deltas_from_locations": lambda: detops.fcos_get_deltas_from_locations(
            flat_locations, matched, flat_strides
        ),
        "fcos_apply_deltas_to_locations": lambda: detops.fcos_apply_deltas_to_locations(
            deltas, flat_locations, flat_strides
        ),
        "fcos_make_centerness_targets": lambda: detops.fcos_make_centerness_targets(deltas),
        "fcos_inference": lambda: detops.fcos_inference(
            locations, A4_STRIDES, cls, box, ctr, (64, 64), 0.3, 0.5
        ),
        "resize_and_center_crop_boxes": lambda: detops.resize_and_center_crop_boxes(
            gt[0], (375, 500), 224
        ),
    }


TARGET_PATH_OPS = list(target_path_calls())


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGET_PATH_OPS)
def test_target_and_inference_ops_compile_with_fullgraph_and_equal_eager(name):
    call = target_path_calls()[name]
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(), call(), rtol=0, atol=0, equal_nan=True)
