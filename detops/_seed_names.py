"""The public function names of the course code, in the order of the FCOS pipeline.

Kept free of imports so that ``detops verify --help`` can list them without loading torch.
"""

SEED_NAMES = (
    "get_fpn_location_coords",
    "fcos_match_locations_to_gt",
    "fcos_get_deltas_from_locations",
    "fcos_apply_deltas_to_locations",
    "fcos_make_centerness_targets",
    "nms",
    "class_spec_nms",
    "sigmoid_focal_loss",
    "box_iou",
    "clip_boxes_to_image",
)
