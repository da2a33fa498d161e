import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detops.matching as matching
import reference.matching as ref
from detops import fcos_match_locations_to_gt, get_fpn_location_coords
from detops.bench.cases.targets import benchmark_inputs
from detops.testing.compare import EXACT, assert_trees_close
from detops.testing.entry import case_to_torch
from detops.testing.families.targets import match_cases

STRIDES = {"p3": 8, "p4": 16, "p5": 32}
NO_ROW = [-1.0] * 5


def _match(points, gt, strides=STRIDES, dtype=torch.float64, device="cpu", **kwargs):
    """Match hand-placed locations (the same points at every level unless a dict)."""
    if not isinstance(points, dict):
        points = {level: points for level in strides}
    locations = {
        level: torch.tensor(p, dtype=dtype, device=device).reshape(-1, 2)
        for level, p in points.items()
    }
    gt = torch.tensor(gt, dtype=dtype, device=device).reshape(-1, 5)
    return fcos_match_locations_to_gt(locations, strides, gt, **kwargs)


def _torch_case(case, dtype=torch.float64, device="cpu"):
    return case_to_torch(case.args, dtype, device), case_to_torch(case.kwargs, dtype, device)


# ------------------------------------------------------------------------- known values

STRIDES_2 = {"p3": 8, "p4": 16}


def test_default_size_ranges_sorted_by_stride():
    assert matching.default_size_ranges({"p5": 32, "p3": 8, "p4": 16}) == {
        "p5": (128.0, math.inf),
        "p3": (0.0, 64.0),
        "p4": (64.0, 128.0),
    }
    # Odd strides: 7/14/28 and 12/24 (4x and 8x the stride, open at the ends).
    assert matching.default_size_ranges({"a": 7, "b": 14, "c": 28}) == {
        "a": (0.0, 56.0),
        "b": (56.0, 112.0),
        "c": (112.0, math.inf),
    }
    assert matching.default_size_ranges({"a": 12, "b": 24}) == {
        "a": (0.0, 96.0),
        "b": (96.0, math.inf),
    }
    assert matching.default_size_ranges({"only": 8}) == {"only": (0.0, math.inf)}


def test_location_on_an_edge_does_not_match(device):
    box = [4, 4, 20, 20, 3]
    # (4, 12): x - x1 = 0; (12, 20): y2 - y = 0; (12, 12): all distances 8 > 0.
    out = _match([[4, 12], [12, 20], [12, 12]], [box], device=device)["p3"]
    assert out.tolist() == [NO_ROW, NO_ROW, box]


def test_m_exactly_on_the_size_bounds_matches_no_level(device):
    # (68, 68) in (4, 4, 132, 132): all four distances are 64 -> not < 64 (p3), not > 64 (p4).
    out = _match([[68, 68]], [[4, 4, 132, 132, 3]], device=device)
    assert [out[level].tolist() for level in STRIDES] == [[NO_ROW]] * 3
    # (132, 132) in (4, 4, 260, 260): m = 128 -> not < 128 (p4), not > 128 (p5).
    out = _match([[132, 132]], [[4, 4, 260, 260, 3]], device=device)
    assert [out[level].tolist() for level in STRIDES] == [[NO_ROW]] * 3
    # One pixel inside the bound either way: m = 63 -> p3, m = 65 -> p4.
    out = _match([[68, 68]], [[5, 5, 131, 131, 3]], device=device)
    assert out["p3"].tolist() == [[5, 5, 131, 131, 3]] and out["p4"].tolist() == [NO_ROW]
    out = _match([[68, 68]], [[3, 3, 133, 133, 3]], device=device)
    assert out["p3"].tolist() == [NO_ROW] and out["p4"].tolist() == [[3, 3, 133, 133, 3]]


