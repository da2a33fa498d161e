"""Registry entries, one module per op family. Add a family here to register it."""

from . import boxes, locations, metrics

FAMILIES = (locations, boxes, metrics)
