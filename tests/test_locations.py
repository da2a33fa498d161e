import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import detops.locations as locations_module
import reference.locations as ref
from detops import fcos_match_locations_to_gt, get_fpn_location_coords

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def test_known_values_224():
    shapes = {level: (2, 64, 224 // s, 224 // s) for level, s in STRIDES.items()}
    coords = get_fpn_location_coords(shapes, STRIDES)
    assert [c.shape for c in coords.values()] == [(784, 2), (196, 2), (49, 2)]
    # The hand-derived values: x moves fastest along the first row.
    assert coords["p3"][:3].tolist() == [[4, 4], [12, 4], [20, 4]]
    assert coords["p3"][28].tolist() == [4, 12]
    assert coords["p5"][-1].tolist() == [6.5 * 32, 6.5 * 32]


def test_rows_line_up_with_flattened_head_output():
    height, width, stride = 3, 5, 8
    coords = get_fpn_location_coords({"p3": (1, 2, height, width)}, {"p3": stride})["p3"]
    # A feature map whose channels are the cell's own (w, h) indices.
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    feature = torch.stack((xs, ys)).unsqueeze(0).float()
    flat = feature.permute(0, 2, 3, 1).reshape(1, height * width, 2)[0]
    assert torch.equal(coords, stride * (flat + 0.5))


def test_offset_and_odd_stride_and_hw_shapes():
    coords = get_fpn_location_coords({"a": (2, 3)}, {"a": 7}, offset=0.0)["a"]
    assert coords.tolist() == [[0, 0], [7, 0], [14, 0], [0, 7], [7, 7], [14, 7]]


def test_dtype_device_and_empty_level(device):
    coords = get_fpn_location_coords(
        {"p3": (0, 4), "p4": (2, 2)}, {"p3": 8, "p4": 16}, dtype=torch.float64, device=device
    )
    assert coords["p3"].shape == (0, 2)
    assert coords["p4"].dtype == torch.float64
    assert coords["p4"].device.type == device


def test_large_map_is_exact_in_float32():
    coords = get_fpn_location_coords({"p": (1, 1, 3000, 3000)}, {"p": 8})["p"]
    expected = ref.get_fpn_location_coords({"p": (3000, 3000)}, {"p": 8})["p"]
    np.testing.assert_array_equal(coords.numpy(), expected)


@settings(max_examples=40)
@given(
    height=st.integers(0, 40),
    width=st.integers(0, 40),
    stride=st.floats(0.01, 300.0),
    offset=st.floats(-2.0, 2.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
)
def test_numpy_and_torch_paths_equal_the_reference_cast_once(height, width, stride, offset, dtype):
    """float32/float64 CPU levels are built in NumPy, others in torch: both compute in
    float64 and cast once, so both equal the reference cast to the dtype, for strides and
    offsets whose products round."""
    shapes, strides = {"p": (height, width)}, {"p": stride}
    expected = ref.get_fpn_location_coords(shapes, strides, offset=offset)["p"]
    expected = torch.from_numpy(expected).to(dtype)
    with pytest.MonkeyPatch.context() as patch:
        for numpy_dtypes in (locations_module._NUMPY_DTYPES, {}):
            patch.setattr(locations_module, "_NUMPY_DTYPES", numpy_dtypes)
            for device in ("cpu", torch.device("cpu")):
                coords = get_fpn_location_coords(shapes, strides, dtype, device, offset=offset)
                out = coords["p"]
                assert out.dtype == dtype and out.shape == (height * width, 2)
                assert out.is_contiguous() and torch.equal(out, expected), (numpy_dtypes, device)


ERROR_INPUTS = [
    (([(1, 2)], STRIDES), TypeError, r"get_fpn_location_coords: shape_per_fpn_level must be"),
    (({"p3": (8, 8)}, [8]), TypeError, r"strides_per_fpn_level must be a mapping"),
    (({"p3": (8, 8), "p9": (2, 2)}, STRIDES), ValueError, r"must name every level.*p9"),
    (({"p3": (1, 8, 8)},), ValueError, r"shape_per_fpn_level\['p3'\] must be \(B, C, H, W\)"),
    (({"p3": torch.zeros(1, 1, 2, 2)},), TypeError, r"got a Tensor"),
    (({"p3": (2, -1)},), ValueError, r"non-negative integer W"),
    (({"p3": (2, 2.5)},), TypeError,
     r"shape_per_fpn_level\['p3'\]\[1\] must be a non-negative integer W, got float"),
    (({"p3": (1, 8, 2.5, 2)},), TypeError,
     r"shape_per_fpn_level\['p3'\]\[2\] must be a non-negative integer H"),
    (({"p3": np.zeros((1, 1, 4, 4))},), ValueError,
     r"must be \(B, C, H, W\) or \(H, W\), got ndarray$"),
    (({"p3": (2, 2)}, {"p3": math.inf}), ValueError,
     r"strides_per_fpn_level\['p3'\] must be a positive finite number, got inf"),
    (({"p3": (2, 2)}, {"p3": -8}), ValueError, r"must be a positive finite number, got -8$"),
    # Never a whole tensor in a message: a tensor argument is named by its type.
    (({"p3": (2, 2)}, {"p3": torch.full((50,), 8.0)}), TypeError,
     r"strides_per_fpn_level\['p3'\] must be a positive finite number, got Tensor$"),
    (({"p3": (2, 2)}, {"p3": 8}, torch.zeros(50)), TypeError,
     r"dtype must be a floating torch.dtype, got Tensor$"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "error", "match"), ERROR_INPUTS)
def test_error_inputs(args, error, match):
    if len(args) == 1:
        args = (args[0], STRIDES)
    with pytest.raises(error, match=match):
        get_fpn_location_coords(*args)


@pytest.mark.parametrize("stride", [math.inf, -math.inf, math.nan, 0, 0.0, -8])
def test_error_stride_rejected_as_by_the_matcher(stride):
    # ``inf`` used to give inf coordinates here while the matcher rejected it.
    message = r"strides_per_fpn_level\['p3'\] must be a positive finite number"
    with pytest.raises(ValueError, match=rf"get_fpn_location_coords: {message}"):
        get_fpn_location_coords({"p3": (2, 2)}, {"p3": stride})
    gt = torch.zeros(1, 5)
    with pytest.raises(ValueError, match=rf"fcos_match_locations_to_gt: {message}"):
        fcos_match_locations_to_gt({"p3": torch.zeros(4, 2)}, {"p3": stride}, gt)


@pytest.mark.parametrize(
    ("offset", "error", "message"),
    [
        ("0.5", TypeError, r"offset must be a finite number, got str$"),
        (torch.tensor(0.5), TypeError, r"offset must be a finite number, got Tensor$"),
        (True, TypeError, r"offset must be a finite number, got bool$"),
        (math.nan, ValueError, r"offset must be a finite number, got nan$"),
        (-math.inf, ValueError, r"offset must be a finite number, got -inf$"),
    ],
)
def test_error_offset(offset, error, message):
    with pytest.raises(error, match=rf"^get_fpn_location_coords: {message}"):
        get_fpn_location_coords({"p3": (2, 2)}, {"p3": 8}, offset=offset)


def test_numpy_scalar_offsets_equal_the_reference():
    for offset in (np.float32(0.3), np.float64(0.3)):
        expected = ref.get_fpn_location_coords({"p3": (3, 2)}, {"p3": 8}, offset=float(offset))
        out = get_fpn_location_coords({"p3": (3, 2)}, {"p3": 8}, offset=offset)["p3"]
        assert torch.equal(out, torch.from_numpy(expected["p3"]).float()), offset


def test_error_bad_stride_and_dtype():
    with pytest.raises(ValueError, match=r"strides_per_fpn_level\['p3'\] must be a positive"):
        get_fpn_location_coords({"p3": (2, 2)}, {"p3": 0})
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype, got torch.int64"):
        get_fpn_location_coords({"p3": (2, 2)}, {"p3": 8}, dtype=torch.int64)
