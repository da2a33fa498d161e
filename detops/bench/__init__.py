"""``python -m detops bench``: time detops against its peers over the shared BENCHMARKS registry.

* :mod:`.cases`: the BENCHMARKS, one module per op family, with their inputs and the
  course-style peers.
* :mod:`.timing`: synchronized calls, interleaved measurement, quartiles, the machine.
* :mod:`.runner`: the settings, case selection and the run (re-measuring, budget, Ctrl-C).
* :mod:`.report`: rows and report, JSON, the text table and the chart.

Per case, detops and the peer are warmed up, then timed in alternation (ABBA...) so that
both see the same machine state; CUDA work is synchronized inside the timed call. The
report gives each callable's median, quartiles and min/max, and ``ratio = peer median /
detops median`` (a speed-up, > 1 when detops is faster) with its range; rows whose spread
stays wide or whose detops and peer IQRs overlap are flagged unstable, and rows where a
side faults many fresh pages a call get a note (their time depends on the allocator's
state, which can differ between runs).
"""

from .report import (
    BenchReport,
    BenchResult,
    fault_note,
    format_bench_table,
    format_seconds,
    plot_ratios,
    print_progress,
)
from .runner import BenchSettings, run_benchmarks, select_cases
from .timing import (
    Timing,
    busy_warning,
    calibrate_calls,
    calls_per_sample,
    environment_info,
    instability,
    load_average,
    measure,
    measure_interleaved,
    own_load_share,
    page_faults,
    quartiles,
    synchronized,
)

__all__ = [
    "BenchReport",
    "BenchResult",
    "BenchSettings",
    "Timing",
    "busy_warning",
    "calibrate_calls",
    "calls_per_sample",
    "environment_info",
    "fault_note",
    "format_bench_table",
    "format_seconds",
    "plot_ratios",
    "print_progress",
    "instability",
    "load_average",
    "measure",
    "measure_interleaved",
    "own_load_share",
    "page_faults",
    "quartiles",
    "run_benchmarks",
    "select_cases",
    "synchronized",
]
