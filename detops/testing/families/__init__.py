"""Registry entries, one module per op family. Add a family here to register it."""

from . import locations

FAMILIES = (locations,)
