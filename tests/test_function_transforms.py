"""The ops under torch.func transforms (grad, vmap, jvp, hessian) and forward-mode AD.

The losses' eager autograd Functions give hand-written first derivatives, which those
transforms cannot see through (torch raised "must override the setup_context
staticmethod"); torchvision's focal loss, plain torch ops, works under all of them. Under a
transform the losses run as differentiable torch ops: these tests compare what the
transforms give with the NumPy reference (values and closed-form gradients), with finite
differences of the reference gradient (second derivatives) and with the eager closed-form
gradient. The other ops' fast paths (in-place and ``out=`` ops, NumPy, a wider view) are
left for plain ones there; each case below failed or gave a wrong derivative before, where
torchvision or plain torch did not (found by an audit of every op under the transforms).
"""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from torch.func import grad, grad_and_value, hessian, jvp, vmap

import detops
import reference.boxes as ref_boxes
import reference.deltas as ref_deltas
import reference.inference as ref_inference
import reference.losses as ref
import reference.matching as ref_matching
import reference.nms as ref_nms
from detops.losses import (
    fcos_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_class_ids,
    sigmoid_focal_loss_grad,
)
from detops.testing.compare import assert_trees_close
from detops.testing.families.losses import (
    FCOS_LOSS_TOLERANCES,
    FOCAL_TOLERANCES,
    class_id_cases,
    fcos_loss_cases,
    focal_cases,
)

F64 = FOCAL_TOLERANCES[torch.float64]


def _close(actual, expected, tolerance=F64):
    assert_trees_close(actual, expected, tolerance)


@pytest.fixture(autouse=True)
def _quiet_jvp_decompositions():
    # torch's first jvp loads decompositions through torch.jit.script, which warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        yield


@settings(max_examples=60, deadline=None)
@given(case=focal_cases())
def test_grad_gives_the_reference_loss_and_gradient(case):
    x, t = (torch.from_numpy(a) for a in case.args)

    def summed(logits):
        return sigmoid_focal_loss(logits, t, **case.kwargs).sum()

    gradient, value = grad_and_value(summed)(x)
    expected = ref.sigmoid_focal_loss(*case.args, **case.kwargs)
    _close(value, torch.as_tensor(np.sum(expected)))
    _close(gradient, torch.from_numpy(ref.sigmoid_focal_loss_grad(*case.args, **case.kwargs)))


@settings(max_examples=40, deadline=None)
@given(case=class_id_cases())
def test_grad_of_the_class_id_form_gives_the_reference_gradient(case):
    x, ids = (torch.from_numpy(a) for a in case.args)
    gradient = grad(lambda z: sigmoid_focal_loss_from_class_ids(z, ids, **case.kwargs).sum())(x)
    one_hot = ref._one_hot(case.args[1], case.args[0].shape[-1])
    expected = ref.sigmoid_focal_loss_grad(case.args[0], one_hot, **case.kwargs)
    _close(gradient, torch.from_numpy(expected))


@settings(max_examples=40, deadline=None)
@given(case=focal_cases())
def test_vmap_gives_the_reference_loss_of_every_slice(case):
    x, t = (torch.from_numpy(a) for a in case.args)
    stacked_x, stacked_t = torch.stack([x, -x, 0.5 * x]), torch.stack([t, t, 1 - t])
    losses = vmap(lambda a, b: sigmoid_focal_loss(a, b, **case.kwargs))(stacked_x, stacked_t)
    expected = [
        ref.sigmoid_focal_loss(a.numpy(), b.numpy(), **case.kwargs)
        for a, b in zip(stacked_x, stacked_t, strict=True)
    ]
    _close(losses, torch.from_numpy(np.stack(expected)))


