"""fcos_loss: equal to the course code's loss (seed-style, in the family module), edge
cases, dtypes and the error table. The comparison with the NumPy reference on hypothesis
inputs is in tests/test_against_reference.py."""

import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import reference.losses as ref
from detops import fcos_get_deltas_from_locations, fcos_match_locations_to_gt
from detops.bench.cases.losses import seed_style_fcos_loss
from detops.bench.cases.targets import benchmark_inputs
from detops.losses import fcos_loss
from detops.testing import entry_by_name
from detops.testing.compare import assert_trees_close
from detops.testing.families.losses import FCOS_LOSS_TOLERANCES, SEED_STYLE_TOLERANCE

STRIDES = {"p3": 8, "p4": 16, "p5": 32}
NAMES = ("loss_cls", "loss_box", "loss_ctr")


def _batch(seed, size=128, real=(1, 8), classes=20, device="cpu", images=4):
    """Real GT (integer boxes, 1-8 per image among 40 rows) of ``images`` images, matched,
    and random head outputs for the concatenated levels."""
    locations, gt, flat_loc, flat_strides = benchmark_inputs(
        size, size, STRIDES, rows=40, real=real, device=device, seed=seed
    )
    gt = gt[:images]
    batch, num_loc = gt.shape[0], flat_loc.shape[0]
    gen = torch.Generator().manual_seed(seed)
    preds = (
        torch.randn(batch, num_loc, classes, generator=gen) * 2 - 2,
        torch.rand(batch, num_loc, 4, generator=gen) * 6 - 1,
        torch.randn(batch, num_loc, 1, generator=gen) * 2,
    )
    preds = tuple(p.to(device) for p in preds)
    matched = torch.cat(list(fcos_match_locations_to_gt(locations, STRIDES, gt).values()), 1)
    gt_deltas = fcos_get_deltas_from_locations(flat_loc, matched, flat_strides)
    return locations, gt, preds, matched, gt_deltas


def _per_image_detops_match(locations, strides, image_boxes):
    # Per-image matching with detops' matcher: the equality test isolates the loss from
    # the course matcher's `1e8 - area` ties.
    return fcos_match_locations_to_gt(locations, strides, image_boxes)


def _with_grads(loss_fn, preds):
    leaves = [p.detach().clone().requires_grad_() for p in preds]
    losses, normalizer = loss_fn(*leaves)
    grads = torch.autograd.grad(sum(losses.values()), leaves)
    return {k: losses[k].detach() for k in NAMES}, normalizer, grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_seed_style_loss_with_real_matching(seed):
    locations, gt, preds, matched, gt_deltas = _batch(seed)
    assert (matched[..., 4] != -1).any()
    ours = _with_grads(lambda *p: fcos_loss(*p, matched, gt_deltas, 150.0), preds)
    theirs = _with_grads(
        lambda *p: seed_style_fcos_loss(
            *p, locations, STRIDES, gt, 150.0, match=_per_image_detops_match
        ),
        preds,
    )
    assert_trees_close(ours[0], theirs[0], SEED_STYLE_TOLERANCE, f"losses, {seed=}")
    assert_trees_close(ours[1], theirs[1], SEED_STYLE_TOLERANCE, "normalizer")
    assert_trees_close(ours[2], theirs[2], SEED_STYLE_TOLERANCE, "gradients")


def test_equals_seed_style_loss_with_no_positive_location():
    # Every GT row is padding: no location matches.
    locations, gt, preds, _, _ = _batch(3)
    gt = torch.full_like(gt, -1.0)
    matched = torch.cat(list(fcos_match_locations_to_gt(locations, STRIDES, gt).values()), 1)
    flat_loc = torch.cat(list(locations.values()))
    flat_strides = torch.cat(
        [torch.full((len(v),), float(STRIDES[k])) for k, v in locations.items()]
    )
    gt_deltas = fcos_get_deltas_from_locations(flat_loc, matched, flat_strides)
    ours = _with_grads(lambda *p: fcos_loss(*p, matched, gt_deltas, 150.0), preds)
    theirs = _with_grads(
        lambda *p: seed_style_fcos_loss(
            *p, locations, STRIDES, gt, 150.0, match=_per_image_detops_match
        ),
        preds,
    )
    assert_trees_close(ours[0], theirs[0], SEED_STYLE_TOLERANCE, "losses, no positive")
    assert ours[0]["loss_box"].item() == 0.0 and ours[0]["loss_ctr"].item() == 0.0
    assert math.isfinite(ours[0]["loss_cls"].item()) and ours[0]["loss_cls"].item() > 0
    assert ours[1].item() == pytest.approx(0.9 * 150.0)  # EMA of 0 positives per image
    assert all(torch.isfinite(g).all() for g in ours[2])


