import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference.deltas as ref
from detops import (
    fcos_apply_deltas_to_locations,
    fcos_get_deltas_from_locations,
    fcos_make_centerness_targets,
)
from detops.testing.compare import assert_trees_close
from detops.testing.families.targets import DECODE_TOLERANCES, RELATIVE_TOLERANCES
from detops.testing.strategies import floats32, ltrb_deltas

# The known values: three boxes, one location each, stride 8.
BOXES = [[10, 15, 100, 115], [30, 20, 40, 30], [120, 100, 200, 200]]
LOCATIONS = [[30, 40], [32, 29], [125, 150]]
# By hand, (l, t, r, b) = (xc - x1, yc - y1, x2 - xc, y2 - yc) / 8:
#   (30-10, 40-15, 100-30, 115-40) / 8 = (20, 25, 70, 75) / 8 = (2.5, 3.125, 8.75, 9.375)
#   (32-30, 29-20, 40-32, 30-29) / 8 = (2, 9, 8, 1) / 8 = (0.25, 1.125, 1, 0.125)
#   (125-120, 150-100, 200-125, 200-150) / 8 = (5, 50, 75, 50) / 8 = (0.625, 6.25, 9.375, 6.25)
DELTAS = [[2.5, 3.125, 8.75, 9.375], [0.25, 1.125, 1.0, 0.125], [0.625, 6.25, 9.375, 6.25]]


def test_known_deltas_round_trip_exactly(device):
    for dtype in (torch.float32, torch.float64):
        boxes = torch.tensor(BOXES, dtype=dtype, device=device)
        locations = torch.tensor(LOCATIONS, dtype=dtype, device=device)
        deltas = fcos_get_deltas_from_locations(locations, boxes, 8)
        assert deltas.tolist() == DELTAS
        assert torch.equal(fcos_apply_deltas_to_locations(deltas, locations, 8), boxes)


def test_known_centerness_with_background_row(device):
    # Row 1: sqrt(min(2.5, 8.75) * min(3.125, 9.375) / (8.75 * 9.375))
    #      = sqrt(7.8125 / 82.03125) = sqrt(2 / 21) = 0.3086066999...
    # Row 2: sqrt(min(0.25, 1) * min(1.125, 0.125) / (1 * 1.125)) = sqrt(1 / 36) = 1 / 6.
    # Row 3 is background: its GT row is all -1, so its deltas and centerness are -1.
    boxes = torch.tensor(BOXES[:2] + [[-1, -1, -1, -1]], dtype=torch.float64, device=device)
    locations = torch.tensor(LOCATIONS, dtype=torch.float64, device=device)
    deltas = fcos_get_deltas_from_locations(locations, boxes, 8)
    assert deltas[2].tolist() == [-1, -1, -1, -1]
    centerness = fcos_make_centerness_targets(deltas).cpu().numpy()
    expected = np.array([0.30860671401, 0.1666666716, -1.0])  # from the issue
    np.testing.assert_allclose(centerness, expected, rtol=1e-7, atol=0)
    np.testing.assert_allclose(centerness[:2], [np.sqrt(2 / 21), 1 / 6], rtol=1e-15)


def test_background_rows_follow_the_padding_rule(device):
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        gt = torch.tensor(
            [[-1, -1, -1, -1, 3], [-1, -1, 7, 9, 2], [-1, -1, -1, -1, -1], [1, 1, 9, 9, -1]],
            dtype=dtype,
            device=device,
        )
        locations = torch.tensor([[4, 4], [3, 5], [4, 4], [5, 3]], dtype=dtype, device=device)
        deltas = fcos_get_deltas_from_locations(locations, gt, 2)
        # With a class column the class is the only marker: rows 2 and 3 (class -1) are
        # background, whatever their coordinates; row 0 is a real (inverted) box of class 3:
        # (4+1, 4+1, -1-4, -1-4) / 2; row 1 has two -1 coordinates and is a real box.
        assert deltas.tolist() == [[2.5, 2.5, -2.5, -2.5], [2, 3, 2, 2], [-1] * 4, [-1] * 4]
        assert deltas.dtype == dtype
        # Without a class column, the rows of four -1 coordinates are background.
        deltas = fcos_get_deltas_from_locations(locations, gt[:, :4], 2)
        assert deltas.tolist() == [[-1] * 4, [2, 3, 2, 2], [-1] * 4, [2, 1, 2, 3]]
        assert deltas.dtype == dtype


def test_apply_clamps_negative_deltas_so_background_decodes_to_a_point(device):
    deltas = torch.tensor([[-1.0, -1, -1, -1], [-0.5, 2, 1, -3], [1, 2, 3, 4]], device=device)
    locations = torch.tensor([[12.0, 20], [8, 8], [4, 4]], device=device)
    boxes = fcos_apply_deltas_to_locations(deltas, locations, 8)
    assert boxes.tolist() == [[12, 20, 12, 20], [8, -8, 16, 8], [-4, -12, 28, 36]]