@settings(max_examples=40, deadline=None)
@given(case=focal_cases())
def test_jvp_is_the_reference_gradient_times_the_tangent(case):
    x, t = (torch.from_numpy(a) for a in case.args)
    kwargs = dict(case.kwargs, reduction="none")
    tangent = torch.linspace(-1.0, 2.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    value, derivative = jvp(lambda z: sigmoid_focal_loss(z, t, **kwargs), (x,), (tangent,))
    elementwise = ref.sigmoid_focal_loss_grad(*case.args, **kwargs)
    _close(value, torch.from_numpy(ref.sigmoid_focal_loss(*case.args, **kwargs)))
    _close(derivative, torch.from_numpy(elementwise) * tangent)


def test_forward_mode_ad_outside_torch_func():
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0, 7.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 0.3, 1.0, 0.0], dtype=torch.float64)
    tangent = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, tangent)
        loss = sigmoid_focal_loss(dual, t, 0.25, 2.0)
        derivative = torch.autograd.forward_ad.unpack_dual(loss).tangent
    expected = ref.sigmoid_focal_loss_grad(x.numpy(), t.numpy(), 0.25, 2.0) * tangent.numpy()
    _close(derivative, torch.from_numpy(expected))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_hessian_is_the_derivative_of_the_reference_gradient(gamma, target):
    # The loss is elementwise: its Hessian is diagonal, each entry the derivative of the
    # reference's closed-form gradient, here by central differences (error ~1e-9).
    x = torch.tensor([-8.0, -2.5, -0.3, 0.0, 0.4, 3.0, 8.0], dtype=torch.float64)
    t = torch.full_like(x, target)
    h = hessian(lambda z: sigmoid_focal_loss(z, t, 0.25, gamma, "sum"))(x)
    step = 1e-5
    x_np, t_np = x.numpy(), t.numpy()
    plus = ref.sigmoid_focal_loss_grad(x_np + step, t_np, 0.25, gamma)
    minus = ref.sigmoid_focal_loss_grad(x_np - step, t_np, 0.25, gamma)
    expected = (plus - minus) / (2 * step)
    torch.testing.assert_close(h.diagonal(), torch.from_numpy(expected), rtol=1e-6, atol=1e-8)
    assert torch.count_nonzero(h - torch.diag(h.diagonal())) == 0


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_grad_is_finite_at_saturated_logits_where_torchvision_gives_nan(gamma):
    x = torch.tensor([1e4, -1e4, 100.0, -100.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    ours = grad(lambda z: sigmoid_focal_loss(z, t, 0.25, gamma, "sum"))(x)
    expected = ref.sigmoid_focal_loss_grad(x.numpy(), t.numpy(), 0.25, gamma)
    _close(ours, torch.from_numpy(expected))
    peer = grad(lambda z: torchvision.ops.sigmoid_focal_loss(z, t, 0.25, gamma, "sum"))(x)
    assert torch.isnan(peer).any()  # the departure this pins


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_grad_keeps_the_input_dtype(dtype):
    x = torch.tensor([-2.0, 0.0, 1.5], dtype=dtype)
    t = torch.tensor([0.0, 1.0, 1.0], dtype=dtype)
    gradient = grad(lambda z: sigmoid_focal_loss(z, t, reduction="mean"))(x)
    assert gradient.dtype == dtype
    expected = ref.sigmoid_focal_loss_grad(x.double().numpy(), t.double().numpy(), reduction="mean")
    _close(gradient.double(), torch.from_numpy(expected), FOCAL_TOLERANCES[dtype])


def _fcos_total(cls, box, ctr, gt_boxes, gt_deltas, normalizer, momentum):
    losses, _ = fcos_loss(cls, box, ctr, gt_boxes, gt_deltas, normalizer, momentum=momentum)
    return losses["loss_cls"] + losses["loss_box"] + losses["loss_ctr"]


def _total_of(reference_losses):
    return torch.tensor(sum(float(v) for v in reference_losses.values()), dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(case=fcos_loss_cases())
def test_fcos_loss_grad_matches_the_eager_closed_form_gradient(case):
    cls, box, ctr, gt_boxes, gt_deltas = (torch.from_numpy(a) for a in case.args[:5])
    normalizer = case.args[5]
    normalizer = torch.from_numpy(normalizer) if isinstance(normalizer, np.ndarray) else normalizer
    rest = (gt_boxes, gt_deltas, normalizer, case.kwargs["momentum"])

    gradients, value = grad_and_value(_fcos_total, argnums=(0, 1, 2))(cls, box, ctr, *rest)
    expected_losses, _ = ref.fcos_loss(*case.args, **case.kwargs)
    _close(value, _total_of(expected_losses), FCOS_LOSS_TOLERANCES[torch.float64])
    leaves = [p.clone().requires_grad_() for p in (cls, box, ctr)]
    eager = torch.autograd.grad(_fcos_total(*leaves, *rest), leaves)
    _close(gradients, eager)


def test_fcos_loss_under_vmap_over_an_ensemble():
    gen = torch.Generator().manual_seed(3)
    members, batch, locations, classes = 3, 2, 6, 4
    cls = torch.randn(members, batch, locations, classes, generator=gen, dtype=torch.float64)
    box = torch.rand(members, batch, locations, 4, generator=gen, dtype=torch.float64) * 4
    ctr = torch.randn(members, batch, locations, 1, generator=gen, dtype=torch.float64)
    gt_boxes = torch.full((batch, locations, 5), -1.0, dtype=torch.float64)
    gt_deltas = torch.full((batch, locations, 4), -1.0, dtype=torch.float64)
    gt_boxes[:, ::2, 4] = torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64)
    gt_deltas[:, ::2] = torch.rand(batch, 3, 4, generator=gen, dtype=torch.float64) * 5
    totals = vmap(lambda c, b, r: _fcos_total(c, b, r, gt_boxes, gt_deltas, 10.0, 0.9))(
        cls, box, ctr
    )
    for k in range(members):
        args = [a[k].numpy() for a in (cls, box, ctr)] + [gt_boxes.numpy(), gt_deltas.numpy()]
        expected, _ = ref.fcos_loss(*args, 10.0, momentum=0.9)
        _close(totals[k], _total_of(expected), FCOS_LOSS_TOLERANCES[torch.float64])


def test_eager_create_graph_is_still_refused():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(sigmoid_focal_loss(x, t, reduction="sum"), x, create_graph=True)


@settings(max_examples=30, deadline=None)
@given(case=focal_cases())
def test_the_gradient_function_under_vmap_gives_the_reference_gradient(case):
    x, t = (torch.from_numpy(a) for a in case.args)
    stacked_x, stacked_t = torch.stack([x, -x]), torch.stack([t, 1 - t])
    gradients = vmap(lambda a, b: sigmoid_focal_loss_grad(a, b, **case.kwargs))(
        stacked_x, stacked_t
    )
    expected = [
        ref.sigmoid_focal_loss_grad(a.numpy(), b.numpy(), **case.kwargs)
        for a, b in zip(stacked_x, stacked_t, strict=True)
    ]
    _close(gradients, torch.from_numpy(np.stack(expected)))


# ---------------------------------------------------------------------------------------
# the other ops
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("class_column", [False, True])
def test_deltas_background_rows_get_no_gradient(dtype, class_column):
    # Background rows are the constant (-1, -1, -1, -1): their gradient is 0. Foreground
    # rows: d/d(x1, y1, x2, y2) of (xc - x1, yc - y1, x2 - xc, y2 - yc) / s summed is
    # (-1, -1, 1, 1) / s. (float32/16/bfloat16 filled the rows through a wider view that
    # autograd does not see, and their gradient came out as a foreground row's.)
    locations = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 20.0]], dtype=dtype)
    rows = [[1.0, 1.0, 15.0, 14.0], [-1.0, -1.0, -1.0, -1.0], [2.0, 3.0, 30.0, 28.0]]
    if class_column:
        rows = [r + [c] for r, c in zip(rows, [2.0, -1.0, 0.0], strict=True)]
        rows[1][:4] = [5.0, 5.0, 9.0, 9.0]  # (a class of -1 marks it; its corners are ignored)
    gt = torch.tensor(rows, dtype=dtype, requires_grad=True)
    detops.fcos_get_deltas_from_locations(locations, gt, 8).sum().backward()
    foreground = [-0.125, -0.125, 0.125, 0.125] + ([0.0] if class_column else [])
    expected = [foreground, [0.0] * len(foreground), foreground]
    assert gt.grad.tolist() == expected
    transformed = grad(lambda g: detops.fcos_get_deltas_from_locations(locations, g, 8).sum())(
        gt.detach()
    )
    assert transformed.tolist() == expected


