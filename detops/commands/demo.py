"""``python -m detops demo``: everything detops does, in a few minutes, written to one folder.

Run by ``make demo``. Writes (atomically, file by file) into ``--out`` (default ``demo/``):

* ``verify_detops.txt/.json``: detops' ops against the NumPy references;
* ``verify_torchvision.txt/.json``: torchvision's ops against the same references, with the
  places it departs (NaN scores, zero-area IoU, the class-offset trick in float16, ...);
* ``bench.txt/.json/.png``: the quick benchmark table and the chart of speed-ups;
* ``train/``: a short training run on a synthetic set (``data/``): loss curve, mAP
  (``metrics.json``), checkpoint and the training log;
* ``detections/``: annotated detection PNGs of val images from that run;
* ``index.txt``: where each result is.

A step that fails is reported and the others still run; the exit status is 0 only when
every step ran and detops' own verify passed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import COMMANDS

DEMO_EXAMPLES = 25
# The demo's training run: small enough for a few minutes on 2 CPU cores.
DEMO_ITERATIONS = 200
DEMO_TRAIN_IMAGES = 256
DEMO_VAL_IMAGES = 64
DEMO_IMAGE_SIZE = 96
DEMO_DETECTION_IMAGES = 6


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="The whole tour in a few minutes on 2 CPU cores: verify tables for detops "
        "and torchvision, the quick benchmark with its chart, a short synthetic training run "
        "(loss curve, mAP) and annotated detection PNGs.",
    )
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument(
        "--examples",
        type=int,
        default=DEMO_EXAMPLES,
        help=f"generated verify cases per op and dtype (default {DEMO_EXAMPLES})",
    )
    parser.add_argument(
        "--train-iterations",
        type=int,
        default=DEMO_ITERATIONS,
        help=f"training iterations of the demo run (default {DEMO_ITERATIONS})",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["verify", "torchvision", "bench", "train"],
        help="leave out a step (repeatable)",
    )
    parser.set_defaults(func=run)


class _Tee(io.TextIOBase):
    """Write to the console and keep a copy."""

    def __init__(self, stream):
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def getvalue(self) -> str:
        return "".join(self.parts)


def _run_cli(argv: list[str], program: bool = False) -> tuple[int, str]:
    """Run ``python -m detops ARGV`` in-process (as the program, where the demo runs as
    one: see :func:`detops.cli.main`); returns (status, what it printed)."""
    from detops.cli import main

    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        try:
            code = main(argv, program=program)
        except SystemExit as exit_:  # argparse errors
            code = int(exit_.code or 0)
    if code == 130:  # the step was interrupted (Ctrl-C): stop the demo too
        raise KeyboardInterrupt
    return code, tee.getvalue()


def _verify_step(out: Path, name: str, impl: str | None, examples: int) -> tuple[int, list[Path]]:
    from detops._atomic import atomic_write_text

    text_path, json_path = out / f"verify_{name}.txt", out / f"verify_{name}.json"
    argv = ["verify", "--examples", str(examples), "--json", str(json_path)]
    if impl:
        argv += ["--impl", impl]
    code, text = _run_cli(argv)
    atomic_write_text(text_path, text)
    return code, [text_path, json_path]


def _bench_step(out: Path, program: bool) -> tuple[int, list[Path]]:
    from detops._atomic import atomic_write_text

    paths = [out / "bench.txt", out / "bench.json", out / "bench.png"]
    argv = ["bench", "--quick", "--json", str(paths[1]), "--plot", str(paths[2])]
    code, text = _run_cli(argv, program)
    atomic_write_text(paths[0], text)
    return code, paths


def _train_step(out: Path, iterations: int) -> tuple[int, list[Path]]:
    """``detops train`` on a small synthetic set, then ``detops detect`` on val images."""
    import json

    missing = [name for name in ("train", "detect") if name not in COMMANDS]
    if missing:
        raise RuntimeError(f"this detops version has no {' / '.join(missing)} command")
    data_dir, train_dir, detections = out / "data", out / "train", out / "detections"
    code, text = _run_cli(
        [
            "train",
            "--data",
            "synthetic",
            "--data-dir",
            str(data_dir),
            "--num-train",
            str(DEMO_TRAIN_IMAGES),
            "--num-val",
            str(DEMO_VAL_IMAGES),
            "--image-size",
            str(DEMO_IMAGE_SIZE),
            "--iterations",
            str(iterations),
            "--output-dir",
            str(train_dir),
            # One thread: on a busy 2-core machine two OpenMP threads spin against other
            # processes and ran 10x slower (measured); on an idle one the cost is small.
            "--threads",
            "1",
        ]
    )
    from detops._atomic import atomic_write_text

    atomic_write_text(train_dir / "train.txt", text)
    paths = [
        train_dir / "train.txt",
        train_dir / "metrics.json",
        train_dir / "loss_curve.png",
        train_dir / "val_grid.png",
    ]
    if code != 0:
        return code, paths
    images = sorted((data_dir / "images").glob("val_*.png"))[:DEMO_DETECTION_IMAGES]
    code, text = _run_cli(
        [
            "detect",
            *map(str, images),
            "--checkpoint",
            str(train_dir / "checkpoint.pt"),
            "--output-dir",
            str(detections),
        ]
    )
    paths += sorted(detections.glob("*.png"))
    metrics = train_dir / "metrics.json"
    if metrics.exists():
        print(
            f"demo: val mAP@0.5 after {iterations} iterations = "
            f"{json.loads(metrics.read_text())['map_50']:.3f}"
        )
    return code, paths


def run(args: argparse.Namespace) -> int:
    from detops.cli import CommandError

    # Checked before anything runs or is written (the steps would only find out later).
    if args.examples < 1:
        raise CommandError(f"--examples must be at least 1, got {args.examples}")
    if args.train_iterations < 1:
        raise CommandError(f"--train-iterations must be at least 1, got {args.train_iterations}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {args.out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, str, Callable[[], tuple[int, list[Path]]]]] = []
    if "verify" not in args.skip:
        steps.append(
            (
                "verify detops",
                "detops' ops against the NumPy references",
                lambda: _verify_step(out, "detops", None, args.examples),
            )
        )
    if "torchvision" not in args.skip:
        steps.append(
            (
                "verify torchvision",
                "torchvision.ops against the same references (DEPARTS rows are its departures)",
                lambda: _verify_step(out, "torchvision", "torchvision", args.examples),
            )
        )
    if "bench" not in args.skip:
        program = getattr(args, "program", False)
        steps.append(
            ("bench --quick", "speed-ups over the peers", lambda: _bench_step(out, program))
        )
    if "train" not in args.skip:
        steps.append(
            (
                "train + detect",
                "short synthetic training run: loss curve, mAP, annotated detections",
                lambda: _train_step(out, args.train_iterations),
            )
        )

    from detops._atomic import atomic_write_text

    summary: list[str] = []
    ok = True
    start = time.monotonic()
    index = out / "index.txt"
    for title, what, step in steps:
        print(f"\n=== demo: {title} ===", flush=True)
        began = time.monotonic()
        try:
            code, paths = step()
            status = "ok" if code == 0 else f"exit {code}"
            if code != 0:  # torchvision too: it departs, and a FAIL there is verify's error
                ok = False
        except KeyboardInterrupt:
            lines = [f"detops demo, interrupted during {title}", *summary]
            atomic_write_text(index, "\n".join(lines) + "\n")
            print(
                f"\ndetops demo: interrupted during {title}; the steps before it are listed "
                f"in {index}; run it again to redo the rest (training resumes from its "
                "checkpoint)",
                file=sys.stderr,
                flush=True,
            )
            return 130
        except Exception as exc:
            if getattr(args, "debug", False):
                traceback.print_exc()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            status, paths, ok = f"failed: {type(exc).__name__}: {message}", [], False
            print(f"detops demo: {title} {status}", file=sys.stderr, flush=True)
        seconds = time.monotonic() - began
        summary.append(f"{title} ({status}, {seconds:.0f} s): {what}")
        summary += [f"    {path}" for path in paths if Path(path).exists()]

    lines = [f"detops demo, {time.monotonic() - start:.0f} s", *summary]
    atomic_write_text(index, "\n".join(lines) + "\n")
    print("\n=== demo: results ===")
    print("\n".join(lines))
    print(f"(this list: {index})")
    return 0 if ok else 1
