"""``python -m detops verify``: check detops' ops, or your own, against the NumPy references."""

from __future__ import annotations

import argparse
import sys

from detops._seed_names import SEED_NAMES

from . import COMMANDS

EPILOG = f"""\
targets:
  (no --impl)              detops' own ops: every registry entry against its reference
  --impl path/to/file.py   your functions, found by the course code's names
  --impl some.module       the same, from an importable module
  --impl torchvision       torchvision.ops' nms, batched_nms (as class_spec_nms), box_iou,
                           clip_boxes_to_image and sigmoid_focal_loss

seed names looked up with --impl:
  {", ".join(SEED_NAMES)}

Each function is called with the course code's per-image signature (one image's (N, 5)
boxes, an integer stride). Hand-made probes run first, then generated float32 and float64
cases; a failure is shrunk to the smallest failing input and shown with the expected and
actual output and, where it matches a known mistake, a hint.

exit status: 0 when every checked function passes (MISSING and SKIPPED do not count),
1 when one fails, 2 when the target cannot be loaded or holds none of the names.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help=COMMANDS["verify"],
        description="Check functions against detops' NumPy references on hand-made probes and "
        "hypothesis-generated inputs, shrinking any failure to the smallest failing input.",
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
        help="only this function (registry entry name, or seed name with --impl); repeatable",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help="generated cases per function and dtype (default 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="per-call time limit for the function under test (default 10)",
    )
    parser.add_argument("--device", default="cpu", help="device of the inputs (default cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from detops.data._atomic import atomic_write_text
    from detops.verify import (
        DEFAULT_EXAMPLES,
        DEFAULT_TIMEOUT,
        TargetError,
        format_report,
        load_target,
        report_to_json,
        verify,
    )

    examples = DEFAULT_EXAMPLES if args.examples is None else args.examples
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    if examples < 1:
        print("detops verify: --examples must be at least 1", file=sys.stderr)
        return 2
    if not timeout > 0:
        print("detops verify: --timeout must be positive", file=sys.stderr)
        return 2
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("detops verify: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 2
    try:
        target = load_target(args.impl)
        if target.functions is not None and not target.functions:
            raise TargetError(
                f"--impl {args.impl}: defines none of the seed's functions "
                f"({', '.join(SEED_NAMES)})"
            )
        report = verify(
            target,
            names=args.op,
            examples=examples,
            seed=args.seed,
            timeout=timeout,
            device=args.device,
        )
    except TargetError as error:
        print(f"detops verify: {error}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    if args.json:
        atomic_write_text(args.json, report_to_json(report))
        print(f"report written to {args.json}")
    return 0 if report.passed else 1
