"""Benchmarks of detops.locations against the course's meshgrid loop."""

from __future__ import annotations

import torch

import reference.locations as ref
from detops import locations
from detops.testing.inputs import A4_STRIDES, COCO_STRIDES

from ._case import BenchCase, BenchFunctions


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


_NOTES = "the (xc, yc) of every location of the three FPN levels (p3-p5) of the image size"

BENCHMARKS = (
    BenchCase(
        "get_fpn_location_coords",
        "A4 224x224",
        "course-style meshgrid",
        _bench_setup(224, 224, A4_STRIDES, with_reference=True),
        notes=_NOTES,
    ),
    BenchCase(
        "get_fpn_location_coords",
        "COCO 800x1344",
        "course-style meshgrid",
        _bench_setup(800, 1344, COCO_STRIDES, with_reference=False),
        quick=False,
        notes=_NOTES,
    ),
)
