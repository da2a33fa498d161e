"""Every registry entry against its NumPy reference, on hypothesis inputs, per dtype/device."""

import pytest
from hypothesis import given

from detops.testing import REGISTRY

ENTRY_DTYPES = [
    pytest.param(entry, dtype, id=f"{entry.name}-{str(dtype).removeprefix('torch.')}")
    for entry in REGISTRY
    for dtype in entry.dtypes
]


@pytest.mark.parametrize(("entry", "dtype"), ENTRY_DTYPES)
def test_op_matches_reference(entry, dtype, device):
    if device == "cuda" and not entry.cuda:
        pytest.skip(f"{entry.name} has no CUDA path")

    @given(case=entry.strategy())
    def check(case):
        entry.assert_matches(case, dtype, device)

    check()


def test_registry_entries_are_distinct_functions():
    for entry in REGISTRY:
        assert entry.op is not entry.reference, entry.name
        assert entry.op.__module__.startswith("detops"), entry.name
        assert entry.reference.__module__.startswith("reference"), entry.name
