"""Mistake: the course notebook's check order, x as the slow index (transposed rows)."""

import torch


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    coords = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2], shape[-1]
        stride = strides_per_fpn_level[level]
        xs = (torch.arange(width, dtype=torch.float64, device=device) + 0.5) * stride
        ys = (torch.arange(height, dtype=torch.float64, device=device) + 0.5) * stride
        grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")  # x varies slowest
        coords[level] = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1).to(dtype)
    return coords
