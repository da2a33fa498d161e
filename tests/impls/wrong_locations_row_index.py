"""Mistake (the most common variant in student solutions): x is taken from the row index
and y from the column index. The rows are in the right order, but cell (h, w) gets
x = stride * (h + 0.5), y = stride * (w + 0.5). On a square map this equals the transposed
order; on a non-square map the coordinates run past the image."""

import torch


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    coords = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2], shape[-1]
        stride = strides_per_fpn_level[level]
        rows = torch.arange(height, dtype=dtype, device=device)
        cols = torch.arange(width, dtype=dtype, device=device)
        grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
        x = (grid_r.reshape(-1) + 0.5) * stride  # bug: x from the row index
        y = (grid_c.reshape(-1) + 0.5) * stride
        coords[level] = torch.stack([x, y], dim=1)
    return coords