def test_deltas_vmap_over_strides_gives_the_reference_deltas():
    locations = torch.tensor([[4.0, 4.0], [12.0, 4.0]], dtype=torch.float64)
    gt = torch.tensor(
        [[1.0, 1.0, 15.0, 14.0, 2.0], [0.0, 0.0, 20.0, 20.0, -1.0]], dtype=torch.float64
    )
    strides = torch.tensor([[8.0, 16.0], [16.0, 32.0]], dtype=torch.float64)
    deltas = vmap(lambda s: detops.fcos_get_deltas_from_locations(locations, gt, s))(strides)
    expected = [
        ref_deltas.fcos_get_deltas_from_locations(locations.numpy(), gt.numpy(), s.numpy())
        for s in strides
    ]
    _close(deltas, torch.from_numpy(np.stack(expected)))


def _ordered_boxes(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(count, 4, generator=gen, dtype=torch.float64).cumsum(-1) * 10


def test_box_iou_of_many_pairs_under_vmap_and_jvp_as_torchvision():
    # 65 x 64 pairs: above the pair count from which eager calls fill blocks with out= ops.
    a, b = _ordered_boxes(65, 0), _ordered_boxes(64, 1)
    batched = vmap(detops.box_iou)(a[None], b[None])
    _close(batched[0], torch.from_numpy(ref_boxes.box_iou(a.numpy(), b.numpy())))
    tangent = torch.linspace(-1.0, 1.0, a.numel(), dtype=a.dtype).reshape(a.shape)
    _, ours = jvp(lambda x: detops.box_iou(x, b), (a,), (tangent,))
    _, peer = jvp(lambda x: torchvision.ops.box_iou(x, b), (a,), (tangent,))
    torch.testing.assert_close(ours, peer, rtol=1e-12, atol=1e-12)


def test_clip_forward_mode_derivative_is_torchvisions_at_the_bounds():
    # x1 = 0, x2 = width, y2 = height lie on a bound: derivative 0 there, as torchvision's
    # (a clamp by bound tensors gives 0.5); NaN gets 0 too.
    boxes = torch.tensor(
        [[0.0, 2.0, 20.0, 10.0], [3.0, float("nan"), 25.0, 4.0]], dtype=torch.float64
    )
    ours = torch.func.jacfwd(lambda x: detops.clip_boxes_to_image(x, (10, 20)).sum())(boxes)
    peer = torch.func.jacfwd(lambda x: torchvision.ops.clip_boxes_to_image(x, (10, 20)).sum())(
        boxes
    )
    assert ours.tolist() == peer.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]


