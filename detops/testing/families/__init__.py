"""Registry entries, one module per op family. Add a family here to register it."""

from . import boxes, locations, losses, metrics, nms, targets

FAMILIES = (locations, boxes, metrics, losses, targets, nms)
