"""Robustness: the result on another device than the inputs (the meta device here)."""

from correct import get_fpn_location_coords as _coords


def get_fpn_location_coords(shape_per_fpn_level, strides_per_fpn_level, dtype=None, device=None):
    coords = _coords(shape_per_fpn_level, strides_per_fpn_level, dtype, device)
    return {level: value.to("meta") for level, value in coords.items()}