def test_matching_under_vmap_over_locations_gives_the_reference_match():
    strides = {"p3": 8}
    grid = detops.get_fpn_location_coords({"p3": (4, 4)}, strides, dtype=torch.float64)["p3"]
    gt = torch.tensor(
        [[2.0, 3.0, 20.0, 18.0, 1.0], [9.0, 1.0, 31.0, 30.0, 0.0]], dtype=torch.float64
    )
    shifted = torch.stack([grid, grid + 0.5, grid * 0.75])
    matched = vmap(lambda loc: detops.fcos_match_locations_to_gt({"p3": loc}, strides, gt)["p3"])(
        shifted
    )
    for k, loc in enumerate(shifted):
        expected = ref_matching.fcos_match_locations_to_gt({"p3": loc.numpy()}, strides, gt.numpy())
        _close(matched[k], torch.from_numpy(expected["p3"]))


def test_nms_family_under_grad_selects_the_reference_kept_scores():
    # A user's grad through the scores NMS keeps: 1 for each kept box, 0 for the others.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.5, 0.0, 10.0, 10.0],
        ],
        dtype=torch.float64,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    classes = torch.tensor([0, 0, 1, 1])

    def indicator(kept):
        out = np.zeros(4)
        out[np.asarray(kept)] = 1.0
        return out.tolist()

    got = grad(lambda s: s[detops.nms(boxes, s, 0.5)].sum())(scores)
    assert got.tolist() == indicator(ref_nms.nms(boxes.numpy(), scores.numpy(), 0.5))
    got = grad(lambda s: s[detops.class_spec_nms(boxes, s, classes, 0.5)].sum())(scores)
    expected = ref_nms.class_spec_nms(boxes.numpy(), scores.numpy(), classes.numpy(), 0.5)
    assert got.tolist() == indicator(expected)
    kept = lambda s: detops.batched_nms_per_image(boxes[None], s, classes[None], 0.5)  # noqa: E731
    got = grad(lambda s: s.gather(1, kept(s).clamp(min=0)).sum())(scores[None])
    assert got[0].tolist() == indicator(expected)