def test_hand_computed_single_location():
    # B = 1, L = 1, C = 2, class 1, deltas (1, 1, 1, 1) -> centerness 1; all logits 0.
    # focal: class 1 (t=1): 0.25 * log2 * (1/2)^2, class 0 (t=0): 0.75 * log2 / 4 -> log2/4.
    # box: 0.25 * sum |0 - 1| = 1. ctr: BCE(0, 1) = log 2. normalizer: 0.9*10 + 0.1*1 = 9.1.
    cls = torch.zeros(1, 1, 2, dtype=torch.float64)
    box = torch.zeros(1, 1, 4, dtype=torch.float64)
    ctr = torch.zeros(1, 1, 1, dtype=torch.float64)
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0, 1.0]]], dtype=torch.float64)
    gt_deltas = torch.ones(1, 1, 4, dtype=torch.float64)
    losses, normalizer = fcos_loss(cls, box, ctr, boxes, gt_deltas, 10.0)
    assert normalizer.item() == pytest.approx(9.1, rel=1e-15)
    assert losses["loss_cls"].item() == pytest.approx(math.log(2) / 4 / 9.1, rel=1e-14)
    assert losses["loss_box"].item() == pytest.approx(1.0 / 9.1, rel=1e-14)
    assert losses["loss_ctr"].item() == pytest.approx(math.log(2) / 9.1, rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_row_with_any_negative_delta_is_background_for_box_and_centerness(dtype):
    # One rule for delta rows: background when any of the four deltas is negative (the -1
    # rows, or a location outside its box). Row 1 is such a row with a real class; it
    # counts for loss_cls and the normalizer (class != -1) but adds 0 to loss_box and
    # loss_ctr, as the all -1 row 2 does. Element-wise masking would have added
    # 0.25 * (|b0 - 1| + |b2 - 1| + |b3 - 1|) for it.
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(1, 3, 2, generator=gen, dtype=torch.float64).to(dtype)
    box = (torch.rand(1, 3, 4, generator=gen, dtype=torch.float64) * 4).to(dtype)
    ctr = torch.randn(1, 3, 1, generator=gen, dtype=torch.float64).to(dtype)
    boxes = torch.tensor([[[0, 0, 8, 8, 1], [0, 0, 8, 8, 0], [-1, -1, -1, -1, -1]]], dtype=dtype)
    deltas = torch.tensor([[[2, 3, 4, 5], [1, -1, 1, 1], [-1, -1, -1, -1]]], dtype=dtype)
    losses, normalizer, grads = _with_grads(
        lambda *p: fcos_loss(*p, boxes, deltas, 10.0), (cls, box, ctr)
    )
    # Row 1 as the all -1 row: the same box and centerness losses, bit for bit.
    as_background = deltas.clone()
    as_background[0, 1] = -1
    same = _with_grads(lambda *p: fcos_loss(*p, boxes, as_background, 10.0), (cls, box, ctr))
    for name in ("loss_box", "loss_ctr"):
        assert torch.equal(losses[name], same[0][name]), name
    assert torch.equal(grads[1], same[2][1]) and torch.equal(grads[2], same[2][2])
    assert not grads[1][0, 1:].any() and not grads[2][0, 1:].any()  # no gradient there
    denominator = (0.9 * 10.0 + 0.1 * 2) * 1  # two positives (classes 1 and 0), B = 1
    only_row_0 = 0.25 * (box[0, 0].double() - deltas[0, 0].double()).abs().sum() / denominator
    assert losses["loss_box"].item() == pytest.approx(only_row_0.item(), rel=1e-6)
    # The reference follows the same rule.
    expected, expected_normalizer = ref.fcos_loss(
        *(t.double().numpy() for t in (cls, box, ctr, boxes, deltas)), 10.0
    )
    tolerance = FCOS_LOSS_TOLERANCES[dtype]
    assert_trees_close(losses, expected, tolerance, "a row with a negative delta")
    assert_trees_close(normalizer, expected_normalizer, tolerance, "normalizer")


def test_normalizer_forms_and_no_host_values():
    _, _, preds, matched, gt_deltas = _batch(4, size=64)
    as_float, n_float = fcos_loss(*preds, matched, gt_deltas, 150.0, momentum=0.5)
    tensor_norm = torch.tensor(150.0, dtype=torch.float64)
    as_tensor, n_tensor = fcos_loss(*preds, matched, gt_deltas, tensor_norm, momentum=0.5)
    assert (
        isinstance(n_float, torch.Tensor) and n_float.shape == () and n_float.dtype == torch.float32
    )
    assert n_tensor.dtype == torch.float64 and not n_tensor.requires_grad
    positives = (matched[..., 4] != -1).sum().item()
    expected = 0.5 * 150.0 + 0.5 * positives / matched.shape[0]
    assert n_tensor.item() == pytest.approx(expected, rel=1e-15)
    assert_trees_close(as_float, as_tensor, FCOS_LOSS_TOLERANCES[torch.float32])


def test_zero_denominator_divides_by_one():
    # momentum 0 and no positive: new normalizer 0; the sums are divided by 1, not by 0.
    cls = torch.zeros(2, 3, 4)
    boxes = torch.full((2, 3, 5), -1.0)
    gt_deltas = torch.full((2, 3, 4), -1.0)
    losses, normalizer = fcos_loss(cls, torch.zeros(2, 3, 4), torch.zeros(2, 3, 1), boxes,
                                   gt_deltas, 5.0, momentum=0.0)  # fmt: skip
    assert normalizer.item() == 0.0
    # 24 negatives at logit 0: 0.75 * log 2 * (1/2)^2 each.
    assert losses["loss_cls"].item() == pytest.approx(24 * 0.75 * math.log(2) / 4, rel=1e-6)
    assert losses["loss_box"].item() == 0.0 and losses["loss_ctr"].item() == 0.0


def test_empty_locations():
    losses, normalizer = fcos_loss(torch.zeros(2, 0, 3), torch.zeros(2, 0, 4),
                                   torch.zeros(2, 0, 1), torch.zeros(2, 0, 5),
                                   torch.zeros(2, 0, 4), 100.0)  # fmt: skip
    assert all(v.item() == 0.0 for v in losses.values())
    assert normalizer.item() == pytest.approx(90.0)


def test_a_second_derivative_is_refused():
    _, _, preds, matched, gt_deltas = _batch(5, size=64)
    leaves = tuple(p.double().requires_grad_() for p in preds)
    losses, _ = fcos_loss(*leaves, matched.double(), gt_deltas.double(), 150.0)
    total = sum(losses.values()) + (leaves[0] ** 2).sum()
    with pytest.raises(RuntimeError, match="fcos_loss: its backward gives first derivatives"):
        torch.autograd.grad(total, leaves, create_graph=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_predictions_give_float32_losses(dtype):
    _, _, preds, matched, gt_deltas = _batch(5, size=64)
    half = tuple(p.to(dtype).requires_grad_() for p in preds)
    losses, _ = fcos_loss(*half, matched.to(dtype), gt_deltas.to(dtype), 150.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in half)
    # Against the reference on the same (rounded) values.
    expected, _ = ref.fcos_loss(*(t.detach().double().numpy() for t in half),
                                matched.to(dtype).double().numpy(),
                                gt_deltas.to(dtype).double().numpy(), 150.0)  # fmt: skip
    assert_trees_close({k: losses[k] for k in NAMES}, expected, FCOS_LOSS_TOLERANCES[torch.float32])


def test_inputs_are_not_modified(device):
    _, _, preds, matched, gt_deltas = _batch(6, size=64, device=device)
    before = [t.clone() for t in (*preds, matched, gt_deltas)]
    fcos_loss(*preds, matched, gt_deltas, 150.0)
    assert all(torch.equal(a, b) for a, b in zip(before, (*preds, matched, gt_deltas), strict=True))


def test_runs_on_device(device):
    _, _, preds, matched, gt_deltas = _batch(7, size=64, device=device)
    losses, normalizer = fcos_loss(*preds, matched, gt_deltas, torch.tensor(150.0, device=device))
    assert normalizer.device.type == device
    assert all(v.device.type == device for v in losses.values())


def _args(**changes):
    args = {
        "pred_cls_logits": torch.zeros(2, 5, 3),
        "pred_boxreg_deltas": torch.zeros(2, 5, 4),
        "pred_ctr_logits": torch.zeros(2, 5, 1),
        "matched_gt_boxes": torch.full((2, 5, 5), -1.0),
        "matched_gt_deltas": torch.full((2, 5, 4), -1.0),
        "normalizer": 150.0,
    }
    args.update(changes)
    return args


ERROR_INPUTS = [
    (_args(pred_cls_logits=[[0.0]]), TypeError,
     r"fcos_loss: pred_cls_logits must be a torch.Tensor, got list"),
    (_args(pred_cls_logits=torch.zeros(2, 5)), ValueError,
     r"fcos_loss: pred_cls_logits must have shape \[B, L, C\], got \[2, 5\]"),
    (_args(pred_boxreg_deltas=torch.zeros(2, 5, 2)), ValueError,
     r"fcos_loss: pred_boxreg_deltas must have shape \[B, L, 4\], got \[2, 5, 2\]"),
    (_args(pred_ctr_logits=torch.zeros(2, 5)), ValueError,
     r"pred_ctr_logits must have shape \[B, L, 1\], got \[2, 5\]"),
    (_args(matched_gt_boxes=torch.zeros(2, 5, 4)), ValueError,
     r"matched_gt_boxes must have shape \[B, L, 5\], got \[2, 5, 4\]"),
    (_args(matched_gt_deltas=torch.zeros(2, 4, 4)), ValueError,
     r"matched_gt_deltas must have shape \[B, L, 4\] with B, L = 2, 5 .*got \[2, 4, 4\]"),
    (_args(pred_boxreg_deltas=torch.zeros(3, 5, 4)), ValueError,
     r"pred_boxreg_deltas must have shape \[B, L, 4\] with B, L = 2, 5"),
    (_args(pred_cls_logits=torch.zeros(2, 5, 3, dtype=torch.long)), TypeError,
     r"fcos_loss: pred_cls_logits must have a floating dtype.*got torch.int64"),
    (_args(matched_gt_boxes=torch.zeros(2, 5, 5, dtype=torch.int32)), TypeError,
     r"matched_gt_boxes must have a floating dtype.*got torch.int32"),
    (_args(normalizer=0.0), ValueError,
     r"fcos_loss: normalizer must be a positive finite number, got 0.0"),
    (_args(normalizer=math.nan), ValueError,
     r"normalizer must be a positive finite number, got nan"),
    (_args(normalizer="150"), TypeError, r"normalizer must be a float or a 0-d tensor, got str"),
    (_args(normalizer=torch.ones(1)), ValueError,
     r"normalizer must be a float or a 0-d tensor, got a tensor of shape \[1\]"),
    (_args(normalizer=torch.tensor(1)), TypeError, r"normalizer must have a floating dtype"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "match"), ERROR_INPUTS)
def test_error_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        fcos_loss(**kwargs)


MOMENTUM_ERRORS = [(1.5, ValueError), (-0.1, ValueError), ("0.9", TypeError), (True, TypeError)]


@pytest.mark.parametrize(("momentum", "error"), MOMENTUM_ERRORS)
def test_error_momentum(momentum, error):
    with pytest.raises(error, match=r"fcos_loss: momentum must"):
        fcos_loss(**_args(), momentum=momentum)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_devices():
    with pytest.raises(ValueError, match=r"fcos_loss: all tensors must be on one device"):
        fcos_loss(**_args(pred_ctr_logits=torch.zeros(2, 5, 1, device="cuda")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_sync_free_path_matches_the_reference_on_cpu(dtype, monkeypatch):
    """The box and centerness terms of other devices (every row computed, the others zeroed,
    no host sync), run on CPU against the reference; the default CPU path (counted rows
    gathered) is the registry's."""
    monkeypatch.setattr(sys.modules["detops.losses"], "_FOREGROUND_ROWS_ON_CPU", False)
    entry = entry_by_name("fcos_loss")

    @settings(max_examples=40)
    @given(case=entry.strategy())
    def check(case):
        entry.assert_matches(case, dtype, "cpu")

    check()


@pytest.mark.parametrize("dense", [False, True], ids=["counted rows", "dense"])
def test_infinite_and_nan_delta_rows_count_as_the_reference_says(dense, monkeypatch):
    """A row with a NaN delta is background; one with an infinite delta counts for the box
    term (an infinite loss) but not for the centerness term (NaN centerness)."""
    monkeypatch.setattr(sys.modules["detops.losses"], "_FOREGROUND_ROWS_ON_CPU", not dense)
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(1, 4, 3, generator=gen)
    box = torch.rand(1, 4, 4, generator=gen)
    ctr = torch.randn(1, 4, 1, generator=gen)
    matched = torch.tensor([[[0.0, 0, 8, 8, 1], [0, 0, 8, 8, 2], [0, 0, 8, 8, 0], [-1] * 5]])
    deltas = torch.tensor(
        [[[1.0, 2, 3, 4], [float("nan"), 1, 1, 1], [1, 1, float("inf"), 1], [-1] * 4]]
    )
    out, _ = fcos_loss(cls, box, ctr, matched, deltas, 1.0)
    expected = ref.fcos_loss(
        *(t.numpy().astype(np.float64) for t in (cls, box, ctr, matched, deltas)), 1.0
    )[0]
    assert math.isinf(out["loss_box"].item()) and math.isinf(expected["loss_box"])
    for key in ("loss_cls", "loss_ctr"):
        assert math.isfinite(out[key].item()), key
        assert out[key].item() == pytest.approx(expected[key], rel=1e-5), key
