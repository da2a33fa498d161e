"""The ops inside torch.compile(fullgraph=True) and torch.export give the eager result.

Graphs are captured with the ``aot_eager`` backend: dynamo must trace the whole op with no
graph break (fullgraph), and AOTAutograd runs the custom ops' fake implementations, which
is what inductor and export rely on; no C++ compiler is needed, so the tests stay fast.
"""

from __future__ import annotations

import functools
import sys

import pytest
import torch

import detops
from detops.bench.cases.losses import concat_levels, random_head_outputs
from detops.bench.cases.nms import random_detections
from detops.bench.cases.targets import benchmark_inputs
from detops.testing.inputs import A4_STRIDES

COMPILED_OPS = ["nms", "class_spec_nms", "batched_nms_per_image", "box_iou", "clip_boxes_to_image"]


def op_inputs(name: str):
    boxes, scores, classes = random_detections(60, seed=4)
    if name == "nms":
        return (boxes, scores, 0.5)
    if name == "class_spec_nms":
        return (boxes, scores, classes, 0.5)
    if name == "batched_nms_per_image":
        batch, batch_scores, batch_classes = random_detections(40, batch=(3,), seed=5)
        return (batch, batch_scores, batch_classes, 0.5)
    if name == "box_iou":
        return (boxes, random_detections(20, seed=6)[0])
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
def test_clip_of_many_boxes_compiles_with_fullgraph_and_equals_eager():
    """From 16384 boxes eager mode clamps over long rows with out= views; compiled, the op
    is the one clamp."""
    boxes = random_detections(20_003, seed=8)[0] - 50
    compiled = torch.compile(detops.clip_boxes_to_image, fullgraph=True, backend="aot_eager")
    expected = detops.clip_boxes_to_image(boxes, (300, 400))
    torch.testing.assert_close(compiled(boxes, (300, 400)), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_nms_still_refuses_nan():
    boxes, scores, _ = random_detections(10, seed=7)
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
    boxes, scores, classes = random_detections(60, seed=8)
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
    matched = concat_levels(detops.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
    deltas = detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    cls, box, ctr = random_head_outputs(locations, 16, 5, "cpu")
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
        "center_crop_boxes_to_original": lambda: detops.center_crop_boxes_to_original(
            gt[0, :, :4], (375, 500), 224
        ),
        "pad_gt_boxes": lambda: detops.pad_gt_boxes([gt[0, :3], gt[1, :5]], 40),
    }


TARGET_PATH_OPS = list(target_path_calls())


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGET_PATH_OPS)
def test_target_and_inference_ops_compile_with_fullgraph_and_equal_eager(name, monkeypatch):
    call = target_path_calls()[name]
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    result = compiled()
    _assert_equals_eager(result, call, monkeypatch)


def _assert_equals_eager(result, call, monkeypatch):
    """``result`` equals the eager torch path bit for bit. The deltas ops' eager CPU
    path for small inputs runs in NumPy (bit-identical deltas, a correctly rounded
    square root in centerness: within 1 ulp), so the default eager call is compared
    within 1 ulp too."""
    default = call()
    monkeypatch.setattr(sys.modules["detops.deltas"], "_NUMPY_ON_CPU", False)
    torch.testing.assert_close(result, call(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(result, default, rtol=2.0**-23, atol=0, equal_nan=True)


def _loss_and_grads(loss_fn, leaves):
    loss = loss_fn(*leaves)
    total = sum(loss.values()) if isinstance(loss, dict) else loss.sum()
    # (An upstream gradient other than 1, as a loss weight makes: the compiled focal
    # 'mean' backward multiplied by 1 / n where eager divides by n, 1 ulp apart.)
    return (loss, *torch.autograd.grad(total * 0.7, leaves))


def focal_call(class_ids: bool, reduction: str):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 7, generator=generator) * 4
    if class_ids:
        ids = torch.randint(-1, 7, (6,), generator=generator)
        return (
            lambda x: detops.sigmoid_focal_loss_from_class_ids(x, ids, reduction=reduction),
            [logits.requires_grad_()],
        )
    targets = (torch.rand(6, 7, generator=generator) < 0.3).float()
    return (
        lambda x: detops.sigmoid_focal_loss(x, targets, reduction=reduction),
        [logits.requires_grad_()],
    )


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("class_ids", [False, True], ids=["dense", "class_ids"])
def test_focal_losses_compile_with_fullgraph_and_their_gradients_equal_eager(class_ids, reduction):
    loss_fn, leaves = focal_call(class_ids, reduction)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        _loss_and_grads(compiled, leaves), _loss_and_grads(loss_fn, leaves), rtol=0, atol=0
    )