def test_smallest_area_wins_and_equal_areas_go_to_the_lowest_index(device):
    nested = [[0, 0, 40, 40, 1], [10, 10, 30, 30, 2]]  # (20, 20) in both; areas 1600, 400
    assert _match([[20, 20]], nested, device=device)["p3"].tolist() == [nested[1]]
    # Areas 1680 and 1680 (40 x 42 and 42 x 40): the lower index, whichever it is.
    tie = [[0, 0, 40, 42, 1], [0, 0, 42, 40, 2]]
    assert _match([[20, 20]], tie, device=device)["p3"].tolist() == [tie[0]]
    assert _match([[20, 20]], tie[::-1], device=device)["p3"].tolist() == [tie[1]]
    # Areas 1681 and 1680: 1e8 - area rounds both to the same float32; detops compares
    # exactly, so the smaller box (index 1) wins even in float32.
    close = [[0, 0, 41, 41, 1], [0, 0, 40, 42, 2]]
    for dtype in (torch.float32, torch.float64):
        out = _match([[20, 20]], close, dtype=dtype, device=device)["p3"]
        assert out.tolist() == [close[1]]


def test_empty_and_all_padding_gt(device):
    points = [[4, 4], [12, 4]]
    for gt in (np.zeros((0, 5)), [[-1.0] * 5] * 3):
        out = _match(points, gt, device=device)
        assert all(v.tolist() == [NO_ROW, NO_ROW] for v in out.values())
    # Batched: an image with no rows, and padding with real coordinates (class -1).
    locations = {"p3": torch.tensor([[12.0, 12.0]], device=device)}
    gt = torch.tensor([[[0.0, 0, 40, 40, -1], [-1, -1, -1, -1, -1]]] * 2, device=device)
    out = fcos_match_locations_to_gt(locations, {"p3": 8}, gt)["p3"]
    assert out.shape == (2, 1, 5) and (out == -1).all()
    empty = fcos_match_locations_to_gt(locations, {"p3": 8}, gt[:, :0])["p3"]
    assert empty.shape == (2, 1, 5) and (empty == -1).all()
    no_images = fcos_match_locations_to_gt(locations, {"p3": 8}, gt[:0])["p3"]
    assert no_images.shape == (0, 1, 5)


def test_boxes_outside_the_image_and_negative_coordinates(device):
    outside = [-50, -50, -10, -10, 1]
    straddling = [-20.5, -20, 30, 30.25, 2]
    out = _match([[4, 4], [12, 12], [36, 36]], [outside, straddling], device=device)["p3"]
    assert out.tolist() == [straddling, straddling, NO_ROW]


def test_center_sampling(device):
    # Box centre (50, 50); stride 8, r = 1.5: |x - 50| < 12 and |y - 50| < 12.
    box = [0, 0, 100, 100, 4]
    points = [[44, 44], [38.5, 50], [38, 50], [50, 62], [61.75, 38.25]]
    out = _match(points, [box], {"p": 8}, center_sampling_radius=1.5, device=device)["p"]
    assert out.tolist() == [box, box, NO_ROW, NO_ROW, box]
    # The region is per box: (20, 20) is inside the big box, but only near the small
    # box's centre, so the small box is the only candidate (AdelaiDet summed over boxes).
    small = [10, 10, 30, 30, 5]
    big = [0, 0, 200, 200, 6]
    out = _match([[20, 20], [100, 100]], [big, small], {"p": 8}, center_sampling_radius=1.5)
    assert out["p"].tolist() == [small, big]


def test_size_ranges_override_named_levels_only():
    box = [0, 0, 100, 100, 7]
    # (50, 50): m = 50; defaults give p3 (0, 64); an override moves it to p4 only.
    out = _match([[50, 50]], [box], size_ranges={"p3": (60, 64), "p4": (40, 60)})
    assert out["p3"].tolist() == [NO_ROW] and out["p4"].tolist() == [box]
    assert out["p5"].tolist() == [NO_ROW]  # p5 keeps (128, inf)


