import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference.deltas as ref
from detops import (
    fcos_apply_deltas_to_locations,
    fcos_get_deltas_from_locations,
    fcos_make_centerness_targets,
)
from detops.testing import entry_by_name
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


# ------------------------------------------------------ the NumPy path and the torch path
# On CPU, float32/float64 inputs of one dtype (no grad) up to a size take NumPy kernels
# (detops._deltas_numpy); the switch runs the torch path that every other input takes.

DELTAS_MODULE = sys.modules["detops.deltas"]
PATH_ENTRIES = (
    "fcos_get_deltas_from_locations",
    "fcos_apply_deltas_to_locations",
    "fcos_make_centerness_targets",
)


def _count_kernel_calls(monkeypatch):
    """How many times each NumPy kernel runs (``{"deltas": n, "centerness": n, "apply": n}``)."""
    calls = {"deltas": 0, "centerness": 0, "apply": 0}

    def spy(name, kernel):
        def wrapped(*args):
            calls[name] += 1
            return kernel(*args)

        return wrapped

    monkeypatch.setattr(DELTAS_MODULE, "deltas_numpy", spy("deltas", DELTAS_MODULE.deltas_numpy))
    monkeypatch.setattr(
        DELTAS_MODULE, "centerness_numpy", spy("centerness", DELTAS_MODULE.centerness_numpy)
    )
    monkeypatch.setattr(DELTAS_MODULE, "apply_numpy", spy("apply", DELTAS_MODULE.apply_numpy))
    return calls


@pytest.fixture
def kernel_calls(monkeypatch):
    return _count_kernel_calls(monkeypatch)


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", PATH_ENTRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_both_cpu_paths_match_the_reference(name, dtype, numpy_path, kernel_calls, monkeypatch):
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", numpy_path)
    entry = entry_by_name(name)

    @settings(max_examples=40)
    @given(case=entry.strategy())
    def check(case):
        entry.assert_matches(case, dtype, "cpu")

    check()
    # The registry's cases are small: with the switch on, the kernel ran (for the deltas,
    # not on the int64 stride tensors nor the empty cases), with it off never.
    assert (sum(kernel_calls.values()) > 0) == numpy_path


def _both_paths(monkeypatch, op, *args):
    """``op(*args)`` by the NumPy path and by the torch path."""
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", True)
    fast = op(*args)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", False)
    slow = op(*args)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", True)
    return fast, slow


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _ordered_bits(t):
    """Integers in the order of the floats (-0.0 and 0.0 both 0): adjacent floats differ
    by 1, so the difference of two is their distance in ulps."""
    bits = t.view(_BITS[t.dtype]).to(torch.int64)
    lowest = torch.iinfo(_BITS[t.dtype]).min
    return torch.where(bits < 0, lowest - bits, bits)


def _assert_within_one_ulp(fast, slow):
    """NaN where the other is NaN, at most 1 ulp apart elsewhere."""
    assert fast.dtype == slow.dtype and fast.shape == slow.shape and fast.is_contiguous()
    assert torch.equal(fast.isnan(), slow.isnan())
    distance = (_ordered_bits(fast) - _ordered_bits(slow)).abs()
    assert (distance[~slow.isnan()] <= 1).all(), (fast, slow)


# Float32 values at the edges: signed zeros, -1 (background), infinities, NaN, a
# subnormal, huge values (products overflow), halves (exact differences).
EDGE_VALUES = [0.0, -0.0, -1.0, 1.0, 0.5, 8.0, 1e-45, 3e38, -3e38, math.inf, -math.inf, math.nan]
edge_floats = st.one_of(
    st.sampled_from(EDGE_VALUES),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.integers(-40, 300).map(float),
)


