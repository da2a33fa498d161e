"""``python -m detops bench``: time detops against its peers (the shared BENCHMARKS registry)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import COMMANDS

if TYPE_CHECKING:
    from detops.bench import BenchSettings
    from detops.bench.cases._case import BenchCase

EPILOG = """\
The cases are detops.bench.cases.BENCHMARKS, the registry the pytest-benchmark suite
(pytest benchmarks --benchmark-only) also runs. Per case: detops and the peer (torchvision,
or the course code's loop where torchvision has no such op) are warmed up, then timed in
alternation (ABBA...) so both see the same machine state, each sample of a fast call after
one untimed call of its own; at small sizes the NumPy reference is timed on its own after.
CUDA work is synchronized inside the timed call.

ratio = peer median / detops median: above 1 detops is faster. Each time is shown with its
spread (+- half the interquartile range) and the ratio with its range (peer q25 / detops q75
to peer q75 / detops q25). A row with a wide spread, or whose detops and peer IQRs overlap,
is re-measured, then flagged "unstable". The header names the CPU, torch's thread count,
the versions, the load average (with a WARNING when the machine is busy) and the C
allocator: run as a program, bench fixes glibc malloc's trim and mmap thresholds first, so
that whether a call's buffers come back as fresh pages does not depend on the cases run
before it (malloc settings in the environment are kept). Ctrl-C stops: the rows measured
so far are printed and written, and the exit status is 130.

examples:
  python -m detops bench --quick
  python -m detops bench --device cuda --json bench_cuda.json --plot bench_cuda.png
  python -m detops bench --op nms --op box_iou
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help=COMMANDS["bench"],
        description="Time every benchmark case: detops, its peer and the reference, with a "
        "table of medians, spreads and speed-up ratios, JSON and a bar chart.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the cases marked quick, fewer repeats and re-measures, a 75 s budget "
        "(15-30 s on 2 CPUs)",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (default cpu); cuda needs a GPU"
    )
    parser.add_argument(
        "--op", action="append", metavar="NAME", help="only this op's cases (repeatable)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart PNG of the ratios")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per batch (default 15; quick 10)"
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="do not time the NumPy references"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detops._interrupt import held

    if getattr(args, "program", False):  # before torch allocates anything
        from detops._allocator import steady_allocator

        steady_allocator()
    try:
        with held():  # Ctrl-C waits for the imports (see detops._interrupt.held)
            from detops._atomic import atomic_write_text
            from detops.bench import (
                BenchReport,
                format_bench_table,
                plot_ratios,
                print_progress,
                run_benchmarks,
            )

            cases, settings = _prepare(args)
        report = run_benchmarks(
            cases,
            args.device,
            settings=settings,
            quick=args.quick,
            reference=not args.no_reference,
            progress=print_progress,
        )
    except KeyboardInterrupt:  # before the first case (the runner keeps finished rows)
        if args.json:  # no rows, but the file says so (and no chart: there is no ratio)
            empty = BenchReport(
                str(args.device),
                args.quick,
                settings,
                [],
                interrupted=True,
                cases_total=len(cases),
            )
            atomic_write_text(args.json, empty.to_json())
            print(f"JSON written to {args.json}")
        print(f"detops bench: interrupted after 0 of {len(cases)} cases", file=sys.stderr)
        return 130
    print(format_bench_table(report), flush=True)
    if args.json:
        atomic_write_text(args.json, report.to_json())
        print(f"JSON written to {args.json}")
    if args.plot:
        plot_ratios(report, args.plot)
        print(f"chart written to {args.plot}")
    if report.interrupted:
        print(
            f"detops bench: interrupted after {len(report.results)} of {report.total} cases",
            file=sys.stderr,
        )
        return 130
    errors = [r for r in report.results if r.note.startswith("error:")]
    return 1 if errors else 0


def _prepare(args: argparse.Namespace) -> tuple[list[BenchCase], BenchSettings]:
    """Refuse bad options; the cases to run and the settings."""
    import dataclasses

    from detops.bench import BenchSettings, select_cases
    from detops.bench.cases import BENCHMARKS
    from detops.cli import CommandError, check_output_file
    from detops.environment import device_problem

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_file(option, path)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CommandError(f"--plot {args.plot}: the chart is a PNG; give a .png path")
    if args.json and args.plot and os.path.realpath(args.json) == os.path.realpath(args.plot):
        raise CommandError(f"--json and --plot name the same file ({args.plot}); give two paths")
    device = args.device
    problem = device_problem(device, "bench")
    if problem is not None:
        raise CommandError(f"--device {device}: {problem}")
    try:
        cases = select_cases(BENCHMARKS, device, quick=args.quick, ops=args.op)
    except ValueError as error:
        raise CommandError(f"--op: {error}") from None
    if not cases:
        raise CommandError(f"no benchmark case runs on {device}")
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    if args.repeats is not None:
        if args.repeats < 1:
            raise CommandError(f"--repeats must be at least 1, got {args.repeats}")
        settings = dataclasses.replace(settings, repeats=args.repeats)
    return cases, settings