def test_odd_strides_match_the_reference(device):
    for strides in ({"a": 7, "b": 14, "c": 28}, {"a": 12, "b": 24}):
        shapes = {level: (1, 1, 20, 30) for level in strides}
        locations = get_fpn_location_coords(shapes, strides, device=device)
        gt = torch.tensor(
            [[3, 5, 60, 47, 1], [100, 20, 180, 140, 2], [10, 10, 17, 17, 3], [0, 0, 210, 140, 4]],
            dtype=torch.float32,
            device=device,
        )
        out = fcos_match_locations_to_gt(locations, strides, gt)
        expected = ref.fcos_match_locations_to_gt(
            {k: v.cpu().numpy() for k, v in locations.items()}, strides, gt.cpu().numpy()
        )
        assert_trees_close(out, expected, EXACT, f"strides {strides}")
        assert any((v[:, 4] >= 0).any() for v in out.values())  # something matched


def test_output_dtype_device_shape_and_no_mutation(device):
    locations = get_fpn_location_coords({"p3": (4, 5), "p4": (2, 3)}, {"p3": 8, "p4": 16})
    locations = {k: v.to(device) for k, v in locations.items()}
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        gt = torch.tensor([[[1, 2, 30, 25, 1], [-1, -1, -1, -1, -1]]], dtype=dtype, device=device)
        before = gt.clone()
        out = fcos_match_locations_to_gt(locations, {"p3": 8, "p4": 16}, gt)
        assert list(out) == ["p3", "p4"]
        assert all(v.dtype == dtype and v.device.type == device for v in out.values())
        assert out["p3"].shape == (1, 20, 5) and out["p4"].shape == (1, 6, 5)
        assert out["p3"].is_contiguous()
        assert torch.equal(gt, before)
        assert (out["p3"][0, :, 4] == 1).any()


def test_float64_and_non_contiguous_inputs_equal_contiguous_ones(device):
    locations = get_fpn_location_coords({"p3": (6, 7), "p4": (3, 4)}, {"p3": 8, "p4": 16})
    gt = torch.tensor(
        [
            [[2, 3, 40, 33, 1], [-1] * 5, [10, 6, 60, 50, 2]],
            [[0, 0, 55, 40, 3], [-1] * 5, [-1] * 5],
        ],
        dtype=torch.float64,
    ).to(device)
    expected = fcos_match_locations_to_gt(
        {k: v.to(device) for k, v in locations.items()}, STRIDES, gt
    )
    # Locations as every other column of a wider tensor; GT transposed in memory.
    strided_locations = {
        k: torch.stack((v, v), dim=-1).double().to(device).reshape(-1, 4)[:, ::2]
        for k, v in locations.items()
    }
    strided_gt = gt.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided_gt.is_contiguous()
    assert not strided_locations["p3"].is_contiguous()
    out = fcos_match_locations_to_gt(strided_locations, STRIDES, strided_gt)
    assert_trees_close(out, expected, EXACT, "non-contiguous inputs")
    assert (out["p3"][..., 4] >= 0).any()


# ------------------------------------------------------------------------- properties


@given(case=match_cases(batched=True))
def test_batched_equals_per_image(case):
    (locations, strides, gt), kwargs = _torch_case(case, torch.float32)
    batched = fcos_match_locations_to_gt(locations, strides, gt, **kwargs)
    for b in range(gt.shape[0]):
        single = fcos_match_locations_to_gt(locations, strides, gt[b], **kwargs)
        for level in locations:
            assert torch.equal(batched[level][b], single[level]), (level, b)