def test_centerness_zero_denominator_and_negatives(device):
    deltas = torch.tensor(
        [[0, 5, 0, 3], [0, 0, 0, 0], [2, 0, 2, 4], [4, 4, 4, 4], [1, 2, -0.5, 3], [0, 0, 0, -1]],
        dtype=torch.float32,
        device=device,
    )
    centerness = fcos_make_centerness_targets(deltas)
    # max(l, r) = 0 -> 0; all 0 -> 0; min(t, b) = 0 -> 0; a square centre -> 1;
    # any negative delta -> -1.
    assert centerness.tolist() == [0, 0, 0, 1, -1, -1]
    assert not centerness.isnan().any()


def test_stride_per_location_equals_per_level_calls(device):
    gt = torch.tensor([[[0.0, 0, 50, 60, 1]] * 5, [[10, 4, 20, 40, 2]] * 5], device=device)
    locations = torch.tensor([[4.0, 4], [12, 4], [8, 8], [24, 8], [16, 16]], device=device)
    stride = torch.tensor([8, 8, 16, 16, 32], device=device)
    deltas = fcos_get_deltas_from_locations(locations, gt, stride)
    pieces = [(slice(0, 2), 8), (slice(2, 4), 16), (slice(4, 5), 32)]
    for part, s in pieces:
        expected = fcos_get_deltas_from_locations(locations[part], gt[:, part], s)
        assert torch.equal(deltas[:, part], expected)
        boxes = fcos_apply_deltas_to_locations(deltas[:, part], locations[part], s)
        assert torch.equal(
            fcos_apply_deltas_to_locations(deltas, locations, stride)[:, part], boxes
        )


def test_dtype_promotion_batched_locations_and_no_mutation(device):
    gt = torch.tensor([[[0, 0, 50, 60]] * 3], dtype=torch.float32, device=device)
    locations = torch.tensor([[[4, 4], [12, 4], [8, 8]]], dtype=torch.float64, device=device)
    before = gt.clone(), locations.clone()
    deltas = fcos_get_deltas_from_locations(locations, gt, 8)
    assert deltas.dtype == torch.float64 and deltas.shape == (1, 3, 4)
    assert torch.equal(gt, before[0]) and torch.equal(locations, before[1])
    deltas_before = deltas.clone()
    boxes = fcos_apply_deltas_to_locations(deltas, locations, 8)
    assert torch.equal(deltas, deltas_before)
    assert boxes.dtype == torch.float64
    centerness = fcos_make_centerness_targets(deltas.float())
    assert centerness.dtype == torch.float32 and centerness.shape == (1, 3)
    assert torch.equal(deltas, deltas_before)


def test_non_contiguous_and_float64_inputs(device):
    gt = torch.tensor([[0, 0, 50, 60, 1], [-1, -1, -1, -1, -1], [3, 2, 9, 8, 0]] * 2, device=device)
    locations = torch.tensor([[4, 4], [12, 4], [8, 6]] * 2, device=device)
    strided_gt = gt.t().contiguous().t()[::2]  # columns apart in memory, every other row
    strided_locations = locations.t().contiguous().t()[::2]
    assert not strided_gt.is_contiguous() and not strided_locations.is_contiguous()
    for dtype in (torch.float32, torch.float64):
        out = fcos_get_deltas_from_locations(strided_locations.to(dtype), strided_gt.to(dtype), 4)
        expected = ref.fcos_get_deltas_from_locations(
            strided_locations.cpu().numpy(), strided_gt.cpu().numpy(), 4
        )
        np.testing.assert_array_equal(out.cpu().numpy(), expected)
        strided_deltas = torch.stack((out, out), dim=-1).flatten(-2)[..., ::2]
        assert not strided_deltas.is_contiguous()
        assert_trees_close(
            fcos_make_centerness_targets(strided_deltas),
            ref.fcos_make_centerness_targets(strided_deltas.cpu().numpy()),
            RELATIVE_TOLERANCES[dtype],
        )


# ------------------------------------------------------------------------- properties


@st.composite
def boxes_around_locations(draw):
    """Locations with a box each that contains them strictly (integer-valued), a stride."""
    count = draw(st.integers(1, 20))
    rows, points = [], []
    for _ in range(count):
        x, y = draw(st.integers(-20, 300)), draw(st.integers(-20, 300))
        left, top, right, bottom = (draw(st.integers(1, 200)) for _ in range(4))
        points.append((x, y))
        rows.append((x - left, y - top, x + right, y + bottom))
    stride = draw(st.sampled_from([4, 7, 8, 12, 16, 32, 64, 128]))
    return np.array(points, dtype=np.float64), np.array(rows, dtype=np.float64), stride


@given(data=boxes_around_locations())
def test_round_trip_and_centerness_range(data):
    points, rows, stride = data
    for dtype in (torch.float32, torch.float64):
        locations = torch.tensor(points, dtype=dtype)
        boxes = torch.tensor(rows, dtype=dtype)
        deltas = fcos_get_deltas_from_locations(locations, boxes, stride)
        assert (deltas > 0).all()
        decoded = fcos_apply_deltas_to_locations(deltas, locations, stride)
        if stride & (stride - 1) == 0:  # a power of two: exact both ways
            assert torch.equal(decoded, boxes)
        else:  # a rounding or two each way
            assert_trees_close(decoded, boxes, DECODE_TOLERANCES[dtype], f"stride {stride}")
        centerness = fcos_make_centerness_targets(deltas)
        assert ((centerness >= 0) & (centerness <= 1)).all()


