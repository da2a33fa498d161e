"""Registry entries for detops.locations."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import reference.locations as ref
from detops import locations

from ..compare import EXACT_TOLERANCES
from ..entry import BenchCase, BenchFunctions, OpEntry
from ..inputs import A4_STRIDES, COCO_STRIDES
from ..strategies import Case, fpn_shapes, fpn_strides


@st.composite
def location_cases(draw):
    strides = draw(fpn_strides())
    shapes = draw(fpn_shapes(strides))
    if draw(st.booleans()):
        batch, channels = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        shapes = {level: (batch, channels, *hw) for level, hw in shapes.items()}
    offset = draw(st.sampled_from([0.5, 0.0]))
    return Case((shapes, strides), {"offset": offset})


ENTRIES = (
    OpEntry(
        name="get_fpn_location_coords",
        op=locations.get_fpn_location_coords,
        reference=ref.get_fpn_location_coords,
        strategy=location_cases,
        # coordinates are exact multiples of the stride; float32 represents them exactly
        tolerances=EXACT_TOLERANCES,
        op_kwargs=lambda dtype, device: {"dtype": dtype, "device": device},
    ),
)


def _seed_style_locations(shapes, strides, device):
    # The course solution: meshgrid per level, then a Python list of stacked coordinates.
    result = {}
    for level, shape in shapes.items():
        height, width = shape[-2:]
        stride = strides[level]
        grid_y, grid_x = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        xc = stride * (grid_x.float() + 0.5)
        yc = stride * (grid_y.float() + 0.5)
        result[level] = torch.stack((xc.flatten(), yc.flatten()), dim=-1)
    return result


def _bench_setup(height, width, strides, with_reference):
    shapes = {level: (16, 256, -(-height // s), -(-width // s)) for level, s in strides.items()}

    def setup(device):
        return BenchFunctions(
            detops=lambda: locations.get_fpn_location_coords(shapes, strides, device=device),
            peer=lambda: _seed_style_locations(shapes, strides, device),
            reference=(lambda: ref.get_fpn_location_coords(shapes, strides))
            if with_reference
            else None,
        )

    return setup


BENCHMARKS = (
    BenchCase(
        "get_fpn_location_coords",
        "A4 224x224",
        "seed-style meshgrid",
        _bench_setup(224, 224, A4_STRIDES, with_reference=True),
    ),
    BenchCase(
        "get_fpn_location_coords",
        "COCO 800x1344",
        "seed-style meshgrid",
        _bench_setup(800, 1344, COCO_STRIDES, with_reference=False),
        quick=False,
    ),
)
