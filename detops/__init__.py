"""detops: vetted, stateless tensor ops for the FCOS detector.

Every op here has a slow NumPy twin of the same name in ``reference`` and a registry
entry in ``detops.testing`` that property-tests the two against each other.
"""

from .boxes import (
    box_iou,
    center_crop_boxes_to_original,
    clip_boxes_to_image,
    pad_gt_boxes,
    resize_and_center_crop_boxes,
)
from .locations import get_fpn_location_coords
from .metrics import mean_average_precision

__version__ = "0.1.0"

__all__ = [
    "get_fpn_location_coords",
    "box_iou",
    "clip_boxes_to_image",
    "resize_and_center_crop_boxes",
    "center_crop_boxes_to_original",
    "pad_gt_boxes",
    "mean_average_precision",
]