@st.composite
def delta_inputs(draw):
    """Locations, GT rows (4 or 5 columns, odd layouts) and a stride, all edges included:
    locations on an edge of their box, rows of -1, class -1 rows with coordinates."""
    batch = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    count = draw(st.integers(1, 9))
    columns = draw(st.sampled_from([4, 5]))
    locations = np.array(draw(st.lists(edge_floats, min_size=2 * count, max_size=2 * count)))
    locations = locations.reshape(count, 2)
    rows = np.empty(batch + (count, columns))
    flat = rows.reshape(-1, columns)
    for i in range(len(flat)):
        x, y = locations[i % count]
        kind = draw(st.sampled_from(["edge", "free", "minus_one", "class_minus_one"]))
        if kind == "edge":  # x1 == xc or y1 == yc or x2 == xc ... (a -0.0 or +0.0 delta)
            sides = [float(draw(st.integers(0, 40))) for _ in range(4)]
            sides[draw(st.integers(0, 3))] = 0.0
            flat[i, :4] = (x - sides[0], y - sides[1], x + sides[2], y + sides[3])
        elif kind == "free":
            flat[i, :4] = draw(st.lists(edge_floats, min_size=4, max_size=4))
        elif kind == "minus_one":
            flat[i, :4] = -1.0
        else:
            flat[i, :4] = draw(st.lists(edge_floats, min_size=4, max_size=4))
        if columns == 5:
            flat[i, 4] = -1.0 if kind in ("minus_one", "class_minus_one") else draw(edge_floats)
    if batch and draw(st.booleans()):  # locations per image
        locations = np.broadcast_to(locations, batch + locations.shape).copy()
        locations[..., 0] += draw(st.integers(-3, 3))
    stride = draw(st.sampled_from([8, 16, 32, 7, 12, 0.5, 3.25, 2.0**-20, 2.0**20, "tensor"]))
    if stride == "tensor":
        stride = np.array([draw(st.sampled_from([8.0, 16.0, 6.0, 0.25])) for _ in range(count)])
    return locations, rows, stride


def _layout(t, kind):
    """The same values in another memory layout."""
    if kind == "contiguous":
        return t
    if kind == "columns apart":  # column-major in the last two dims
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    wider = torch.cat((t, t), dim=-2)  # every other row of a bigger tensor
    return wider[..., ::2, :] if kind == "every other row" else wider[..., 1::2, :]


LAYOUTS = ["contiguous", "columns apart", "every other row", "odd offset"]


def _as_tensors(data, dtype, rows_layout, location_layout, columns=None):
    """A ``delta_inputs()`` draw as ``dtype`` tensors in the given layouts: locations, the
    rows (their first ``columns`` columns when given) and the stride (a tensor when drawn
    as an array)."""
    locations, rows, stride = data
    locations = _layout(torch.tensor(locations).to(dtype), location_layout)
    rows = _layout(torch.tensor(rows[..., :columns]).to(dtype), rows_layout)
    if isinstance(stride, np.ndarray):
        stride = torch.tensor(stride).to(dtype)
    return locations, rows, stride


def _assert_same_bits(fast, slow, where):
    """NaN in the same places, and the same bits (signed zeros included) at ``where``."""
    assert torch.equal(fast.isnan(), slow.isnan())
    bits = fast.view(_BITS[fast.dtype]), slow.view(_BITS[slow.dtype])
    assert torch.equal(bits[0][where], bits[1][where]), (fast, slow)


def _assert_bits_unchanged(*pairs):
    """Each ``(tensor, copy taken before the call)`` holds the same bits: inputs are only read."""
    for tensor, before in pairs:
        assert torch.equal(tensor.view(_BITS[tensor.dtype]), before.view(_BITS[before.dtype]))


