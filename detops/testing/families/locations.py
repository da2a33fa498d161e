"""Registry entries for detops.locations."""

from __future__ import annotations

from hypothesis import strategies as st

import reference.locations as ref
from detops import locations

from ..compare import EXACT_TOLERANCES
from ..entry import OpEntry
from ..strategies import Case, fpn_shapes, fpn_strides


@st.composite
def location_cases(draw):
    strides = draw(fpn_strides())
    shapes = draw(fpn_shapes(strides))
    if draw(st.booleans()):
        batch, channels = draw(st.integers(1, 4)), draw(st.integers(1, 8))
        shapes = {level: (batch, channels, *hw) for level, hw in shapes.items()}
    offset = draw(st.sampled_from([0.5, 0.0]))
    return Case((shapes, strides), {"offset": offset})


ENTRIES = (
    OpEntry(
        name="get_fpn_location_coords",
        op=locations.get_fpn_location_coords,
        reference=ref.get_fpn_location_coords,
        strategy=location_cases,
        # coordinates are exact multiples of the stride; float32 represents them exactly
        tolerances=EXACT_TOLERANCES,
        op_kwargs=lambda dtype, device: {"dtype": dtype, "device": device},
    ),
)
