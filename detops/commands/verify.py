"""``python -m detops verify``: check detops' ops, or your own, against the NumPy references."""

from __future__ import annotations

import argparse
import importlib
import sys

from detops._interrupt import held
from detops._seed_names import SEED_NAMES

from . import COMMANDS

DEFAULT_EXAMPLES = 100  # detops.verify.DEFAULT_EXAMPLES, kept here so --help loads no torch
DEFAULT_TIMEOUT = 10.0  # detops.verify.DEFAULT_TIMEOUT
MAX_TIMEOUT = 86400.0  # detops.verify.harness.MAX_TIMEOUT
SHRINK_SECONDS = 10.0  # detops.verify.harness.SHRINK_SECONDS


EPILOG = f"""\
targets:
  (no --impl)              detops' own ops: every registry entry against its reference
  --impl path/to/file.py   your functions, found by the course code's names
  --impl some.module       the same, from an importable module
  --impl torchvision       torchvision.ops' nms, batched_nms (as class_spec_nms), box_iou,
                           clip_boxes_to_image and sigmoid_focal_loss

course function names looked up with --impl:
  {", ".join(SEED_NAMES)}

Each function is called with the course code's per-image signature (one image's (N, 5)
boxes, an integer stride). Hand-made probes run first, then generated float32 and float64
cases inside the shared contract (the inputs the course's pipeline produces, where the
course code and torchvision agree); a failure is shrunk to the smallest failing input and
shown with the expected and actual output and, where re-running a known mistake gives the
same output, a hint.

verdicts: PASS; DEPARTS (right on the shared contract, different only where detops
deliberately goes further: NaN, empty inputs, float16, ...); FAIL (wrong on the shared
contract, or a crash, hang, input mutation, wrong type, shape, dtype or device there).

exit status: 0 when no checked function FAILs (with --strict: none FAILs or DEPARTS;
MISSING and SKIPPED do not count), 1 otherwise, 2 for a bad argument or a target that
cannot be loaded or holds none of the names, 130 on Ctrl-C (the functions finished by then
are reported, and written to --json with "interrupted": true).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help=COMMANDS["verify"],
        description="Check functions against detops' NumPy references on hand-made probes and "
        "hypothesis-generated inputs, shrinking any failure toward the smallest failing input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--impl",
        metavar="TARGET",
        help="a .py file, a module name or 'torchvision' (default: detops' own registry)",
    )
    parser.add_argument(
        "--op",
        action="append",
        metavar="NAME",
        help="only this function (registry entry name, or course function name with --impl); "
        "repeatable",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help=f"generated cases per function and dtype (default {DEFAULT_EXAMPLES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"per-call time limit for the function under test (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--shrink-seconds",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time for shrinking each failure to a smaller input (default "
        f"{SHRINK_SECONDS:g}; a hang adds 40 tries at the shorter limit it is shrunk with); "
        "0 switches shrinking off: the first failing input found is reported",
    )
    parser.add_argument(
        "--device", default="cpu", help="device of the inputs: cpu or cuda[:N] (default cpu)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="departures from detops fail too (exit status 1 on DEPARTS)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr while it runs (one line per function, or a bar on a terminal)",
    )
    parser.set_defaults(func=run)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse a bad option value, and fill in the defaults."""
    from detops.cli import CommandError, check_output_file

    args.examples = DEFAULT_EXAMPLES if args.examples is None else args.examples
    args.timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    if args.examples < 1:
        raise CommandError(f"--examples must be at least 1, got {args.examples}")
    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise CommandError(
            f"--timeout must be positive and at most {MAX_TIMEOUT:g} s (a day), "
            f"got {args.timeout:g}"
        )
    if args.shrink_seconds is None:
        args.shrink_seconds = SHRINK_SECONDS
    if not 0 <= args.shrink_seconds <= MAX_TIMEOUT:
        raise CommandError(
            f"--shrink-seconds must be at least 0 (0: no shrinking) and at most "
            f"{MAX_TIMEOUT:g} s (a day), got {args.shrink_seconds:g}"
        )
    if args.json:
        check_output_file("--json", args.json)


