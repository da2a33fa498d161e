"""Op-specific tests for detops.boxes: torchvision equality, pinned differences, errors."""

import math

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

import detops._boxes_numpy as boxes_numpy_module
import detops.boxes as boxes_module
import reference.boxes as ref
from detops import (
    box_iou,
    center_crop_boxes_to_original,
    clip_boxes_to_image,
    pad_gt_boxes,
    resize_and_center_crop_boxes,
)
from detops.boxes import resized_and_crop_geometry
from detops.testing.families.boxes import boxes_with_degenerate
from detops.testing.inputs import random_boxes

tv_box_iou = torchvision.ops.box_iou
tv_clip = torchvision.ops.clip_boxes_to_image


def _integer_valued_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(-20, 60, (n, 2), generator=gen)
    wh = torch.randint(1, 30, (n, 2), generator=gen)
    return torch.cat((xy, xy + wh), dim=-1)


# ------------------------------------------------------------------------------ box_iou


@pytest.mark.parametrize("n", [0, 1, 10, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(n, dtype, device):
    b1 = random_boxes((n,), seed=n).to(device, dtype)
    b2 = random_boxes((max(n // 2, 1),), seed=n + 1).to(device, dtype)
    expected = tv_box_iou(b1, b2)
    actual = box_iou(b1, b2)
    assert actual.dtype == expected.dtype and actual.device == expected.device
    assert actual.shape == (n, max(n // 2, 1))
    assert torch.equal(actual, expected), (actual - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.int32])
def test_box_iou_integer_valued_boxes_equal_torchvision(dtype, device):
    # Integer corners: shared edges and identical boxes, IoU exactly 0 or 1 in places.
    b1 = _integer_valued_boxes(300, seed=1).to(device, dtype)
    b2 = torch.cat((b1[:50], _integer_valued_boxes(100, seed=2).to(device, dtype)))
    expected = tv_box_iou(b1, b2)
    actual = box_iou(b1, b2)
    assert actual.dtype == expected.dtype == torch.float32
    assert torch.equal(actual, expected)
    assert torch.all(torch.diagonal(actual[:50, :50]) == 1)


def test_box_iou_batched_equals_per_image_and_torchvision(device):
    b1 = random_boxes((4, 30), seed=3).to(device)
    b2 = random_boxes((4, 20), seed=4).to(device)
    actual = box_iou(b1, b2)
    assert actual.shape == (4, 30, 20)
    for i in range(4):
        assert torch.equal(actual[i], tv_box_iou(b1[i], b2[i]))
    assert torch.equal(actual, tv_box_iou(b1, b2))
    # Leading dims broadcast: [N, 4] against [B, M, 4].
    assert torch.equal(box_iou(b1[0], b2), torch.stack([tv_box_iou(b1[0], b) for b in b2]))


@pytest.mark.parametrize("block", [1, 5, 16, 35, 64, 10**6])
def test_box_iou_blocking_is_invisible(block, monkeypatch):
    # Small blocks split images into row ranges, or group several whole images.
    monkeypatch.setattr(boxes_module, "_IOU_BLOCK", block)
    cases = [((3, 7), (3, 5)), ((7,), (4, 9)), ((2, 1, 6), (1, 3, 4)), ((5,), (1,))]
    for seed, (shape1, shape2) in enumerate(cases):
        b1, b2 = random_boxes(shape1, seed=seed), random_boxes(shape2, seed=seed + 50)
        b1[..., 0, 2] = b1[..., 0, 0]  # a zero-area box in every image
        expected = tv_box_iou(b1, b2)
        actual = box_iou(b1, b2)
        assert actual.shape == expected.shape
        assert torch.equal(actual, expected), (block, shape1, shape2)


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 14])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_numpy_kernel_blocks_are_invisible(block, dtype, monkeypatch):
    # Row blocks of the NumPy kernel (the plain CPU call): one row, several, whole.
    monkeypatch.setattr(boxes_numpy_module, "_BLOCK", block)
    for seed, (n, m) in enumerate([(9, 7), (7, 1), (1, 9), (40, 3), (0, 5), (5, 0)]):
        b1 = random_boxes((n,), seed=seed).to(dtype)
        b2 = random_boxes((m,), seed=seed + 50).to(dtype)
        if n and m:
            b1[0, 2] = b1[0, 0]  # zero area
        expected = tv_box_iou(b1, b2)  # (the zero-area row: 0 / area, 0 in both)
        actual = box_iou(b1, b2)
        assert actual.shape == (n, m) and actual.dtype == dtype
        assert torch.equal(actual, expected), (block, n, m)


_EDGE_VALUES = st.sampled_from(
    [0.0, -0.0, 1.0, 3.5, -2.0, 1e30, -1e30, math.inf, -math.inf, math.nan]
)


@given(
    st.one_of(
        boxes_with_degenerate(0, 7),
        st.lists(st.lists(_EDGE_VALUES, min_size=4, max_size=4), max_size=5).map(
            lambda r: np.array(r, dtype=np.float64).reshape(-1, 4)
        ),
    ),
    boxes_with_degenerate(0, 7),
    st.sampled_from([torch.float32, torch.float64]),
)
@pytest.mark.filterwarnings("error")
def test_box_iou_numpy_kernel_equals_torch_path(a, b, dtype):
    """The NumPy kernel and the torch path give the same values (a zero's sign aside), NaN
    where the other has NaN: degenerate boxes, infinities, huge and signed-zero coordinates;
    and NumPy's overflow and invalid-value warnings stay silent, as torch is."""
    ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
    numpy_iou = box_iou(ta, tb)
    boxes_module._NUMPY_IOU = False
    try:
        torch_iou = box_iou(ta, tb)
    finally:
        boxes_module._NUMPY_IOU = True
    for x, y in ((numpy_iou, torch_iou), (box_iou(tb, ta), torch_iou.T)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.isnan(), y.isnan())
        assert torch.equal(x.nan_to_num(), y.nan_to_num())


def _spy_numpy_kernel(monkeypatch) -> list:
    calls = []
    real = boxes_module.box_iou_numpy
    monkeypatch.setattr(boxes_module, "box_iou_numpy", lambda a, b: calls.append(1) or real(a, b))
    return calls


def test_box_iou_plain_cpu_float_calls_take_the_numpy_kernel(monkeypatch):
    calls = _spy_numpy_kernel(monkeypatch)
    b1, b2 = random_boxes((6,), seed=1), random_boxes((5,), seed=2)
    odd_layouts = [
        (b1.double(), b2.double()),
        (b1.T.contiguous().T, b2),  # column-major
        (b1[::2], b2[1:]),  # strided rows, an offset
        (torch._neg_view(-b1), b2),  # lazy negation
        (b1.clone().requires_grad_(), b2),  # inside no_grad below
    ]
    for x, y in odd_layouts[:-1]:
        expected = tv_box_iou(x.clone(), y.clone())
        assert torch.equal(box_iou(x, y), expected)
    with torch.no_grad():
        x, y = odd_layouts[-1]
        assert torch.equal(box_iou(x, y), tv_box_iou(x, y))
    assert len(calls) == len(odd_layouts)


def test_box_iou_other_calls_keep_the_torch_path(monkeypatch):
    calls = _spy_numpy_kernel(monkeypatch)
    b1, b2 = random_boxes((6,), seed=1), random_boxes((5,), seed=2)
    leaf = b1.clone().requires_grad_()
    box_iou(leaf, b2).sum().backward()  # autograd
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    box_iou(b1[None], b2[None])  # batched
    box_iou(b1.half(), b2.half())  # float16, computed in float32 by torch
    box_iou(b1.long(), b2.long())  # integers
    box_iou(random_boxes((513,), seed=3), random_boxes((512,), seed=4))  # over 2**18 pairs
    assert calls == []
    box_iou(b1, b2.double())  # two dtypes: promoted by torch
    assert calls == []
    for bad in ((b1[:, :3], b2), (b1.tolist(), b2)):
        with pytest.raises((TypeError, ValueError), match="box_iou"):
            box_iou(*bad)
    assert calls == []


@pytest.mark.filterwarnings(
    "error", "ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.* is deprecated:FutureWarning"
)
def test_box_iou_under_vmap_forward_ad_and_trace_equals_torchvision():
    """The NumPy kernel stays out of torch.func transforms, forward AD and jit traces
    (it would fail on wrapped tensors, drop the tangent, or be traced as a constant)."""
    import torch.autograd.forward_ad as forward_ad

    a, b = random_boxes((3, 5), seed=1), random_boxes((3, 6), seed=2)
    assert torch.equal(torch.func.vmap(box_iou)(a, b), tv_box_iou(a, b))
    tangent = torch.rand(5, 4, generator=torch.Generator().manual_seed(3))
    ours = torch.func.jvp(lambda x: box_iou(x, b[0]), (a[0],), (tangent,))
    theirs = torch.func.jvp(lambda x: tv_box_iou(x, b[0]), (a[0],), (tangent,))
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=1e-7)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(a[0], tangent)
        got = forward_ad.unpack_dual(box_iou(dual, b[0])).tangent
    assert got is not None
    torch.testing.assert_close(got, theirs[1], rtol=1e-6, atol=1e-7)
    traced = torch.jit.trace(box_iou, (a[0], b[0]))
    assert torch.equal(traced(a[1], b[2]), tv_box_iou(a[1], b[2]))


@pytest.mark.parametrize("shape1, shape2", [((64,), (65,)), ((1,), (4097,)), ((2, 64), (2, 64))])
def test_box_iou_gradient_above_the_broadcast_size_equals_torchvision(shape1, shape2):
    # (the blocked path's out= ops are not recorded by autograd: above 4096 pairs the
    # backward raised "functions with out=... arguments don't support automatic
    # differentiation")
    a = random_boxes(shape1, seed=4).requires_grad_()
    b = random_boxes(shape2, seed=5)
    weights = torch.rand(
        *shape1[:-1], shape1[-1], shape2[-1], generator=torch.Generator().manual_seed(6)
    )
    (ours,) = torch.autograd.grad((box_iou(a, b) * weights).sum(), a)
    (theirs,) = torch.autograd.grad((tv_box_iou(a, b) * weights).sum(), a)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("numpy_kernel", [True, False])
def test_box_iou_zero_area_against_minus_inf_area_and_zero_overlap_as_torchvision(
    numpy_kernel, monkeypatch
):
    # A zero-area box against an inverted box of area -inf: torchvision's 0 / -inf is -0.0
    # (an area of +inf for the zero-area box gave inf - inf = NaN); and an overlap of
    # exactly -0.0 gives 0.
    monkeypatch.setattr(boxes_module, "_NUMPY_IOU", numpy_kernel)
    cases = [
        ([[0.0, 0, 0, 1]], [[1.0, -math.inf, 0, 1]]),
        ([[0.0, 0, 1, 1]], [[0.0, -1, 1, -0.0]]),
    ]
    for first, second in cases:
        a, b = torch.tensor(first), torch.tensor(second)
        ours, theirs = box_iou(a, b), tv_box_iou(a, b)
        assert torch.equal(ours, theirs)  # (-0.0 == 0.0: the value, not the sign of zero)
    a, b = (torch.tensor(rows) for rows in cases[0])
    assert box_iou(a, b).signbit().item()  # 0 / -inf, torchvision's -0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
def test_clip_common_call_and_checked_call_agree(dtype):
    """The quick argument check (plain [N, 4] floating boxes, a (height, width) tuple of
    ints) and the checked path give torchvision's answer for every spelling of the size,
    and the cached bounds are not changed by a call."""
    boxes = (random_boxes((50,), seed=9) * 3 - 40).to(dtype)
    expected = tv_clip(boxes, (40, 60))
    for size in [(40, 60), [40, 60], torch.Size([40, 60])]:
        assert torch.equal(clip_boxes_to_image(boxes, size), expected), size
    assert torch.equal(clip_boxes_to_image(boxes, (40, 60)), expected)
    for bad in [(40,), (0, 60), (40.0, 60), (True, 60)]:
        with pytest.raises((TypeError, ValueError), match="clip_boxes_to_image: size"):
            clip_boxes_to_image(boxes, bad)


def test_box_iou_zero_union_is_zero_where_torchvision_gives_nan(device):
    points = torch.tensor([[5.0, 5, 5, 5], [1, 2, 1, 2]], device=device)  # zero area
    line = torch.tensor([[0.0, 3, 10, 3]], device=device)  # zero height
    real = torch.tensor([[0.0, 0, 10, 10]], device=device)
    boxes = torch.cat((points, line, real))
    ours = box_iou(boxes, boxes)
    theirs = tv_box_iou(boxes, boxes)
    zero_union = torch.ones(4, 4, dtype=torch.bool, device=device)
    zero_union[3, :] = zero_union[:, 3] = False  # pairs with the real box have union 100
    # The documented difference: 0/0 is 0 in detops, NaN in torchvision.
    assert torch.all(ours[zero_union] == 0)
    assert torch.all(torch.isnan(theirs[zero_union]))
    assert torch.equal(ours[~zero_union], theirs[~zero_union])
    assert ours[3, 3] == 1 and ours[3, 0] == 0  # a point inside a box has IoU 0


def test_box_iou_nan_propagates():
    boxes = torch.tensor([[0.0, 0, 2, 2], [float("nan"), 0, 2, 2]])
    out = box_iou(boxes, boxes)
    assert torch.isnan(out[1]).all() and torch.isnan(out[:, 1]).all()
    assert out[0, 0] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_box_iou_half_precision_is_computed_in_float32(dtype, device):
    b1 = random_boxes((200,), seed=5).to(device, dtype)
    b2 = random_boxes((100,), seed=6).to(device, dtype)
    actual = box_iou(b1, b2)
    assert actual.dtype == tv_box_iou(b1, b2).dtype == torch.float32
    # Exactly the float32 computation on the (already rounded) half-precision corners.
    assert torch.equal(actual, box_iou(b1.float(), b2.float()))
    # torchvision subtracts corners in half precision first: close, not equal in general.
    # Rounding to bfloat16 can collapse small boxes to zero area: NaN there, 0 here.
    theirs = tv_box_iou(b1, b2)
    defined = ~torch.isnan(theirs)
    torch.testing.assert_close(actual[defined], theirs[defined], atol=2e-2, rtol=0)
    assert torch.all(actual[~defined] == 0)


def test_box_iou_uint8_difference_pinned():
    # torchvision subtracts uint8 corners before its upcast: the negative overlap wraps.
    a = torch.tensor([[0, 0, 10, 10]], dtype=torch.uint8)
    b = torch.tensor([[20, 20, 30, 30]], dtype=torch.uint8)
    assert box_iou(a, b).item() == 0.0
    assert box_iou(a, b).item() == ref.box_iou(a.double().numpy(), b.double().numpy()).item()
    assert tv_box_iou(a, b).item() < 0


def _sized(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """XYXY boxes as ``fmt`` ("xywh" or "cxcywh"), computed in float64."""
    wh = boxes[:, 2:] - boxes[:, :2]
    corner = boxes[:, :2] if fmt == "xywh" else boxes[:, :2] + wh / 2
    return np.concatenate([corner, wh], axis=1)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(a=boxes_with_degenerate(0, 6), b=boxes_with_degenerate(0, 6))
def test_box_iou_other_formats_equal_the_reference_and_torchvision(fmt, dtype, a, b):
    ta, tb = (torch.from_numpy(_sized(x, fmt)).to(dtype) for x in (a, b))
    ours = box_iou(ta, tb, fmt=fmt)
    expected = ref.box_iou(ta.double().numpy(), tb.double().numpy(), fmt=fmt)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=tolerance, atol=tolerance)
    theirs = tv_box_iou(ta, tb, fmt=fmt)  # the same arithmetic; NaN for a zero union
    defined = ~torch.isnan(theirs)
    assert torch.equal(ours[defined], theirs[defined])
    assert torch.all(ours[~defined] == 0)


def test_box_iou_other_formats_broadcast_and_differentiate():
    a = torch.tensor([[[10.0, 10, 4, 6]], [[0, 0, 2, 2]]], dtype=torch.float64)  # [2, 1, 4]
    b = torch.tensor([[11.0, 10, 4, 6], [10, 10, 0, 0]], dtype=torch.float64)  # [2, 4]
    iou = box_iou(a, b, fmt="cxcywh")
    assert iou.shape == (2, 1, 2)
    assert iou[0, 0, 0].item() == pytest.approx(18 / 30) and iou[1, 0, 1].item() == 0.0
    leaf = a.clone().requires_grad_()
    box_iou(leaf, b, fmt="xywh").sum().backward()
    assert torch.isfinite(leaf.grad).all()  # the zero-area pair adds no NaN
    assert torch.autograd.gradcheck(lambda x: box_iou(x, b[:1], fmt="xywh"), (leaf,))


@pytest.mark.parametrize(
    ("fmt", "match"),
    [
        ("cxcywhr", r"box_iou: fmt must be one of \['xyxy', 'xywh', 'cxcywh'\], got 'cxcywhr': "
         r"rotated boxes are not supported"),
        ("XYXY", r"box_iou: fmt must be one of .*, got 'XYXY'$"),
        (None, r"box_iou: fmt must be one of .*, got NoneType$"),
    ],
)  # fmt: skip
def test_box_iou_format_errors(fmt, match):
    with pytest.raises(TypeError if fmt is None else ValueError, match=match):
        box_iou(BOXES, BOXES, fmt=fmt)


def test_box_iou_takes_torchvisions_arguments():
    import inspect

    ours, theirs = inspect.signature(box_iou), inspect.signature(tv_box_iou)
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
        (p.name, p.default, p.kind) for p in theirs.parameters.values()
    ]
    assert torch.equal(box_iou(BOXES, BOXES, "xyxy"), box_iou(BOXES, BOXES))


def test_box_iou_int32_and_int16_areas_do_not_overflow():
    # int32 areas of 50000-px boxes wrap in torchvision; detops computes in int64.
    a = torch.tensor([[0, 0, 50000, 50000]], dtype=torch.int32)
    b = torch.tensor([[0, 0, 40000, 40000]], dtype=torch.int32)
    assert box_iou(a, b).item() == pytest.approx(0.64, rel=1e-7)
    assert tv_box_iou(a, b).item() < 0
    rng = np.random.default_rng(0)  # the float64 ratio of the exact integers, rounded once
    corners = rng.integers(0, 25000, (2, 200, 2))
    sides = rng.integers(1, 25000, (2, 200, 2))
    pairs = torch.from_numpy(np.concatenate([corners, corners + sides], -1)).int()
    exact = ref.box_iou(pairs[0].double().numpy(), pairs[1].double().numpy())
    assert torch.equal(box_iou(pairs[0], pairs[1]), torch.from_numpy(exact).float())
    full = torch.tensor([[-32768, -32768, 32767, 32767]], dtype=torch.int16)
    half = torch.tensor([[-32768, -32768, 0, 32767]], dtype=torch.int16)
    assert box_iou(full, half).item() == pytest.approx(32768 / 65535, rel=1e-7)


def test_box_iou_of_two_dtypes_is_computed_in_their_promotion():
    b1 = random_boxes((7,), seed=1)
    b2 = random_boxes((5,), seed=2).double()
    assert torch.equal(box_iou(b1, b2), box_iou(b1.double(), b2))
    ints = (b2 * 10).long()
    mixed = box_iou(ints, b1)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, box_iou(ints.float(), b1))
    torch.testing.assert_close(mixed, tv_box_iou(ints, b1))


def test_box_iou_float16_corner_difference_pinned():
    # 2047 - 0.5 = 2046.5 is not a float16 number (spacing 1 above 1024): torchvision's
    # width becomes 2046 (ties to even), detops keeps 2046.5 by upcasting first.
    a = torch.tensor([[0.5, 0.0, 2047.0, 1.0]], dtype=torch.float16)
    b = torch.tensor([[0.0, 0.0, 2048.0, 1.0]], dtype=torch.float16)
    # By hand: inter = 2046.5 * 1, union = 2046.5 + 2048 - 2046.5 -> 2046.5 / 2048.
    assert box_iou(a, b).item() == pytest.approx(2046.5 / 2048, abs=0, rel=1e-7)
    # torchvision: areas are upcast (exact), inter = 2046: 2046 / (2046.5 + 2048 - 2046).
    assert tv_box_iou(a, b).item() == pytest.approx(2046 / 2048.5, abs=0, rel=1e-7)


@given(boxes_with_degenerate(0, 6), boxes_with_degenerate(0, 6))
def test_box_iou_laws(a, b):
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    iou = box_iou(ta, tb)
    assert torch.equal(iou, box_iou(tb, ta).T)  # symmetric
    assert torch.all((iou >= 0) & (iou <= 1 + 1e-12)), iou
    area = (ta[:, 2] - ta[:, 0]) * (ta[:, 3] - ta[:, 1])
    self_iou = torch.diagonal(box_iou(ta, ta))
    assert torch.equal(self_iou, (area > 0).to(self_iou.dtype))  # 1, or 0 for zero area


def test_box_iou_does_not_mutate_inputs():
    b1, b2 = random_boxes((10,), seed=7), random_boxes((12,), seed=8)
    c1, c2 = b1.clone(), b2.clone()
    box_iou(b1, b2)
    assert torch.equal(b1, c1) and torch.equal(b2, c2)


BOXES = torch.zeros(3, 4)
BOX_IOU_ERRORS = [
    (
        (BOXES[:, :3], BOXES),
        ValueError,
        r"box_iou: boxes1 must have shape \[\.\.\., N, 4\], got \[3, 3\]",
    ),
    (
        (BOXES, torch.zeros(4)),
        ValueError,
        r"box_iou: boxes2 must have shape \[\.\.\., N, 4\], got \[4\]",
    ),
    ((BOXES.bool(), BOXES.bool()), TypeError, r"boxes1 must have a floating or integer dtype"),
    ((BOXES.tolist(), BOXES), TypeError, r"box_iou: boxes1 must be a torch.Tensor, got list"),
    ((torch.zeros(2, 3, 4), torch.zeros(3, 3, 4)), ValueError, r"leading \(batch\) dims"),
    ((BOXES, BOXES.to("meta")), ValueError, r"one device, got boxes1 on cpu, boxes2 on meta"),
]


@pytest.mark.parametrize(("args", "error", "match"), BOX_IOU_ERRORS)
def test_box_iou_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        box_iou(*args)


# -------------------------------------------------------------------- clip_boxes_to_image


@pytest.mark.parametrize("n", [0, 1, 10, 1000])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
)
def test_clip_equals_torchvision(n, dtype, device):
    boxes = (random_boxes((n,), seed=n, extent=900.0) - 200).to(device, dtype)
    for size in [(301, 517), (480, 640), (1, 1), torch.Size([224, 224])]:
        actual = clip_boxes_to_image(boxes, size)
        assert actual.dtype == dtype and actual.device == boxes.device
        assert torch.equal(actual, tv_clip(boxes, size)), size


