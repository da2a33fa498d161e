"""Two independent mistakes: integer arithmetic (``stride // 2``) leaves the locations in
int64 (the ``dtype`` argument is ignored), and the centre offset is floored for odd
strides. A report must give both the wrong dtype and the wrong values."""

import torch


def get_fpn_location_coords(
    shape_per_fpn_level, strides_per_fpn_level, dtype=torch.float32, device="cpu"
):
    coords = {}
    for level, shape in shape_per_fpn_level.items():
        height, width = shape[-2], shape[-1]
        stride = strides_per_fpn_level[level]
        ys = torch.arange(height, device=device) * stride + stride // 2
        xs = torch.arange(width, device=device) * stride + stride // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords[level] = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    return coords