def _nms_slices(same_counts: bool):
    """Three slices of 4 boxes; each keeps 2 boxes, else the last keeps all 4."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0.5, 0, 10, 10]])
    stacked = torch.stack([boxes, boxes + 1, boxes * 2])
    if not same_counts:
        stacked[2] = torch.tensor(
            [[0.0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30], [50, 50, 60, 60]]
        )
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.8, 0.7, 0.6], [0.1, 0.2, 0.7, 0.6]])
    return stacked, scores, torch.tensor([0, 0, 1, 1]).expand(3, 4)


NMS_UNDER_VMAP = {
    "nms": lambda b, s, c: detops.nms(b, s, 0.5),
    "class_spec_nms": lambda b, s, c: detops.class_spec_nms(b, s, c, 0.3),
    "batched_nms_per_image": lambda b, s, c: detops.batched_nms_per_image(
        b[None], s[None], c[None], 0.5, max_detections=4
    ),
}


@pytest.mark.parametrize("name", list(NMS_UNDER_VMAP))
def test_nms_family_under_vmap_equals_a_loop_without_the_fallback_warning(name, recwarn, capfd):
    # Without a batching rule torch looped itself, warning "There is a performance drop
    # because we have not yet implemented the batching rule for detops::nms" at every call
    # (a UserWarning or, outside Python's warning handler, a line on stderr).
    op = NMS_UNDER_VMAP[name]
    boxes, scores, classes = _nms_slices(same_counts=True)
    looped = torch.stack([op(*slices) for slices in zip(boxes, scores, classes, strict=True)])
    assert len({tuple(k.tolist()) for k in looped.flatten(1)}) == 3  # the slices differ
    torch.testing.assert_close(vmap(op)(boxes, scores, classes), looped, rtol=0, atol=0)
    # unbatched boxes, scores mapped over their last dimension, nested
    unbatched = lambda s: op(boxes[0], s, classes[0])  # noqa: E731
    looped = torch.stack([unbatched(s) for s in scores])
    torch.testing.assert_close(vmap(unbatched, in_dims=1)(scores.T), looped, rtol=0, atol=0)
    nested = vmap(vmap(unbatched))(torch.stack([scores, scores.flip(0)]))
    torch.testing.assert_close(nested, torch.stack([looped, looped.flip(0)]), rtol=0, atol=0)
    assert not [w for w in recwarn if "batching rule" in str(w.message)]
    assert "batching rule" not in capfd.readouterr().err


@pytest.mark.parametrize("name", list(NMS_UNDER_VMAP))
def test_nms_family_under_vmap_refuses_slices_that_keep_different_counts(name):
    op = NMS_UNDER_VMAP[name]
    boxes, scores, classes = _nms_slices(same_counts=False)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        vmap(op)(boxes, scores, classes)
    if name == "nms":  # as torchvision's under vmap
        with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
            vmap(lambda b, s: torchvision.ops.nms(b, s, 0.5))(boxes, scores)
    with pytest.raises(RuntimeError, match=f"{name} under vmap: the mapped dimension has size 0"):
        vmap(op)(boxes[:0], scores[:0], classes[:0])


def test_fcos_inference_under_vmap_over_the_class_logits():
    strides = {"p3": 8}
    locations = detops.get_fpn_location_coords({"p3": (2, 2)}, strides, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 1, 4, 2, generator=gen, dtype=torch.float64)
    deltas = torch.rand(1, 4, 4, generator=gen, dtype=torch.float64) * 2
    centerness = torch.randn(1, 4, 1, generator=gen, dtype=torch.float64)

    def best(cls):
        found = detops.fcos_inference(
            locations, strides, {"p3": cls}, {"p3": deltas}, {"p3": centerness}, (16, 16),
            0.0, 0.5, max_detections=1,
        )  # fmt: skip
        return found.boxes, found.scores

    boxes, scores = vmap(best)(logits)
    for k in range(3):
        ((ref_boxes_k, _, ref_scores_k),) = ref_inference.fcos_inference(
            {"p3": locations["p3"].numpy()}, strides, {"p3": logits[k].numpy()},
            {"p3": deltas.numpy()}, {"p3": centerness.numpy()}, (16, 16), 0.0, 0.5,
            max_detections=1,
        )  # fmt: skip
        _close(boxes[k, 0, :1], torch.from_numpy(ref_boxes_k))
        _close(scores[k, 0, :1], torch.from_numpy(ref_scores_k))