@pytest.mark.parametrize("shape", [(16383, 4), (16384, 4), (20_003, 4), (3, 7001, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.uint8])
def test_clip_of_many_boxes_equals_torchvision(shape, dtype, device):
    """From 16384 boxes the clamp runs over rows of 64 boxes, the last few boxes on their
    own: below, at and above the route's bound, with and without a tail, batched, and
    with NaN and infinite coordinates where the dtype has them."""
    boxes = random_boxes(shape[:-1], seed=sum(shape), extent=900.0) - 200
    if dtype.is_floating_point:
        boxes.view(-1)[[0, 5, -1, -6]] = torch.tensor([math.nan, math.inf, -math.inf, math.nan])
    else:
        boxes = boxes.clamp(0, 255)
    boxes = boxes.to(device, dtype)
    for size in [(301, 517), (1, 1)]:
        actual = clip_boxes_to_image(boxes, size)
        assert actual.shape == boxes.shape and actual.dtype == dtype
        # torchvision's clamp refuses a uint8 bound above 255: clip the same values as int32.
        wide = boxes.int() if dtype == torch.uint8 else boxes
        expected = tv_clip(wide, size).to(dtype)
        assert torch.equal(actual.nan_to_num(-7.0), expected.nan_to_num(-7.0)), size


@pytest.mark.parametrize("shape", [(6,), (2, 3), (20_000,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_gradient_is_torchvisions_at_bounds_and_nan(shape, dtype):
    """Values on a bound and NaN: a clamp by bound tensors gave 0.5 and 1 where torchvision
    gives 0 (found by the new-user trial); inside 1, outside 0, as torchvision."""
    pattern = torch.tensor(
        [[0.0, 5.0, 320.0, math.nan], [-3.0, 200.0, 400.0, 199.5], [0.0, 0.0, 320.0, 200.0]]
    )
    rows = pattern.repeat(math.prod(shape) // 3 + 1, 1)[: math.prod(shape)]
    boxes = rows.reshape(*shape, 4).to(dtype).requires_grad_()
    clip_boxes_to_image(boxes, (200, 320)).sum().backward()
    expected = boxes.detach().clone().requires_grad_()
    tv_clip(expected, (200, 320)).sum().backward()
    assert torch.equal(boxes.grad, expected.grad)
    assert boxes.grad.reshape(-1, 4)[0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_clip_gradient_of_gt_rows_passes_class_and_padding_through():
    rows = torch.tensor(
        [[0.0, 5.0, 320.0, 250.0, 3.0], [-1.0, -1.0, -1.0, -1.0, -1.0], [10.0, -2, 20, 30, 1]],
        requires_grad=True,
    )
    clipped = clip_boxes_to_image(rows, (200, 320))
    real = rows.detach()[[0, 2]]
    assert torch.equal(clipped.detach()[[0, 2], :4], tv_clip(real[:, :4], (200, 320)))
    assert torch.equal(clipped.detach()[:, 4], rows.detach()[:, 4])  # classes unchanged
    assert torch.equal(clipped.detach()[1], rows.detach()[1])  # padding untouched
    clipped.sum().backward()
    coordinates = rows.detach()[[0, 2], :4].clone().requires_grad_()
    tv_clip(coordinates, (200, 320)).sum().backward()
    assert torch.equal(rows.grad[[0, 2], :4], coordinates.grad)
    assert rows.grad[:, 4].tolist() == [1.0, 1.0, 1.0] and rows.grad[1].tolist() == [1.0] * 5


def test_clip_of_many_boxes_keeps_autograd_and_odd_layouts():
    """Boxes that need a gradient, or are not contiguous, take the one clamp: the
    gradient is torchvision's, and a transposed view clips as its contiguous copy."""
    boxes = (random_boxes((20_000,), seed=4, extent=900.0) - 200).requires_grad_()
    clip_boxes_to_image(boxes, (301, 517)).sum().backward()
    expected = boxes.detach().clone().requires_grad_()
    tv_clip(expected, (301, 517)).sum().backward()
    assert torch.equal(boxes.grad, expected.grad)
    columns = boxes.detach().t().contiguous().t()
    assert not columns.is_contiguous()
    clipped = clip_boxes_to_image(columns, (301, 517))
    assert torch.equal(clipped, tv_clip(columns.contiguous(), (301, 517)))


def test_clip_batched_and_integer_valued_equal_torchvision():
    boxes = _integer_valued_boxes(1000, seed=9).float().reshape(10, 100, 4) * 5
    assert torch.equal(clip_boxes_to_image(boxes, (100, 150)), tv_clip(boxes, (100, 150)))


def test_clip_gt_rows_keep_class_and_padding():
    gt = torch.tensor(
        [
            [-5.0, 10, 700, 40, 3],  # clipped in x
            [-1.0, -1, -1, -1, -1],  # padding: untouched
            [10.0, -3, 20, 900, 0],  # clipped in y
            [-7.0, -7, -2, -2, -1],  # class -1 marks padding whatever the corners
        ]
    )
    before = gt.clone()
    out = clip_boxes_to_image(gt, (480, 640))
    expected = torch.tensor(
        [[0.0, 10, 640, 40, 3], [-1, -1, -1, -1, -1], [10, 0, 20, 480, 0], [-7, -7, -2, -2, -1]]
    )
    assert torch.equal(out, expected)
    assert torch.equal(gt, before)  # not mutated
    # The coordinates of real rows are what torchvision gives for the [..., 4] part.
    assert torch.equal(out[[0, 2], :4], tv_clip(gt[[0, 2], :4], (480, 640)))


def test_clip_uint8_boxes_with_a_large_image():
    # torchvision raises here (640 does not fit uint8); the clamp is a no-op above 255.
    boxes = torch.tensor([[0, 10, 250, 255]], dtype=torch.uint8)
    assert torch.equal(clip_boxes_to_image(boxes, (480, 640)), boxes)
    assert torch.equal(clip_boxes_to_image(boxes, (100, 200)), tv_clip(boxes, (100, 200)))


def test_clip_takes_the_sizes_torchvision_takes():
    boxes = _integer_valued_boxes(50, seed=3).float() * 3
    expected = tv_clip(boxes, (100, 200))
    for size in (
        torch.tensor([100, 200]),
        np.array([100, 200]),
        (np.int64(100), np.int32(200)),
        (torch.tensor(100), torch.tensor(200)),
        [100, 200],
        torch.Size([100, 200]),
    ):
        assert torch.equal(clip_boxes_to_image(boxes, size), expected), size


CLIP_ERRORS = [
    (
        (BOXES, (0, 10)),
        ValueError,
        r"clip_boxes_to_image: size must be a positive \(height, width\) pair, got \(0, 10\)",
    ),
    ((BOXES, (-3, 10)), ValueError, r"size must be a positive"),
    ((BOXES, (10,)), TypeError, r"size must be a \(height, width\) pair of ints, got \(10,\)"),
    ((BOXES, (10.0, 5)), TypeError, r"pair of ints"),
    ((BOXES, 224), TypeError, r"pair of ints, got 224"),
    ((BOXES, torch.tensor([10.0, 5.0])), TypeError, r"pair of ints, got a torch.float32 tensor"),
    ((BOXES, torch.tensor([10, 5, 1])), TypeError, r"pair of ints, got a torch.int64 tensor"),
    ((BOXES, (torch.tensor(True), 5)), TypeError, r"pair of ints"),
    ((BOXES, np.array([0, 5])), ValueError, r"must be a positive \(height, width\) pair"),
    (
        (torch.zeros(3, 6), (10, 10)),
        ValueError,
        r"boxes must have shape \[\.\.\., 4\] or \[\.\.\., 5\], got \[3, 6\]",
    ),
    ((BOXES.bool(), (10, 10)), TypeError, r"floating or integer dtype, got torch.bool"),
    ((np.zeros((3, 4)), (10, 10)), TypeError, r"boxes must be a torch.Tensor, got ndarray"),
]


@pytest.mark.parametrize(("args", "error", "match"), CLIP_ERRORS)
def test_clip_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        clip_boxes_to_image(*args)


# --------------------------------------------------- resize_and_center_crop_boxes (+ inverse)


def test_geometry_matches_reference_on_a_grid_of_sizes():
    for height in range(1, 90, 7):
        for width in range(1, 700, 13):
            for image_size in (1, 32, 224, 225):
                got = resized_and_crop_geometry((height, width), image_size)
                assert got == ref.resized_and_crop_geometry((height, width), image_size)


def test_geometry_hand_values():
    # 333x500 at 224: short side 333 -> 224, long 224*500/333 = 336.34 -> 336; left (336-224)/2.
    assert resized_and_crop_geometry((333, 500), 224) == ((224, 336), (0, 56))
    # 224x227: resized width 227, offset round(1.5) = 2 (the course code floors it to 1).
    assert resized_and_crop_geometry((224, 227), 224) == ((224, 227), (0, 2))
    # 229x224: offset round(2.5) = 2, Python rounds halves to even.
    assert resized_and_crop_geometry((229, 224), 224) == ((229, 224), (2, 0))


def test_resize_hand_values():
    gt = torch.tensor(
        [
            [150.0, 100, 300, 200, 7],  # inside
            [0.0, 0, 50, 333, 3],  # left of the crop (x < 56 / 0.672 = 83.3): dropped
            [-1.0, -1, -1, -1, -1],  # padding
            [400.0, 10, 500, 60, 1],  # cut by the right edge of the crop
            [83.0, 50, 90, 80, 2],  # x1' = 83*0.672 - 56 = -0.224 -> 0
        ]
    )
    out = resize_and_center_crop_boxes(gt, (333, 500), 224)
    sx, sy = 336 / 500, 224 / 333  # 0.672 and 0.6727
    expected = torch.tensor(
        [
            [150 * sx - 56, 100 * sy, 300 * sx - 56, 200 * sy, 7],
            [-1, -1, -1, -1, -1],
            [-1, -1, -1, -1, -1],
            [400 * sx - 56, 10 * sy, 224, 60 * sy, 1],
            [0, 50 * sy, 90 * sx - 56, 80 * sy, 2],
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_resize_zero_area_after_clamp_is_dropped():
    # 448x600 at 224: resized 224x300, scale 0.5 exactly, crop from column 38, so the crop's
    # left edge is x = 76 and its bottom edge y = 448 in original pixels.
    gt = torch.tensor(
        [
            [10.0, 10, 76, 20, 5],  # ends on the crop's left edge: x1' = x2' = 0
            [100.0, 10, 100, 20, 5],  # zero width already
            [100.0, 448, 120, 460, 5],  # below the crop: y1' = y2' = 224
            [76.0, 10, 78, 20, 5],  # one pixel wide at the edge: kept
        ]
    )
    out = resize_and_center_crop_boxes(gt, (448, 600), 224)
    assert torch.all(out[:3] == -1)
    assert torch.equal(out[3], torch.tensor([0.0, 5, 1, 10, 5]))


@pytest.mark.parametrize("shape", [(0, 5), (3, 0, 5)])
def test_resize_of_no_rows_is_no_rows(shape, device):
    # (the registry's strategy reaches N = 0 only now and then: pinned here)
    gt = torch.zeros(shape, device=device)
    out = resize_and_center_crop_boxes(gt, (375, 500), 224)
    assert out.shape == shape and out.dtype == gt.dtype and out.device == gt.device
    expected = ref.resize_and_center_crop_boxes(np.zeros(shape), (375, 500), 224)
    assert expected.shape == shape


def test_resize_batched_equals_per_image_and_keeps_dtype_device(device):
    gt = torch.cat((random_boxes((3, 8), seed=10), torch.randint(0, 20, (3, 8, 1))), dim=-1)
    gt[1, 2:5] = -1
    for dtype in (torch.float32, torch.float64, torch.float16):
        batch = gt.to(device, dtype)
        before = batch.clone()
        out = resize_and_center_crop_boxes(batch, (375, 500), 224)
        assert out.dtype == dtype and out.device == batch.device and out.shape == batch.shape
        for i in range(3):
            assert torch.equal(out[i], resize_and_center_crop_boxes(batch[i], (375, 500), 224))
        assert torch.equal(batch, before)
        assert torch.all(out[1, 2:5] == -1)


def test_resize_differs_from_the_course_code():
    # The course dataset: float resized size and a floored crop offset.
    def course(x, w, h, image_size):
        new_w = w * image_size / h if w > h else image_size
        return x * new_w / w - (new_w - image_size) // 2

    # 224x227: torchvision crops from column 2, the course code from column 1.
    ours = resize_and_center_crop_boxes(torch.tensor([[100.0, 0, 120, 10, 0]]), (224, 227), 224)
    assert ours[0, 0] == 98 and course(100.0, 227, 224, 224) == 99
    # 333x500: resized width 336 (torchvision) vs 336.34 (course), 0.27 px apart at x=400.
    ours = resize_and_center_crop_boxes(torch.tensor([[400.0, 0, 420, 10, 0]]), (333, 500), 224)
    assert ours[0, 0].item() == pytest.approx(400 * 0.672 - 56, abs=1e-4)
    assert abs(course(400.0, 500, 333, 224) - ours[0, 0].item()) > 0.25


@given(
    st.integers(1, 700),
    st.integers(1, 700),
    st.sampled_from([1, 32, 224, 225]),
    boxes_with_degenerate(1, 6),
)
def test_inverse_round_trips_boxes_inside_the_crop(height, width, image_size, unit):
    # Place boxes inside the crop region in crop pixels, map back, then forward again.
    crop = torch.from_numpy(unit).clamp(0, 1e9) % image_size
    crop = torch.cat(
        (torch.minimum(crop[:, :2], crop[:, 2:]), torch.maximum(crop[:, :2], crop[:, 2:])), -1
    )
    rows = torch.cat((crop, torch.full((len(crop), 1), 4.0, dtype=crop.dtype)), dim=-1)
    original = center_crop_boxes_to_original(rows, (height, width), image_size)
    assert torch.all(original[:, [0, 2]] <= width) and torch.all(original[:, [1, 3]] <= height)
    back = resize_and_center_crop_boxes(original, (height, width), image_size)
    keep = (crop[:, 2] > crop[:, 0]) & (crop[:, 3] > crop[:, 1])
    torch.testing.assert_close(back[keep], rows[keep], atol=1e-9, rtol=1e-12)
    assert torch.all(back[~keep] == -1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inverse_derivative_is_zero_at_the_image_bounds(dtype):
    # As clip_boxes_to_image (torchvision's convention): d original / d crop is the scale
    # strictly inside the image, 0 at a bound and beyond. A box edge mapped exactly onto
    # the width got half the scale (torch.minimum splits a tie).
    height, width, size = 480, 360, 224
    (new_h, new_w), (top, left) = ref.resized_and_crop_geometry((height, width), size)
    assert (left, width / new_w * (size + left)) == (0, width)  # x' = 224 maps onto W
    rows = torch.tensor([[0.0, 20.0, 224.0, 100.0], [5.0, 10.0, 230.0, 50.0]], dtype=dtype)
    leaf = rows.clone().requires_grad_()
    (grad,) = torch.autograd.grad(
        center_crop_boxes_to_original(leaf, (height, width), size).sum(), leaf
    )
    sx, sy = width / new_w, height / new_h
    expected = [[0.0, sy, 0.0, sy], [sx, sy, 0.0, sy]]  # x1 = 0 and x2 = W are bounds
    rtol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(grad.double(), expected, rtol=rtol, atol=0)


def test_inverse_keeps_rows_class_padding_and_clamps_to_the_image():
    rows = torch.tensor([[0.0, 0, 224, 224, 3], [-1, -1, -1, -1, -1], [-10, 5, 300, 20, 1]])
    out = center_crop_boxes_to_original(rows, (333, 500), 224)
    # The whole crop maps to columns 56/0.672 = 83.33 .. 280/0.672 = 416.67, all rows.
    torch.testing.assert_close(out[0], torch.tensor([56 / 0.672, 0, 280 / 0.672, 333, 3]))
    assert torch.equal(out[1], rows[1])
    torch.testing.assert_close(
        out[2], torch.tensor([46 / 0.672, 5 * 333 / 224, 500, 20 * 333 / 224, 1])
    )
    assert torch.equal(center_crop_boxes_to_original(rows[:, :4], (333, 500), 224)[0], out[0, :4])


RESIZE_ERRORS = [
    (
        (torch.zeros(3, 4), (10, 10), 8),
        ValueError,
        r"resize_and_center_crop_boxes: gt_boxes must have shape \[\.\.\., N, 5\], got \[3, 4\]",
    ),
    (
        (torch.zeros(5), (10, 10), 8),
        ValueError,
        r"gt_boxes must have shape \[\.\.\., N, 5\], got \[5\]",
    ),
    (
        (torch.zeros(3, 5, dtype=torch.int64), (10, 10), 8),
        TypeError,
        r"gt_boxes must have a floating dtype",
    ),
    (
        (torch.zeros(3, 5), (0, 10), 8),
        ValueError,
        r"original_size must be a positive \(height, width\) pair",
    ),
    (
        (torch.zeros(3, 5), (10,), 8),
        TypeError,
        r"original_size must be a \(height, width\) pair of ints",
    ),
    ((torch.zeros(3, 5), (10, 10), 0), ValueError, r": size must be a positive int, got 0"),
    ((torch.zeros(3, 5), (10, 10), 2.5), TypeError, r": size must be a positive int, got float"),
    (
        (torch.zeros(3, 5), (10, 10), True),
        TypeError,
        r": size must be a positive int, got bool",
    ),
    (
        (torch.zeros(3, 5), (10, 10), torch.full((50,), 8)),
        TypeError,
        r": size must be a positive int, got Tensor$",
    ),
]


@pytest.mark.parametrize(("args", "error", "match"), RESIZE_ERRORS)
def test_resize_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        resize_and_center_crop_boxes(*args)


INVERSE_ERRORS = [
    (
        (torch.zeros(3, 3), (10, 10), 8),
        ValueError,
        r"center_crop_boxes_to_original: boxes must have shape \[\.\.\., 4\] or \[\.\.\., 5\]",
    ),
    (
        (torch.zeros(3, 4, dtype=torch.int32), (10, 10), 8),
        TypeError,
        r"boxes must have a floating dtype",
    ),
    ((torch.zeros(3, 4), (10, -2), 8), ValueError, r"original_size must be a positive"),
    ((torch.zeros(3, 4), (10, 10), -1), ValueError, r": size must be a positive int, got -1"),
]


@pytest.mark.parametrize(("args", "error", "match"), INVERSE_ERRORS)
def test_inverse_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        center_crop_boxes_to_original(*args)


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (resize_and_center_crop_boxes, (torch.tensor([[150.0, 100, 300, 200, 7]]), (333, 500))),
        (center_crop_boxes_to_original, (torch.tensor([[10.0, 20, 30, 40]]), (333, 500))),
        (resized_and_crop_geometry, ((333, 500),)),
    ],
)
def test_image_size_keyword_is_deprecated_for_size(fn, args):
    expected = fn(*args, 224)
    assert _equal(fn(*args, size=224), expected)
    with pytest.warns(DeprecationWarning, match=rf"{fn.__name__}: .*image_size .*pass size"):
        old = fn(*args, image_size=224)
    assert _equal(old, expected)
    with pytest.raises(TypeError, match=r"got size and its deprecated name image_size"):
        fn(*args, size=224, image_size=224)


def _equal(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_class_minus_one_is_the_only_padding_marker():
    # GT rows (x1, y1, x2, y2, class) are padding iff class == -1, whatever the corners;
    # corners of -1 with a real class make a real (here empty) box.
    rows = torch.tensor([[150.0, 100, 300, 200, -1], [-1, -1, -1, -1, 4], [150, 100, 300, 200, 2]])
    resized = resize_and_center_crop_boxes(rows, (333, 500), 224)
    assert torch.all(resized[0] == -1)  # padding, though its box lies inside the crop
    assert torch.all(resized[1] == -1)  # real, dropped: empty after the clamp
    assert resized[2, 4] == 2 and torch.all(resized[2, :4] > 0)
    back = center_crop_boxes_to_original(rows, (333, 500), 224)
    assert torch.equal(back[0], rows[0])  # padding: untouched
    assert back[1, 4] == 4  # real: mapped, x = (-1 + 56) * 500 / 336, y clamped to 0
    torch.testing.assert_close(back[1, :4], torch.tensor([55 * 500 / 336, 0, 55 * 500 / 336, 0]))
    clipped = clip_boxes_to_image(rows, (100, 200))
    assert torch.equal(clipped[0], rows[0])  # padding: untouched, though it sticks out
    assert torch.equal(clipped[1], torch.tensor([0.0, 0, 0, 0, 4]))  # real: clipped
    padded = pad_gt_boxes([rows[2:], rows[:0]], 2)
    assert torch.all(padded[0, 1:, 4] == -1) and torch.all(padded[1, :, 4] == -1)


# --------------------------------------------------------------------------- pad_gt_boxes


def test_pad_hand_values():
    a = torch.tensor([[1.0, 2, 3, 4, 5]])
    b = torch.zeros(0, 5)
    c = torch.tensor([[6.0, 7, 8, 9, 0], [10, 11, 12, 13, 1]])
    out = pad_gt_boxes([a, b, c])
    expected = torch.full((3, 2, 5), -1.0)
    expected[0, 0] = a[0]
    expected[2] = c
    assert torch.equal(out, expected)
    assert torch.equal(pad_gt_boxes([a, b, c], 4)[:, :2], expected)
    assert torch.all(pad_gt_boxes([a, b, c], 4)[:, 2:] == -1)


def test_pad_too_many_boxes_names_image_and_count():
    boxes = [torch.zeros(3, 5), torch.zeros(41, 5)]
    with pytest.raises(
        ValueError, match=r"pad_gt_boxes: image 1 has 41 boxes, more than max_boxes=40"
    ):
        pad_gt_boxes(boxes, 40)


def test_pad_empty_inputs():
    assert pad_gt_boxes([]).shape == (0, 0, 5)
    assert pad_gt_boxes([], 40).shape == (0, 40, 5)
    assert pad_gt_boxes([torch.zeros(0, 5), torch.zeros(0, 5)]).shape == (2, 0, 5)
    out = pad_gt_boxes([torch.zeros(0, 5)], 3)
    assert out.shape == (1, 3, 5) and torch.all(out == -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int64])
def test_pad_follows_dtype_and_device(dtype, device):
    boxes = [
        torch.ones(2, 5, dtype=dtype, device=device),
        torch.ones(1, 5, dtype=dtype, device=device),
    ]
    out = pad_gt_boxes(boxes, 3)
    assert out.dtype == dtype and out.device == boxes[0].device
    # image 0: two real rows and one padding row; image 1: one real row and two padding rows
    expected = torch.tensor([[1, 1, -1], [1, -1, -1]], dtype=dtype)[..., None].expand(2, 3, 5)
    assert torch.equal(out.cpu(), expected)


PAD_ERRORS = [
    (
        (torch.zeros(2, 3, 5),),
        TypeError,
        r"pad_gt_boxes: boxes_list must be a list of Tensor\[n_i, 5\], got Tensor",
    ),
    (([torch.zeros(3, 4)],), ValueError, r"boxes_list\[0\] must have shape \[n, 5\], got \[3, 4\]"),
    (
        ([torch.zeros(1, 5), np.zeros((1, 5))],),
        TypeError,
        r"boxes_list\[1\] must be a torch.Tensor, got ndarray",
    ),
    (
        ([torch.zeros(1, 5), torch.zeros(1, 5, dtype=torch.float64)],),
        TypeError,
        r"one dtype, got torch.float32 at index 0 and torch.float64 at index 1",
    ),
    (
        ([torch.zeros(1, 5), torch.zeros(1, 5, device="meta")],),
        ValueError,
        r"one device, got cpu at index 0 and meta at index 1",
    ),
    (([torch.zeros(1, 5)], -1), ValueError, r"max_boxes must be None or an int >= 0, got -1"),
    (([torch.zeros(1, 5)], 2.0), TypeError, r"max_boxes must be None or an int >= 0, got float"),
]


@pytest.mark.parametrize(("args", "error", "match"), PAD_ERRORS)
def test_pad_error_inputs(args, error, match):
    with pytest.raises(error, match=match):
        pad_gt_boxes(*args)


def test_every_op_follows_a_non_cpu_device():
    # The meta device runs shapes only; it takes the non-CPU paths (box_iou's single block).
    meta = {"device": "meta"}
    assert box_iou(torch.zeros(3, 7, 4, **meta), torch.zeros(5, 4, **meta)).shape == (3, 7, 5)
    assert box_iou(torch.zeros(3, 7, 4, **meta), torch.zeros(5, 4, **meta)).is_meta
    assert clip_boxes_to_image(torch.zeros(3, 5, **meta), (4, 4)).is_meta
    assert resize_and_center_crop_boxes(torch.zeros(2, 3, 5, **meta), (4, 4), 3).is_meta
    assert center_crop_boxes_to_original(torch.zeros(2, 3, 4, **meta), (4, 4), 3).is_meta
    assert pad_gt_boxes([torch.zeros(2, 5, **meta)], 3).shape == (1, 3, 5)