@given(case=match_cases())
def test_each_row_is_one_gt_row_whose_box_strictly_contains_its_location(case):
    (locations, strides, gt), kwargs = _torch_case(case)
    out = fcos_match_locations_to_gt(locations, strides, gt, **kwargs)
    images = gt if gt.dim() == 3 else gt.unsqueeze(0)
    for level, loc in locations.items():
        rows = out[level].reshape(len(images), -1, 5)
        for image, image_rows in zip(images, rows, strict=True):
            matched = image_rows[:, 4] != -1
            assert (image_rows[~matched] == -1).all()
            # Each matched row equals exactly one real GT row (one box per location)...
            same = (image_rows[matched][:, None, :] == image[None, :, :]).all(-1)
            assert (same & (image[None, :, 4] != -1)).any(-1).all()
            # ...whose box contains the location strictly.
            x, y = loc[matched, 0], loc[matched, 1]
            box = image_rows[matched]
            assert ((x > box[:, 0]) & (y > box[:, 1]) & (x < box[:, 2]) & (y < box[:, 3])).all()


@given(case=match_cases(batched=False), data=st.data())
def test_padding_row_positions_do_not_matter(case, data):
    (locations, strides, gt), kwargs = _torch_case(case)
    real = gt[gt[:, 4] != -1]
    padding = torch.full((data.draw(st.integers(0, 4)), 5), -1.0, dtype=gt.dtype)
    rows = torch.cat((real, padding))
    # A random interleaving that keeps the real rows in order (their order breaks ties).
    slots = sorted(data.draw(st.permutations(range(len(rows))))[: len(real)])
    shuffled = torch.full_like(rows, -1)
    shuffled[slots] = real
    expected = fcos_match_locations_to_gt(locations, strides, real, **kwargs)
    out = fcos_match_locations_to_gt(locations, strides, shuffled, **kwargs)
    assert_trees_close(out, expected, EXACT, "padding moved")