@given(
    data=delta_inputs(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    gt_layout=st.sampled_from(LAYOUTS),
    location_layout=st.sampled_from(LAYOUTS),
)
def test_numpy_deltas_are_bitwise_the_torch_deltas(data, dtype, gt_layout, location_layout):
    locations, gt, stride = _as_tensors(data, dtype, gt_layout, location_layout)
    before = gt.clone(), locations.clone()
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _count_kernel_calls(monkeypatch)
        fast, slow = _both_paths(monkeypatch, fcos_get_deltas_from_locations, locations, gt, stride)
        assert calls["deltas"] == 1
    assert fast.dtype == slow.dtype == dtype and fast.shape == slow.shape
    assert fast.is_contiguous()
    # Bit for bit, -0.0 and NaN payloads included, but for NaN - NaN (a coordinate and its
    # location both NaN): IEEE leaves open which NaN comes out; torch's sub gives the
    # location's, NumPy's the coordinate's.
    centers = torch.cat((locations, locations), dim=-1)
    decided = ~(gt[..., :4].isnan() & centers.isnan()).expand_as(fast)
    _assert_same_bits(fast, slow, decided)
    _assert_bits_unchanged((gt, before[0]), (locations, before[1]))

    # Centerness of these deltas (in odd layouts too): within 1 ulp (the square roots).
    deltas = _layout(slow, gt_layout)
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _count_kernel_calls(monkeypatch)
        fast, slow = _both_paths(monkeypatch, fcos_make_centerness_targets, deltas)
        assert calls["centerness"] == 1
    _assert_within_one_ulp(fast, slow)


@given(
    values=st.lists(edge_floats, min_size=4, max_size=48).map(
        lambda v: np.array(v[: len(v) // 4 * 4]).reshape(-1, 4)
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_numpy_centerness_within_one_ulp_of_torch_on_any_deltas(values, dtype):
    deltas = torch.tensor(values).to(dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both_paths(monkeypatch, fcos_make_centerness_targets, deltas)
    _assert_within_one_ulp(fast, slow)


def test_numpy_centerness_rules_and_square_root(kernel_calls):
    # Zero denominators (also -0.0 ones) give +0, background -1, NaN stays NaN (also with
    # a negative delta beside it, as the torch path), a -0.0 near side gives +0 too.
    nan = math.nan
    deltas = torch.tensor(
        [[0.0, 5, -0.0, 3], [-0.0, 2, 0, 0], [1, -2, 3, 4], [nan, 1, 1, 1], [nan, -1, 1, 1]]
        + [[-0.0, 2, 4, 2], [2, 3, 2, 3]]
    )
    centerness = fcos_make_centerness_targets(deltas)
    assert kernel_calls["centerness"] == 1
    assert centerness[:3].tolist() == [0, 0, -1] and not centerness[:2].signbit().any()
    assert centerness[3:5].isnan().all()
    assert centerness[5].item() == 0 and not centerness[5].signbit() and centerness[6] == 1
    # The square root is correctly rounded (float64's root rounded to float32 is: 53 >=
    # 2 * 24 + 2 bits); torch's is 1 ulp away on ~0.6% of ratios, within 1 ulp of it here.
    ratios = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 0.99 + 1e-3
    one = torch.ones_like(ratios)
    deltas = torch.stack((ratios, one, one, one), -1)  # centerness sqrt(ratio / 1)
    centerness = fcos_make_centerness_targets(deltas)
    assert kernel_calls["centerness"] == 2
    assert torch.equal(centerness, ratios.double().sqrt().float())
    with pytest.MonkeyPatch.context() as torch_path:
        torch_path.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", False)
        _assert_within_one_ulp(centerness, fcos_make_centerness_targets(deltas))


def test_the_numpy_path_is_taken_only_where_it_applies(kernel_calls, monkeypatch):
    gt = torch.tensor([[[0.0, 0, 50, 60, 1], [-1, -1, -1, -1, -1]]] * 3)
    locations = torch.tensor([[4.0, 4], [12, 4]])
    expected = fcos_get_deltas_from_locations(locations, gt, 8)
    centerness = fcos_make_centerness_targets(expected)
    assert kernel_calls == {"deltas": 1, "centerness": 1, "apply": 0}

    # Taken: float64, a stride tensor, batched locations, tensors requiring grad while
    # grad is disabled.
    fcos_make_centerness_targets(fcos_get_deltas_from_locations(locations.double(), gt.double(), 8))
    fcos_get_deltas_from_locations(locations, gt, torch.tensor([8.0, 8.0]))
    fcos_get_deltas_from_locations(locations.expand(3, 2, 2), gt, 8)
    with torch.no_grad():
        grad_deltas = expected.clone().requires_grad_()
        fcos_make_centerness_targets(grad_deltas)
        fcos_get_deltas_from_locations(locations.clone().requires_grad_(), gt, 8)
    assert kernel_calls == {"deltas": 5, "centerness": 3, "apply": 0}

    # Not taken: grad needed (and it flows), half dtypes, mixed dtypes, a stride tensor of
    # another dtype, a NumPy stride, the switch off, over the cutoffs.
    grad_gt = gt.clone().requires_grad_()
    deltas = fcos_get_deltas_from_locations(locations, grad_gt, 8)
    fcos_make_centerness_targets(deltas).sum().backward()
    assert grad_gt.grad is not None and grad_gt.grad[:, 0].abs().sum() > 0
    for dtype in (torch.float16, torch.bfloat16):
        deltas = fcos_get_deltas_from_locations(locations.to(dtype), gt.to(dtype), 8)
        assert torch.equal(deltas, expected.to(dtype))
        fcos_make_centerness_targets(deltas)
    fcos_get_deltas_from_locations(locations.double(), gt, 8)
    fcos_get_deltas_from_locations(locations, gt, torch.tensor([8, 8]))
    fcos_get_deltas_from_locations(locations, gt, np.float64(8.0))
    assert kernel_calls == {"deltas": 5, "centerness": 3, "apply": 0}

    def both(*args):
        deltas = fcos_get_deltas_from_locations(*args)
        assert torch.equal(deltas, expected)
        assert torch.equal(fcos_make_centerness_targets(deltas), centerness)

    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", False)
    both(locations, gt, 8)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", True)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_DELTAS", gt.numel() // 5 * 4 - 1)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_CENTERNESS", gt.numel() // 5 - 1)
    both(locations, gt, 8)
    assert kernel_calls == {"deltas": 5, "centerness": 3, "apply": 0}
    # At the cutoffs, taken again.
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_DELTAS", gt.numel() // 5 * 4)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_CENTERNESS", gt.numel() // 5)
    both(locations, gt, 8)
    assert kernel_calls == {"deltas": 6, "centerness": 4, "apply": 0}


def test_the_numpy_apply_path_is_taken_only_where_it_applies(kernel_calls, monkeypatch):
    deltas = torch.tensor([[[1.0, 2, 3, 4], [-1, -1, -1, -1]]] * 3)
    locations = torch.tensor([[4.0, 4], [12, 4]])
    expected = fcos_apply_deltas_to_locations(deltas, locations, 8)
    assert expected.tolist()[0] == [[-4.0, -12, 28, 36], [12, 4, 12, 4]]
    assert kernel_calls["apply"] == 1

    # Taken: float64, a stride tensor of the dtype, batched locations, tensors requiring
    # grad while grad is disabled.
    fcos_apply_deltas_to_locations(deltas.double(), locations.double(), 8)
    fcos_apply_deltas_to_locations(deltas, locations, torch.tensor([8.0, 8.0]))
    fcos_apply_deltas_to_locations(deltas, locations.expand(3, 2, 2), 8)
    with torch.no_grad():
        fcos_apply_deltas_to_locations(deltas.clone().requires_grad_(), locations, 8)
    assert kernel_calls["apply"] == 5

    # Not taken: grad needed (and it flows), half and mixed dtypes, a stride tensor of
    # another dtype, a NumPy stride, a location coordinate of 0, the switch off, over the
    # cutoff.
    grad_deltas = deltas.clone().requires_grad_()
    fcos_apply_deltas_to_locations(grad_deltas, locations, 8).sum().backward()
    assert grad_deltas.grad is not None and grad_deltas.grad[:, 0].abs().sum() > 0
    for dtype in (torch.float16, torch.bfloat16):
        boxes = fcos_apply_deltas_to_locations(deltas.to(dtype), locations.to(dtype), 8)
        assert torch.equal(boxes, expected.to(dtype))
    fcos_apply_deltas_to_locations(deltas.double(), locations, 8)
    fcos_apply_deltas_to_locations(deltas, locations, torch.tensor([8, 8]))
    fcos_apply_deltas_to_locations(deltas, locations, np.float64(8.0))
    at_zero = torch.tensor([[0.0, 4], [12, 4]])
    assert fcos_apply_deltas_to_locations(deltas, at_zero, 8)[0, 0].tolist() == [-8, -12, 24, 36]
    assert kernel_calls["apply"] == 5
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", False)
    assert torch.equal(fcos_apply_deltas_to_locations(deltas, locations, 8), expected)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", True)
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_APPLY", deltas.numel() - 1)
    assert torch.equal(fcos_apply_deltas_to_locations(deltas, locations, 8), expected)
    assert kernel_calls["apply"] == 5
    monkeypatch.setattr(DELTAS_MODULE, "_NUMPY_MAX_APPLY", deltas.numel())  # at the cutoff
    assert torch.equal(fcos_apply_deltas_to_locations(deltas, locations, 8), expected)
    assert kernel_calls["apply"] == 6


@given(
    data=delta_inputs(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    delta_layout=st.sampled_from(LAYOUTS),
    location_layout=st.sampled_from(LAYOUTS),
)
def test_numpy_apply_is_bitwise_the_torch_apply(data, dtype, delta_layout, location_layout):
    # Deltas at the edges (signed zeros, -1, infinities, NaN, subnormals, huge values)
    # decoded by both paths: the same bits but for NaN payloads (which NaN comes out of
    # NaN + NaN is IEEE's choice), and the torch path wherever a coordinate is 0.
    locations, deltas, stride = _as_tensors(data, dtype, delta_layout, location_layout, 4)
    before = deltas.clone(), locations.clone()
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _count_kernel_calls(monkeypatch)
        fast, slow = _both_paths(
            monkeypatch, fcos_apply_deltas_to_locations, deltas, locations, stride
        )
        numpy_ran = calls["apply"] == 1
        assert numpy_ran == bool(locations.ne(0).all())
    assert fast.dtype == slow.dtype == dtype and fast.shape == slow.shape
    assert fast.is_contiguous() or not numpy_ran
    _assert_same_bits(fast, slow, ~slow.isnan())
    _assert_bits_unchanged((deltas, before[0]), (locations, before[1]))


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


def test_centerness_gradient_is_zero_on_constant_rows_and_finite_elsewhere():
    """Background rows (-1) and rows with a zero near or far side (0) get a zero gradient,
    not the NaN of 0 / 0 or sqrt(0) in a branch that torch.where discards; foreground rows
    get the analytic gradient (gradcheck in float64), also through the deltas."""
    deltas = torch.tensor(
        [[1.0, 2, 3, 4], [-0.5, 1, 1, 1], [0, 0, 0, 0], [0, 1, 2, 3], [2, 3, 2, 3], [-1] * 4],
        dtype=torch.float64,
        requires_grad=True,
    )
    (grad,) = torch.autograd.grad(fcos_make_centerness_targets(deltas).sum(), deltas)
    assert torch.isfinite(grad).all()
    assert grad[1:4].eq(0).all() and grad[5].eq(0).all()
    assert grad[0].ne(0).all()
    foreground = deltas.detach()[[0, 4]].clone().requires_grad_()
    assert torch.autograd.gradcheck(fcos_make_centerness_targets, (foreground,))

    locations = torch.tensor([[4.0, 4.0], [30.0, 4.0]], requires_grad=True)  # 2nd: outside
    gt = torch.tensor([[0.0, 0, 16, 16, 1], [0, 0, 16, 16, 1]], requires_grad=True)
    centerness = fcos_make_centerness_targets(fcos_get_deltas_from_locations(locations, gt, 8))
    centerness.clamp(min=0).sum().backward()
    assert torch.isfinite(locations.grad).all() and torch.isfinite(gt.grad).all()
    assert locations.grad[1].eq(0).all() and locations.grad[0].ne(0).all()


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("value", [1e20, 1e-23, 3e38])
def test_centerness_of_huge_and_tiny_float32_deltas_does_not_overflow(value, numpy_path):
    rows = torch.tensor([[value] * 4, [value, value, 2 * value, value]])  # 2 * 3e38 is inf
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DELTAS_MODULE, "_NUMPY_ON_CPU", numpy_path)
        centerness = fcos_make_centerness_targets(rows)
    expected = ref.fcos_make_centerness_targets(rows.numpy())
    np.testing.assert_allclose(centerness.numpy(), expected, rtol=1e-6)
    assert centerness[0].item() == 1.0


@pytest.mark.parametrize("stride", [np.int64(8), np.int32(8), np.float32(8.0), np.float64(8.0)])
def test_numpy_scalar_strides_are_numbers(stride):
    """A NumPy scalar stride is accepted wherever a Python number is, with the reference's
    answer for it."""
    import reference.locations as ref_locations
    import reference.matching as ref_matching
    from detops import fcos_match_locations_to_gt, get_fpn_location_coords

    locations = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    gt = torch.tensor([[0.0, 0, 16, 16, 1], [-1, -1, -1, -1, -1]])
    deltas = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.25, 1.0, 1.0, 3.0]])
    np_locations, np_gt = locations.numpy(), gt.numpy()
    np.testing.assert_array_equal(
        fcos_get_deltas_from_locations(locations, gt, stride).numpy(),
        ref.fcos_get_deltas_from_locations(np_locations, np_gt, stride),
    )
    np.testing.assert_array_equal(
        fcos_apply_deltas_to_locations(deltas, locations, stride).numpy(),
        ref.fcos_apply_deltas_to_locations(deltas.numpy(), np_locations, stride),
    )
    shapes, strides = {"p3": (2, 3)}, {"p3": stride}
    grid = get_fpn_location_coords(shapes, strides)
    np.testing.assert_array_equal(
        grid["p3"].numpy(), ref_locations.get_fpn_location_coords(shapes, strides)["p3"]
    )
    matched = fcos_match_locations_to_gt(grid, strides, gt)
    expected = ref_matching.fcos_match_locations_to_gt({"p3": grid["p3"].numpy()}, strides, np_gt)
    np.testing.assert_array_equal(matched["p3"].numpy(), expected["p3"])
    assert (matched["p3"][:, 4] >= 0).any()


@pytest.mark.parametrize(
    "stride, error, message",
    [
        (
            np.bool_(True),
            TypeError,
            r"stride must be a positive number or a Tensor\[L\], got numpy.bool",
        ),
        (
            torch.ones(2, dtype=torch.bool),
            TypeError,
            r"stride must be a real \(floating or integer\) Tensor\[L\], got torch.bool",
        ),
        (
            torch.ones(2, dtype=torch.complex64),
            TypeError,
            r"stride must be a real .*, got torch.complex64",
        ),
        (1e-300, ValueError, r"stride must be a normal torch.float32 number .* got 1e-300"),
        (1e39, ValueError, r"stride must be a normal torch.float32 number"),
    ],
)
def test_strides_that_cannot_give_finite_deltas_are_refused(stride, error, message):
    locations = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    gt = torch.tensor([[0.0, 0, 16, 16, 1], [0, 0, 16, 16, 1]])
    with pytest.raises(error, match="fcos_get_deltas_from_locations: " + message):
        fcos_get_deltas_from_locations(locations, gt, stride)
