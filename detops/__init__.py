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
from .deltas import (
    fcos_apply_deltas_to_locations,
    fcos_get_deltas_from_locations,
    fcos_make_centerness_targets,
)
from .inference import FCOSDetections, fcos_inference
from .locations import get_fpn_location_coords
from .losses import (
    fcos_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_class_ids,
    sigmoid_focal_loss_grad,
)
from .matching import fcos_match_locations_to_gt
from .metrics import mean_average_precision
from .nms import batched_nms_per_image, class_spec_nms, nms

__version__ = "0.1.0"

__all__ = [
    "get_fpn_location_coords",
    "fcos_match_locations_to_gt",
    "fcos_get_deltas_from_locations",
    "fcos_apply_deltas_to_locations",
    "fcos_make_centerness_targets",
    "box_iou",
    "clip_boxes_to_image",
    "resize_and_center_crop_boxes",
    "center_crop_boxes_to_original",
    "pad_gt_boxes",
    "mean_average_precision",
    "nms",
    "class_spec_nms",
    "batched_nms_per_image",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_class_ids",
    "sigmoid_focal_loss_grad",
    "fcos_loss",
    "fcos_inference",
    "FCOSDetections",
]