@given(case=match_cases(), chunk=st.sampled_from([5, 64, 1 << 18]))
def test_every_path_equals_the_reference(case, chunk):
    """The CUDA path (no padding cut, no grid detection, dense tests), small chunks, and
    the torch grid path that the NumPy one replaces on CPU."""
    (locations, strides, gt), kwargs = _torch_case(case)
    names = list(locations)
    ranges = matching.default_size_ranges({n: strides[n] for n in names})
    ranges.update(kwargs.get("size_ranges", {}))
    radius = kwargs.get("center_sampling_radius")
    expected = ref.fcos_match_locations_to_gt(*case.args, **case.kwargs)
    batched = gt if gt.dim() == 3 else gt.unsqueeze(0)
    for compact, grid, numpy_path in (
        (False, False, False),
        (True, False, False),
        (False, True, False),
        (True, True, False),
        (True, True, True),
    ):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(matching, "_NUMPY_MATCH", numpy_path)
            out = matching._match(
                locations,
                {n: float(strides[n]) for n in names},
                ranges,
                radius,
                batched,
                compact=compact,
                detect_grid=grid,
                chunk_elements=chunk,
            )
        if gt.dim() == 2:
            out = {k: v[0] for k, v in out.items()}
        path = f"compact={compact} grid={grid} numpy={numpy_path} chunk={chunk}"
        assert_trees_close(out, expected, EXACT, path)


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("radius", [None, 1.5])
def test_a4_benchmark_batch_matches_the_reference(radius, numpy_path, monkeypatch):
    """The benchmark's A4 batch (16 images, 40 rows, 4..12 real boxes) at full size."""
    monkeypatch.setattr(matching, "_NUMPY_MATCH", numpy_path)
    locations, gt, _, _ = benchmark_inputs(224, 224, STRIDES, 40, (4, 12))
    out = fcos_match_locations_to_gt(locations, STRIDES, gt, center_sampling_radius=radius)
    np_locations = {k: v.numpy() for k, v in locations.items()}
    expected = ref.fcos_match_locations_to_gt(
        np_locations, STRIDES, gt.numpy(), center_sampling_radius=radius
    )
    assert_trees_close(out, expected, EXACT, f"A4 batch, radius {radius}")
    assert sum(int((v[..., 4] >= 0).sum()) for v in out.values()) > 100


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
def test_infinite_coordinates_match_the_reference_without_warnings(numpy_path, monkeypatch):
    """Infinite box edges make NaN areas and bounds (inf - inf, inf * 0); the NumPy path
    warned about them (and raised under warnings-as-errors), the torch path did not."""
    monkeypatch.setattr(matching, "_NUMPY_MATCH", numpy_path)
    inf = math.inf
    locations = get_fpn_location_coords({"p3": (8, 8), "p4": (4, 4)}, STRIDES_2)
    rows = [
        [-inf, 0.0, inf, 20.0, 3.0],  # infinite width
        [-inf, 5.0, inf, 5.0, 1.0],  # infinite width times zero height: NaN area
        [0.0, 0.0, inf, inf, 2.0],
        [inf, inf, inf, inf, 0.0],
        [10.0, 10.0, 40.0, 50.0, 2.0],
        [-1.0, -1.0, -1.0, -1.0, -1.0],
    ]
    gt = torch.tensor([rows, rows[::-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fcos_match_locations_to_gt(locations, STRIDES_2, gt)
    with warnings.catch_warnings():  # (the reference's own float arithmetic warns)
        warnings.simplefilter("ignore")
        np_locations = {k: v.double().numpy() for k, v in locations.items()}
        expected = ref.fcos_match_locations_to_gt(np_locations, STRIDES_2, gt.double().numpy())
    assert_trees_close(out, expected, EXACT, f"infinite edges, numpy={numpy_path}")


def test_grid_shapes_remembered_from_a_call_are_checked_on_the_next():
    """The grid shapes found for some level sizes are a hint for the next call with the
    same sizes, checked against its locations: a shifted grid, a transposed grid (4 x 8
    after 8 x 4), a grid whose rows are shuffled, and bfloat16 locations must all match
    the reference."""
    generator = torch.Generator().manual_seed(2)
    corner = torch.randint(0, 40, (3, 6, 2), generator=generator).float()
    size = torch.randint(4, 40, (3, 6, 2), generator=generator).float()
    gt = torch.cat((corner, corner + size, torch.ones(3, 6, 1)), dim=-1)
    gt[1, 4:] = -1
    strides = {"a": 8, "b": 16}
    wide = get_fpn_location_coords({"a": (4, 8), "b": (2, 4)}, strides)
    tall = get_fpn_location_coords({"a": (8, 4), "b": (4, 2)}, strides)
    shuffled = {"a": wide["a"][torch.randperm(32, generator=generator)], "b": wide["b"]}
    shifted = {k: v + 3.0 for k, v in wide.items()}
    half = {k: v.to(torch.bfloat16) for k, v in wide.items()}
    for name, locations in [
        ("wide", wide),
        ("tall after wide", tall),
        ("wide after tall", wide),
        ("shuffled", shuffled),
        ("shifted", shifted),
        ("bfloat16", half),
        ("wide again", wide),
    ]:
        out = fcos_match_locations_to_gt(locations, strides, gt)
        np_locations = {k: v.float().numpy() for k, v in locations.items()}
        expected = ref.fcos_match_locations_to_gt(np_locations, strides, gt.numpy())
        assert_trees_close(out, expected, EXACT, name)
        assert sum(int((v[..., 4] >= 0).sum()) for v in out.values()) > 0, name


def test_many_boxes_use_several_weight_groups():
    """More real boxes than one 52-bit weight group: the first group with a candidate wins."""
    locations = get_fpn_location_coords({"p": (12, 12)}, {"p": 8})
    generator = torch.Generator().manual_seed(0)
    corner = torch.randint(0, 80, (2, 130, 2), generator=generator).double()
    size = torch.randint(1, 60, (2, 130, 2), generator=generator).double()
    gt = torch.cat((corner, corner + size, torch.ones(2, 130, 1)), dim=-1)
    gt[0, 100:] = -1  # image 0 has 100 real boxes, image 1 has 130
    locations = {"p": locations["p"].double()}
    expected = ref.fcos_match_locations_to_gt({"p": locations["p"].numpy()}, {"p": 8}, gt.numpy())
    out = fcos_match_locations_to_gt(locations, {"p": 8}, gt)
    assert_trees_close(out, expected, EXACT, "130 boxes")
    ranges = {"p": (0.0, math.inf)}
    dense = matching._match(
        locations, {"p": 8.0}, ranges, None, gt, compact=False, detect_grid=False, chunk_elements=64
    )
    assert_trees_close(dense, expected, EXACT, "130 boxes, dense path")


# ------------------------------------------------------------------------- error inputs

LOC = {"p3": torch.zeros(4, 2)}
GT = torch.zeros(3, 5)

ERROR_INPUTS = [
    ((LOC, {"p3": 8}, torch.zeros(3, 4)), {}, ValueError, r"gt_boxes must have shape \[N, 5\]"),
    ((LOC, {"p3": 8}, torch.zeros(5)), {}, ValueError, r"gt_boxes must have shape .*got \[5\]"),
    ((LOC, {"p3": 8}, torch.zeros(1, 2, 3, 5)), {}, ValueError, r"got \[1, 2, 3, 5\]"),
    (
        (LOC, {"p3": 8}, torch.zeros(3, 5, dtype=torch.int64)),
        {},
        TypeError,
        r"gt_boxes must have a floating dtype.*int64",
    ),
    (
        (LOC, {"p3": 8}, [[0, 0, 1, 1, 0]]),
        {},
        TypeError,
        r"gt_boxes must be a torch.Tensor, got list",
    ),
    (
        ({"p3": torch.zeros(4, 3)}, {"p3": 8}, GT),
        {},
        ValueError,
        r"locations_per_fpn_level\['p3'\] must have shape \[L, 2\], got \[4, 3\]",
    ),
    (
        ({"p3": torch.zeros(2, 4, 2)}, {"p3": 8}, GT),
        {},
        ValueError,
        r"must have shape \[L, 2\], got \[2, 4, 2\]",
    ),
    (
        ({"p3": torch.zeros(4, 2, dtype=torch.int32)}, {"p3": 8}, GT),
        {},
        TypeError,
        r"locations_per_fpn_level\['p3'\] must have a floating dtype",
    ),
    (
        ([torch.zeros(4, 2)], {"p3": 8}, GT),
        {},
        TypeError,
        r"locations_per_fpn_level must be a mapping",
    ),
    ((LOC, [8], GT), {}, TypeError, r"strides_per_fpn_level must be a mapping"),
    (
        (LOC, {"p4": 16}, GT),
        {},
        ValueError,
        r"strides_per_fpn_level must name every level.*\['p3'\].*\['p4'\]",
    ),
    (
        (LOC, {"p3": 0}, GT),
        {},
        ValueError,
        r"strides_per_fpn_level\['p3'\] must be a positive finite number, got 0",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"size_ranges": {"p9": (0, 64)}},
        ValueError,
        r"size_ranges must only name levels.*unknown levels \['p9'\]",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"size_ranges": {"p3": (64, 0)}},
        ValueError,
        r"size_ranges\['p3'\] must be \(low, high\) with low <= high",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"size_ranges": {"p3": 64}},
        TypeError,
        r"size_ranges\['p3'\] must be a \(low, high\) pair",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"center_sampling_radius": -1.0},
        ValueError,
        r"center_sampling_radius must be None or a positive number, got -1.0",
    ),
    (
        (LOC, {"p3": math.inf}, GT),
        {},
        ValueError,
        r"strides_per_fpn_level\['p3'\] must be a positive finite number, got inf",
    ),
    # Never a whole tensor in a message: a tensor where a number belongs is named by type.
    (
        (LOC, {"p3": torch.full((50,), 8.0)}, GT),
        {},
        TypeError,
        r"strides_per_fpn_level\['p3'\] must be a positive finite number, got Tensor$",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"size_ranges": {"p3": torch.zeros(50)}},
        TypeError,
        r"size_ranges\['p3'\] must be a \(low, high\) pair of numbers, got Tensor$",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"size_ranges": {"p3": (0, torch.zeros(50))}},
        TypeError,
        r"size_ranges\['p3'\] must be a \(low, high\) pair of numbers, got Tensor$",
    ),
    (
        (LOC, {"p3": 8}, GT),
        {"center_sampling_radius": torch.ones(50)},
        TypeError,
        r"center_sampling_radius must be None or a positive number, got Tensor$",
    ),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), ERROR_INPUTS)
