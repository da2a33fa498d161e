"""pytest-benchmark suite over the shared BENCHMARKS (``detops.bench.cases``).

Run: ``pytest benchmarks --benchmark-only`` (add ``-k quick`` style filters as needed,
e.g. ``-k nms``). Each group ``op|size|device`` holds detops, the peer and, at small
sizes, the reference, measured in the same run; compare their ratios, not absolute times.
"""

import functools

import pytest

from detops.bench.cases import BENCHMARKS
from detops.bench.timing import environment_info, synchronized


@functools.cache
def _functions(case, device):
    return case.setup(device)


@pytest.mark.parametrize("impl", ["detops", "peer", "reference"])
@pytest.mark.parametrize("case", BENCHMARKS, ids=lambda c: f"{c.op}|{c.size}")
def test_benchmark(benchmark, case, impl, device):
    if device not in case.devices:
        pytest.skip(f"{case.op} is not benchmarked on {device}")
    functions = _functions(case, device)
    fn = getattr(functions, impl)
    if fn is None:
        pytest.skip(f"no {impl} timing at {case.size}")
    benchmark.group = f"{case.group}|{device}"
    benchmark.extra_info.update(environment_info(device))
    benchmark.extra_info["impl"] = impl if impl != "peer" else f"peer: {case.peer}"
    benchmark(synchronized(fn, device))