def run(args: argparse.Namespace) -> int:
    try:
        with held():
            _check_options(args)
            importlib.import_module("detops.verify.harness")  # torch, hypothesis: 2-5 s
    except KeyboardInterrupt:
        return _interrupted_before_the_first_function(args)
    return _verify(args)


def _interrupted_before_the_first_function(args: argparse.Namespace) -> int:
    """Ctrl-C before any function was done: the --json says so, with no functions."""
    if args.json:
        from detops._atomic import atomic_write_text
        from detops.environment import environment_info
        from detops.verify import VerifyReport, report_to_json
        from detops.verify.harness import device_problem

        label = args.impl or "detops registry (fast ops vs NumPy references)"
        mode = "registry" if args.impl is None else "functions"
        empty = VerifyReport(
            label,
            mode,
            args.examples,
            args.seed,
            args.timeout,
            args.device,
            [],
            environment={} if device_problem(args.device) else environment_info(args.device),
            interrupted=True,
        )
        atomic_write_text(args.json, report_to_json(empty))
        print(f"report written to {args.json}")
    print("detops verify: interrupted before the first function", file=sys.stderr)
    return 130


def _verify(args: argparse.Namespace) -> int:
    import torch

    from detops._atomic import atomic_write_text
    from detops.cli import CommandError
    from detops.verify import TargetError, format_report, load_target, report_to_json, verify
    from detops.verify.harness import (
        ForkServer,
        check_course_names,
        check_target_spec,
        device_problem,
        stderr_progress,
        stdout_to_stderr,
        target_source,
    )

    problem = device_problem(args.device)
    if problem is not None:
        raise CommandError(f"--device {args.device}: {problem}")
    device = args.device

    server = None
    try:
        if args.impl is not None:  # what can be refused before anything imports the target
            check_course_names(args.op)
            if args.impl != "torchvision":
                check_target_spec(args.impl)
        with stdout_to_stderr():  # the target's prints: stdout holds only the report
            on_cpu = torch.device(device).type == "cpu"
            if args.impl not in (None, "torchvision") and on_cpu and ForkServer.available():
                # The worker server imports the target first: an import that ends its
                # process (os._exit) or hangs is reported, instead of ending or hanging
                # this one.
                server = ForkServer(target_source(args.impl))
                problem = server.wait_started()
                if problem is not None and server.import_failure == "ended":
                    raise CommandError(
                        f"--impl {args.impl}: importing it ended the process that imported "
                        f"it: {problem}; verify imports your file to find its functions and "
                        "cannot go on"
                    )
                if problem is not None and server.import_failure == "hung":
                    raise CommandError(
                        f"--impl {args.impl}: importing it did not finish: {problem}; verify "
                        "imports your file to find its functions and cannot go on"
                    )
            target = load_target(args.impl)
            if target.functions is not None and not target.functions:
                raise TargetError(
                    f"--impl {args.impl}: defines none of the course code's functions "
                    f"({', '.join(SEED_NAMES)})"
                )
            report = verify(
                target,
                names=args.op,
                examples=args.examples,
                seed=args.seed,
                timeout=args.timeout,
                device=device,
                shrink_seconds=args.shrink_seconds,
                progress=None if args.quiet else stderr_progress(),
                _server=server,
            )
    except TargetError as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:  # before the first function (verify keeps finished ones)
        return _interrupted_before_the_first_function(args)
    finally:
        if server is not None:  # (verify closes it too; a second close does nothing)
            server.close()
    print(format_report(report, strict=args.strict), flush=True)
    if args.json:
        atomic_write_text(args.json, report_to_json(report))
        print(f"report written to {args.json}")
    if report.interrupted:
        print(
            f"detops verify: interrupted after {len(report.functions)} of {report.total} functions",
            file=sys.stderr,
            flush=True,
        )
        return 130
    ok = report.passed_strict if args.strict else report.passed
    return 0 if ok else 1