def test_error_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=rf"fcos_match_locations_to_gt: .*{match}"):
        fcos_match_locations_to_gt(*args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_different_devices():
    with pytest.raises(
        ValueError, match=r"fcos_match_locations_to_gt: all tensors must be on one device"
    ):
        fcos_match_locations_to_gt({"p3": torch.zeros(4, 2, device="cuda")}, {"p3": 8}, GT)


def test_error_different_devices_meta():
    # A second device without a GPU: the meta device.
    with pytest.raises(
        ValueError, match=r"fcos_match_locations_to_gt: all tensors must be on one device.*meta"
    ):
        fcos_match_locations_to_gt({"p3": torch.zeros(4, 2, device="meta")}, {"p3": 8}, GT)


def _variants():
    """(label, locations, strides, gt_boxes, size_ranges, radius): a valid call and calls
    that change one argument, valid or not."""
    locations = {"p3": torch.rand(6, 2) * 64, "p4": torch.rand(3, 2) * 64}
    strides = {"p3": 8, "p4": 16.0}
    gt = torch.tensor([[1.0, 1.0, 30.0, 30.0, 2.0], [-1, -1, -1, -1, -1]])
    yield "valid", locations, strides, gt, None, None
    yield "batched", locations, strides, gt[None], None, None
    wide = {**locations, "p4": locations["p4"].double()}
    yield "float64 locations", wide, strides, gt, None, None
    yield "radius", locations, strides, gt, None, 1.5
    for stride in (True, 0, -8, math.nan, math.inf, 10**400, np.float32(8), "8", torch.tensor(8.0)):
        yield f"stride {stride!r}", locations, {**strides, "p4": stride}, gt, None, None
    yield "stride missing", locations, {"p3": 8}, gt, None, None
    for radius in (0, -1.0, math.nan, math.inf, 10**400, True, np.float64(1.5), np.float32(1.5)):
        yield f"radius {radius!r}", locations, strides, gt, None, radius
    for name, loc in (
        ("int locations", torch.zeros(3, 2, dtype=torch.int64)),
        ("[L, 3] locations", torch.zeros(3, 3)),
        ("1-D locations", torch.zeros(6)),
        ("a Parameter", torch.nn.Parameter(torch.zeros(3, 2))),
        ("a list", [[0.0, 0.0]]),
    ):
        yield name, {**locations, "p4": loc}, strides, gt, None, None
    for name, boxes in (
        ("[N, 4] gt", gt[:, :4]),
        ("int gt", gt.long()),
        ("4-D gt", gt[None, None]),
        ("gt as a list", gt.tolist()),
    ):
        yield name, locations, strides, boxes, None, None
    yield "size ranges", locations, strides, gt, {"p3": (0.0, 64.0)}, None
    yield "a tuple of levels", tuple(locations.items()), strides, gt, None, None


@pytest.mark.parametrize("variant", list(_variants()), ids=lambda v: v[0])
def test_the_quick_argument_check_accepts_nothing_the_full_check_refuses(variant):
    # fcos_match_locations_to_gt skips its full checks (about 15 µs) for a call that
    # _common_call recognises: that call must be one the full checks accept.
    label, *arguments = variant
    quick = matching._common_call(*arguments)
    try:
        matching._validate(*arguments)
        valid = True
    except (TypeError, ValueError):
        valid = False
    assert valid or not quick
    if label in ("valid", "batched", "float64 locations", "radius"):
        assert quick  # the common call takes the quick check


def test_huge_int_strides_and_radii_are_refused_by_name():
    # (float() of an int from 2**1024 on raises OverflowError, which named nothing)
    locations = get_fpn_location_coords({"p3": (2, 2)}, {"p3": 8})
    gt = torch.tensor([[10.0, 20, 100, 150, 3]])
    with pytest.raises(ValueError, match=r"strides_per_fpn_level\['p3'\] must be .* too large"):
        fcos_match_locations_to_gt(locations, {"p3": 10**400}, gt)
    with pytest.raises(ValueError, match="center_sampling_radius must be .* too large"):
        fcos_match_locations_to_gt(locations, {"p3": 8}, gt, center_sampling_radius=10**400)


def test_a_numpy_float32_radius_matches_as_its_float64_value():
    locations, gt, *_ = benchmark_inputs(224, 224, STRIDES, 40, (4, 12))
    radius = np.float32(1.1)  # 1.10000002384..., not 1.1
    got = fcos_match_locations_to_gt(locations, STRIDES, gt, center_sampling_radius=radius)
    np_locations = {k: v.numpy() for k, v in locations.items()}
    expected = ref.fcos_match_locations_to_gt(
        np_locations, STRIDES, gt.numpy(), center_sampling_radius=float(radius)
    )
    assert_trees_close(got, expected, EXACT, "matched")


def test_no_level_matches_nothing():
    gt = torch.tensor([[10.0, 20, 100, 150, 3]])
    assert fcos_match_locations_to_gt({}, {"p3": 8}, gt) == {}
    assert fcos_match_locations_to_gt({}, {}, gt[None]) == {}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("real_boxes", [2, 53])  # (53: more than one group of 52 boxes)
def test_gradient_reaches_the_gt_rows_it_copies(dtype, real_boxes):
    # Autograd sees a gather (the course code's gt_boxes[matched_idxs]): the gradient of
    # the matched rows' sum at GT row i is the number of locations matched to it, in every
    # column, and 0 for padding. On CPU the NumPy path dropped the graph (float32/float64,
    # up to 52 boxes): no grad_fn, so a backward skipped it.
    strides = {"p3": 8, "p4": 16}
    locations = get_fpn_location_coords({"p3": (8, 8), "p4": (4, 4)}, strides, dtype=dtype)
    gen = torch.Generator().manual_seed(real_boxes)
    corner = torch.randint(0, 40, (real_boxes, 2), generator=gen).double()
    side = torch.randint(4, 40, (real_boxes, 2), generator=gen).double()
    classes = torch.arange(real_boxes).double()[:, None]  # distinct rows
    rows = torch.cat([corner, corner + side, classes], 1)
    rows = torch.cat([rows, torch.full((1, 5), -1.0, dtype=torch.float64)])
    gt = rows.to(dtype, copy=True).requires_grad_()
    matched = fcos_match_locations_to_gt(locations, strides, gt)
    total = sum(level.sum() for level in matched.values())
    (gradient,) = torch.autograd.grad(total, gt)
    expected_rows = ref.fcos_match_locations_to_gt(
        {k: v.double().numpy() for k, v in locations.items()}, strides, rows.numpy()
    )
    every_row = np.concatenate(list(expected_rows.values()))
    counts = [float((every_row == row).all(axis=1).sum()) for row in rows.numpy()[:-1]]
    expected = torch.tensor([[c] * 5 for c in counts] + [[0.0] * 5], dtype=torch.float64)
    assert sum(counts) > 0
    assert torch.equal(gradient.double(), expected)
