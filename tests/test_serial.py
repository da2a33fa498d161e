"""detops._serial: the parallel-region-free index helpers equal torch's own ops.

torch.repeat_interleave, torch.searchsorted and torch.take are the independent oracle.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detops import _serial

counts_lists = st.lists(st.integers(0, 6), max_size=30)


@pytest.mark.parametrize("counts", [[], [0], [3], [0, 2, 0, 0, 1, 3, 0], [1, 1, 1], [0, 0, 4, 0]])
def test_owner_index_known_cases(counts):
    counts = torch.tensor(counts, dtype=torch.int64)
    expected = torch.repeat_interleave(torch.arange(len(counts)), counts)
    assert torch.equal(_serial.owner_index(counts), expected)


@given(counts=counts_lists, data=st.data())
def test_repeat_interleave_matches_torch(counts, data):
    counts_t = torch.tensor(counts, dtype=torch.int64)
    values = torch.tensor(
        data.draw(st.lists(st.integers(-9, 9), min_size=len(counts), max_size=len(counts))),
        dtype=torch.int64,
    )
    expected = values.repeat_interleave(counts_t)
    assert torch.equal(_serial.repeat_interleave(values, counts_t), expected)
    assert torch.equal(_serial.repeat_interleave(values, counts_t, sum(counts)), expected)


small_floats = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])


@given(
    batch=st.integers(1, 3),
    n=st.integers(0, 12),
    m=st.integers(0, 12),
    right=st.booleans(),
    data=st.data(),
)
def test_searchsorted_matches_torch_with_ties_and_batches(batch, n, m, right, data):
    seq = torch.tensor(data.draw(st.lists(small_floats, min_size=batch * n, max_size=batch * n)))
    seq = seq.view(batch, n).sort(-1).values
    values = torch.tensor(data.draw(st.lists(small_floats, min_size=batch * m, max_size=batch * m)))
    values = values.view(batch, m)
    expected = torch.searchsorted(seq, values, right=right)
    assert torch.equal(_serial.searchsorted(seq, values, right=right), expected)
    if batch == 1:  # 1-D sequence and values
        assert torch.equal(_serial.searchsorted(seq[0], values[0], right=right), expected[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.float16])
@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_above_the_grain_matches_torch(dtype, right):
    # Above ATen's grain the CPU path is NumPy's binary search (the sort would fork).
    g = torch.Generator().manual_seed(0)
    seq = (torch.randint(0, 500, (2, 20000), generator=g) / 4).to(dtype).sort(-1).values
    values = (torch.randint(-10, 510, (2, 20000), generator=g) / 4).to(dtype)
    expected = torch.searchsorted(seq, values, right=right)
    assert torch.equal(_serial.searchsorted(seq, values, right=right), expected)
    assert torch.equal(_serial.searchsorted(seq[1], values[1], right=right), expected[1])


def test_searchsorted_promotes_int_values_against_float_sequence():
    seq = torch.tensor([0.5, 1.0, 1.0, 2.5], dtype=torch.float64)
    values = torch.tensor([0, 1, 2, 3])
    for right in (False, True):
        expected = torch.searchsorted(seq, values.double(), right=right)
        assert torch.equal(_serial.searchsorted(seq, values, right=right), expected)


def test_take_matches_torch():
    source = torch.arange(24.0).view(2, 3, 4)
    index = torch.tensor([[0, 23, 5], [7, 7, 1]])
    assert torch.equal(_serial.take(source, index), torch.take(source, index))


# The fork-free stand-ins of nms and fcos_loss, against the torch op each replaces.

float_lists = st.lists(
    st.one_of(st.floats(-1e6, 1e6, width=32), st.just(float("nan")), st.just(float("inf"))),
    max_size=40,
)


@given(
    values=float_lists,
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_has_nan_matches_torch(values, dtype):
    tensor = torch.tensor(values, dtype=dtype)
    assert _serial.has_nan(tensor) == bool(torch.isnan(tensor).any())
    assert _serial.has_nan(-tensor) == bool(torch.isnan(tensor).any())  # negative NaNs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [100, 160000])
def test_to_float32_is_torchs_conversion_bit_for_bit(dtype, size):
    # Above the grain through NumPy (bfloat16 by its bits): every value, inf, -0.0 and
    # subnormals included, must convert exactly as torch converts it; NaN stays NaN
    # (NumPy keeps a float16 signaling NaN signaling, torch quiets it).
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    every = bits.view(dtype)
    values = every.repeat(-(-size // every.numel()))[:size].view(-1, 4)
    got = _serial.to_float32(values[:, ::2])  # a strided view too
    expected = values[:, ::2].to(torch.float32)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int32), expected[~nan].view(torch.int32))


@given(values=st.lists(st.integers(0, 50), max_size=60), extra=st.integers(0, 20))
def test_bincount_and_max_int_match_torch(values, extra):
    tensor = torch.tensor(values, dtype=torch.int64)
    length = (max(values) + 1 if values else 0) + extra
    counts = _serial.bincount(tensor, length)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, torch.bincount(tensor, minlength=length))
    if values:
        assert _serial.max_int(tensor) == int(tensor.max())


@given(mask=st.lists(st.booleans(), max_size=50))
def test_where_true_matches_boolean_indexing(mask):
    mask_t = torch.tensor(mask, dtype=torch.bool)
    a = torch.arange(len(mask))
    b = torch.arange(len(mask), dtype=torch.float64) * -0.5
    got_a, got_b = _serial.where_true(mask_t, a, b)
    assert torch.equal(got_a, a[mask_t]) and torch.equal(got_b, b[mask_t])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (3, 4), (70000,)])
def test_zeros_and_scale_in_place_match_torch(dtype, shape):
    zeros = _serial.zeros(shape, dtype, torch.device("cpu"))
    assert zeros.dtype == dtype and zeros.shape == shape and not zeros.any()
    values = torch.arange(int(torch.tensor(shape).prod()), dtype=dtype).reshape(shape)
    expected = values * torch.tensor(0.75, dtype=dtype)
    _serial.scale_in_place(values, torch.tensor(0.75, dtype=dtype))
    assert torch.equal(values, expected)


@pytest.mark.parametrize("factor", [1.0, 1, -1.0, 2.0])
def test_scale_in_place_by_one_keeps_every_bit(factor):
    # A factor of exactly 1 skips the pass: the values must be what mul_ leaves, NaN,
    # infinities and signed zeros included; other factors still scale.
    values = torch.tensor([0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan] * 10000)
    expected = values * torch.tensor(factor)
    _serial.scale_in_place(values, torch.tensor(factor))
    assert torch.equal(values.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, layout",
    [
        ((16, 2027, 80), "contiguous"),  # rows of 80: 408 rows a slice
        ((16, 2027, 80), "expanded"),  # the gradient of a sum: stride 0 everywhere
        ((16, 2027, 80), "permuted"),
        ((70000,), "contiguous"),
        ((3, 40000), "contiguous"),  # a row longer than a slice: flat slices
        ((0, 5), "contiguous"),
    ],
)
def test_scale_in_place_by_a_tensor_of_the_same_shape_matches_mul(dtype, shape, layout):
    """reduction="none" hands backward a gradient of the loss's shape; scaled in slices,
    each product is mul_'s (NaN, infinities and signed zeros included)."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=gen, dtype=dtype)
    if values.numel():
        values.view(-1)[:6] = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-310])
    if layout == "expanded":
        factor = torch.tensor(-1.5, dtype=dtype).expand(shape)
    elif layout == "permuted":
        factor = torch.randn(shape[::-1], generator=gen, dtype=dtype).permute(2, 1, 0)
    else:
        factor = torch.randn(shape, generator=gen, dtype=dtype)
    expected = values * factor
    _serial.scale_in_place(values, factor)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(values.view(bits), expected.view(bits))


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
def test_plain_eager_mode_is_false_under_transforms_traces_and_dual_levels():
    """Ops swap torch ops for NumPy only in plain eager mode: inside vmap, grad, jvp, a
    forward-AD dual level or a jit trace, tensors may have no memory, carry tangents, or
    be recorded, and each is reported."""
    import torch.autograd.forward_ad as forward_ad

    assert _serial.plain_eager_mode()
    seen = []

    def record(x):
        seen.append(_serial.plain_eager_mode())
        return x.sum()

    torch.func.vmap(record)(torch.ones(2, 3))
    torch.func.grad(record)(torch.ones(3))
    torch.func.jvp(record, (torch.ones(3),), (torch.ones(3),))
    with forward_ad.dual_level():
        seen.append(_serial.plain_eager_mode())
    torch.jit.trace(record, (torch.ones(3),), check_trace=False)
    assert seen == [False] * 5
    assert _serial.plain_eager_mode()
