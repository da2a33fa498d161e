"""``python -m detops verify``: run registry entries against their references."""

from __future__ import annotations

import argparse

import hypothesis
from hypothesis import HealthCheck, given, settings

from detops.testing import REGISTRY, entry_by_name


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check ops against their NumPy references on generated inputs",
        description="Check every registry op against its NumPy reference on "
        "hypothesis-generated inputs; exits non-zero on any failure.",
    )
    parser.add_argument("--op", action="append", metavar="NAME", help="only this op (repeatable)")
    parser.add_argument("--examples", type=int, default=200, help="cases per op and dtype")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.set_defaults(func=run)


def _verify_one(entry, dtype, examples: int, seed: int) -> dict:
    stats = {"cases": 0, "abs": 0.0, "rel": 0.0, "error": None}

    @hypothesis.seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=entry.strategy())
    def check(case):
        result = entry.check(case, dtype, "cpu")
        stats["cases"] += 1
        stats["abs"] = max(stats["abs"], result.max_abs_error)
        stats["rel"] = max(stats["rel"], result.max_rel_error)
        if not result.ok:
            raise AssertionError(f"on {case!r}\n{result.message}")

    try:
        check()
    except AssertionError as error:
        stats["error"] = str(error)
    return stats


def run(args: argparse.Namespace) -> int:
    entries = [entry_by_name(n) for n in args.op] if args.op else list(REGISTRY)
    failures = 0
    print(f"{'op':32} {'dtype':8} {'cases':>5} {'max abs err':>12} {'max rel err':>12}  verdict")
    for entry in entries:
        for dtype in entry.dtypes:
            stats = _verify_one(entry, dtype, args.examples, args.seed)
            verdict = "FAIL" if stats["error"] else "PASS"
            failures += verdict == "FAIL"
            name = str(dtype).removeprefix("torch.")
            print(
                f"{entry.name:32} {name:8} {stats['cases']:5d} {stats['abs']:12.3g} "
                f"{stats['rel']:12.3g}  {verdict}"
            )
            if stats["error"]:
                print("    " + stats["error"].replace("\n", "\n    "))
    return 1 if failures else 0