@pytest.mark.slow
def test_compiled_focal_loss_refuses_a_second_derivative():
    # (AOTAutograd's own guard: the registered backward was traced without grad)
    loss_fn, (leaf,) = focal_call(False, "sum")
    compiled = torch.compile(lambda x: loss_fn(x) + (x**3).sum(), backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(leaf), leaf, create_graph=True)
    with pytest.raises(RuntimeError, match="does not currently support double backward"):
        torch.autograd.grad(grad.sum(), leaf)


@pytest.mark.slow
def test_fcos_loss_compiles_with_fullgraph_and_its_gradients_equal_eager():
    locations, gt, flat_locations, flat_strides = benchmark_inputs(
        64, 64, A4_STRIDES, rows=10, real=(1, 4), device="cpu"
    )
    matched = concat_levels(detops.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
    deltas = detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    heads = random_head_outputs(locations, 16, 5, "cpu")
    leaves = [concat_levels(t).requires_grad_() for t in heads]

    def loss_fn(cls, box, ctr):
        return detops.fcos_loss(cls, box, ctr, matched, deltas, 150.0)[0]

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        _loss_and_grads(compiled, leaves), _loss_and_grads(loss_fn, leaves), rtol=0, atol=0
    )


class _Call(torch.nn.Module):
    """forward(*tensors) = call(*tensors): export traces the op with tensor inputs."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, *tensors):
        return self.call(*tensors)


def _call_with(op, args, *tensors):
    """``op(*tensors, *the non-tensor arguments of args)``."""
    return op(*tensors, *args[len(tensors) :])


def export_cases():
    """name -> (call taking tensors, the tensors); other arguments are bound in the call."""
    cases = {}
    for name in COMPILED_OPS:
        args = op_inputs(name)
        tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
        cases[name] = (functools.partial(_call_with, getattr(detops, name), args), tensors)
    for name, call in target_path_calls().items():
        cases[name] = (call, ())
    for name, class_ids in (
        ("sigmoid_focal_loss_from_class_ids", True),
        ("sigmoid_focal_loss", False),
    ):
        loss_fn, leaves = focal_call(class_ids=class_ids, reduction="sum")
        cases[name] = (loss_fn, (leaves[0].detach(),))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name", list(export_cases()))
def test_op_exports_and_the_program_equals_eager(name, monkeypatch):
    call, tensors = export_cases()[name]
    program = torch.export.export(_Call(call), tensors)
    _assert_equals_eager(program.module()(*tensors), lambda: call(*tensors), monkeypatch)


@pytest.mark.slow
def test_fcos_detector_with_post_processing_exports_and_equals_eager():
    from detops.nn import FCOS

    torch.manual_seed(0)
    model = FCOS(num_classes=4, fpn_channels=32, stem_channels=[32]).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(model, (images,))
    torch.testing.assert_close(
        tuple(program.module()(images)), tuple(model(images)), rtol=0, atol=0
    )


def test_fcos_detector_exports_with_dynamic_batch_and_image_size():
    # Non-strict export (the default): the feature map sizes and the image size reach the
    # checks as SymInts (refused as "not an int" before), and the clip's long-row branch
    # put a guard on the box count (which a dynamic batch refused).
    from torch.export import Dim

    from detops.nn import FCOS

    torch.manual_seed(0)
    model = FCOS(num_classes=4, fpn_channels=16, stem_channels=[16]).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    size = Dim("size", max=16)
    dims = {0: Dim("batch", max=64), 2: 32 * size, 3: 32 * size}
    program = torch.export.export(model, (images,), dynamic_shapes=(dims,))
    for shape in [(2, 3, 64, 64), (3, 3, 96, 96)]:
        other = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(
            tuple(program.module()(other)), tuple(model(other)), rtol=0, atol=0
        )


def test_a_second_identical_compiled_call_does_not_recompile(monkeypatch):
    # The shape-pattern cache was filled during the first trace, which dynamo guards on
    # (an empty cache: as in a fresh process).
    monkeypatch.setattr(detops._checks, "_PARSED_PATTERNS", {})
    compilations = []

    def backend(graph, example_inputs):
        compilations.append(graph)
        return graph.forward

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
    compiled = torch.compile(lambda a, b: detops.box_iou(a, b) * 2, fullgraph=True, backend=backend)
    for _ in range(3):
        compiled(boxes, boxes + 0.5)
    assert len(compilations) == 1


@pytest.mark.parametrize("name", ["nms", "class_spec_nms", "box_iou", "clip_boxes_to_image"])
def test_ops_are_not_torchscript_scriptable_as_the_readme_says(name):
    # TorchScript is deprecated in torch 2.x (torch.jit.script warns); detops supports
    # torch.compile and torch.export instead. This pins the README's statement.
    # (the compiler's own errors: a RuntimeError, or a FrontendError for syntax it lacks)
    refused = (RuntimeError, torch.jit.frontend.FrontendError)
    with pytest.warns(FutureWarning), pytest.raises(refused):
        torch.jit.script(getattr(detops, name))


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_loss_grad_compiles_with_fullgraph_and_equals_eager(reduction):
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 6, generator=generator) * 4
    targets = (torch.rand(5, 6, generator=generator) < 0.3).float()

    def grad():
        return detops.sigmoid_focal_loss_grad(logits, targets, reduction=reduction)

    compiled = torch.compile(grad, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(), grad(), rtol=0, atol=0)


def dynamic_float_calls():
    """name -> (call taking one float argument, values to call it with). Compiled with
    ``dynamic=True`` the float is a ``torch.SymFloat``, which the argument checks'
    ``math.isfinite`` (and ``fcos_inference``'s threshold read back from a tensor) refused."""
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(6, 7, generator=generator) * 4
    targets = (torch.rand(6, 7, generator=generator) < 0.3).float()
    ids = torch.randint(-1, 7, (6,), generator=generator)
    locations, gt, flat_locations, flat_strides = benchmark_inputs(
        64, 64, A4_STRIDES, rows=10, real=(1, 4), device="cpu"
    )
    matched = concat_levels(detops.fcos_match_locations_to_gt(locations, A4_STRIDES, gt))
    deltas = detops.fcos_get_deltas_from_locations(flat_locations, matched, flat_strides)
    heads = random_head_outputs(locations, 16, 5, "cpu")
    cls, box, ctr = (concat_levels(t) for t in heads)
    shapes = {level: (1, 8, 64 // s, 64 // s) for level, s in A4_STRIDES.items()}
    boxes, scores, _ = random_detections(60, seed=4)
    gammas = (2.0, 1.5)
    return {
        "sigmoid_focal_loss gamma": (
            lambda g: detops.sigmoid_focal_loss(logits, targets, gamma=g, reduction="sum"),
            gammas,
        ),
        "sigmoid_focal_loss_from_class_ids gamma": (
            lambda g: detops.sigmoid_focal_loss_from_class_ids(logits, ids, gamma=g),
            gammas,
        ),
        "sigmoid_focal_loss_grad gamma": (
            lambda g: detops.sigmoid_focal_loss_grad(logits, targets, gamma=g),
            gammas,
        ),
        "fcos_loss normalizer": (
            lambda n: detops.fcos_loss(cls, box, ctr, matched, deltas, n),
            (150.0, 120.0),
        ),
        "fcos_inference score_thresh": (
            lambda t: detops.fcos_inference(locations, A4_STRIDES, *heads, (64, 64), t, 0.5),
            (0.3, 0.2),
        ),
        "get_fpn_location_coords offset": (
            lambda o: detops.get_fpn_location_coords(shapes, A4_STRIDES, offset=o),
            (0.5, 0.25),
        ),
        "fcos_match_locations_to_gt size_ranges": (
            lambda high: detops.fcos_match_locations_to_gt(
                locations, A4_STRIDES, gt, size_ranges={"p3": (0.0, high)}
            ),
            (64.0, 32.0),
        ),
        "fcos_get_deltas_from_locations stride": (
            lambda s: detops.fcos_get_deltas_from_locations(flat_locations, matched, s),
            (8.0, 16.0),
        ),
        "fcos_apply_deltas_to_locations stride": (
            lambda s: detops.fcos_apply_deltas_to_locations(deltas, flat_locations, s),
            (8.0, 16.0),
        ),
        "nms iou_threshold": (lambda t: detops.nms(boxes, scores, t), (0.5, 0.3)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(dynamic_float_calls()))
def test_a_dynamic_float_argument_compiles_with_fullgraph_and_equals_eager(name, monkeypatch):
    call, values = dynamic_float_calls()[name]
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager", dynamic=True)
    for value in values:
        _assert_equals_eager(compiled(value), functools.partial(call, value), monkeypatch)


@pytest.mark.slow
def test_a_float_made_dynamic_by_its_second_value_compiles_and_still_refuses_a_bad_one():
    # dynamic=None (the default) traces the first gamma as a constant and the second as a
    # torch.SymFloat; the finite check becomes a guard, so inf is traced (and refused) anew.
    call, _ = dynamic_float_calls()["sigmoid_focal_loss gamma"]
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for gamma in (2.0, 1.5, 1.0):
        torch.testing.assert_close(compiled(gamma), call(gamma), rtol=0, atol=0)
    with pytest.raises(torch._dynamo.exc.Unsupported) as raised:
        compiled(float("inf"))
    assert "gamma must be a finite number >= 0, got inf" in str(raised.value.__cause__)
