"""detops: vetted, stateless tensor ops for the FCOS detector.

Every op here has a slow NumPy twin of the same name in ``reference`` and a registry
entry in ``detops.testing`` that property-tests the two against each other.
"""

from .locations import get_fpn_location_coords

__version__ = "0.1.0"

__all__ = [
    "get_fpn_location_coords",
]
