"""Only two of the ten functions, both right: the rest are MISSING and verify still passes."""

from correct import box_iou, get_fpn_location_coords

__all__ = ["box_iou", "get_fpn_location_coords"]