@given(values=st.integers(1, 30).flatmap(lambda n: ltrb_deltas(n)))
def test_foreground_centerness_in_unit_interval_background_minus_one(values):
    deltas = torch.tensor(values)
    centerness = fcos_make_centerness_targets(deltas)
    background = (deltas < 0).any(-1)
    assert (centerness[background] == -1).all()
    assert ((centerness[~background] >= 0) & (centerness[~background] <= 1)).all()


@given(scale=floats32(0.25, 64.0), data=boxes_around_locations())
def test_centerness_is_scale_invariant(scale, data):
    points, rows, stride = data
    deltas = fcos_get_deltas_from_locations(torch.tensor(points), torch.tensor(rows), stride)
    # Scaling by a power of two is exact: the centerness does not change at all.
    power = 2.0 ** round(np.log2(scale))
    assert torch.equal(
        fcos_make_centerness_targets(deltas * power), fcos_make_centerness_targets(deltas)
    )


# ------------------------------------------------------------------------- error inputs

L2 = torch.zeros(3, 2)
G5 = torch.zeros(3, 5)
D4 = torch.zeros(3, 4)

GET_ERRORS = [
    (
        (L2, torch.zeros(3, 3), 8),
        ValueError,
        r"gt_boxes must have shape \[\.\.\., L, 4\] or \[\.\.\., L, 5\], got \[3, 3\]",
    ),
    ((L2, torch.zeros(5), 8), ValueError, r"gt_boxes must have shape .*got \[5\]"),
    (
        (torch.zeros(3, 3), G5, 8),
        ValueError,
        r"locations must have shape \[L, 2\] or \[\.\.\., L, 2\], got \[3, 3\]",
    ),
    (
        (torch.zeros(4, 2), G5, 8),
        ValueError,
        r"same number of locations L, got locations \[4, 2\] and gt_boxes \[3, 5\]",
    ),
    (
        (torch.zeros(2, 3, 2), torch.zeros(4, 3, 5), 8),
        ValueError,
        r"share the batch dims of gt_boxes",
    ),
    (
        (L2, torch.zeros(3, 5, dtype=torch.int64), 8),
        TypeError,
        r"gt_boxes must have a floating dtype.*int64",
    ),
    ((L2.int(), G5, 8), TypeError, r"locations must have a floating dtype.*int32"),
    ((L2, G5, 0), ValueError, r"stride must be a positive finite number, got 0"),
    ((L2, G5, "8"), TypeError, r"stride must be a positive number or a Tensor\[L\], got str"),
    (
        (L2, G5, torch.ones(4)),
        ValueError,
        r"stride must be a number or a Tensor\[L\] with L = 3, got Tensor\[4\]",
    ),
    ((L2.numpy(), G5, 8), TypeError, r"locations must be a torch.Tensor, got ndarray"),
    ((torch.zeros(3, 2, device="meta"), G5, 8), ValueError, r"all tensors must be on one device"),
]
APPLY_ERRORS = [
    (
        (torch.zeros(3, 5), L2, 8),
        ValueError,
        r"deltas must have shape \[\.\.\., L, 4\], got \[3, 5\]",
    ),
    ((D4.long(), L2, 8), TypeError, r"deltas must have a floating dtype.*int64"),
    (
        (D4, torch.zeros(4, 2), 8),
        ValueError,
        r"same number of locations L, got locations \[4, 2\] and deltas \[3, 4\]",
    ),
    (
        (torch.zeros(2, 3, 4), torch.zeros(3, 3, 2), 8),
        ValueError,
        r"share the batch dims of deltas",
    ),
    ((D4, L2, -8), ValueError, r"stride must be a positive finite number, got -8"),
    (
        (D4, L2, torch.ones(2, 3)),
        ValueError,
        r"stride must be a number or a Tensor\[L\] with L = 3, got Tensor\[2, 3\]",
    ),
    ((D4, torch.zeros(3, 2, device="meta"), 8), ValueError, r"all tensors must be on one device"),
]
CENTERNESS_ERRORS = [
    ((torch.zeros(3, 5),), ValueError, r"deltas must have shape \[\.\.\., L, 4\], got \[3, 5\]"),
    ((torch.zeros(()),), ValueError, r"deltas must have shape \[\.\.\., L, 4\], got \[\]"),
    ((D4.int(),), TypeError, r"deltas must have a floating dtype.*int32"),
    (([[1.0, 2.0, 3.0, 4.0]],), TypeError, r"deltas must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize(
    ("op", "args", "error", "match"),
    [(fcos_get_deltas_from_locations, *row) for row in GET_ERRORS]
    + [(fcos_apply_deltas_to_locations, *row) for row in APPLY_ERRORS]
    + [(fcos_make_centerness_targets, *row) for row in CENTERNESS_ERRORS],
)
def test_error_inputs(op, args, error, match):
    with pytest.raises(error, match=rf"{op.__name__}: .*{match}"):
        op(*args)
