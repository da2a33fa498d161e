"""``python -m detops bench``: time detops against its peers over the shared BENCHMARKS registry.

The cases are the same :data:`detops.testing.BENCHMARKS` that the pytest-benchmark suite
(``benchmarks/test_bench.py``) runs: each builds its inputs outside the timed call and gives
three callables, detops, the peer (torchvision or a seed-style loop) and, at small sizes,
the NumPy reference. Each is timed with warm-up and repeats; the median is reported, CUDA
work is synchronized inside the timed call, and ``ratio = peer median / detops median`` (a
speed-up, > 1 when detops is faster) is computed from the same run.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .testing.entry import BenchCase
from .testing.timing import environment_info, measure, synchronized

__all__ = [
    "BenchReport",
    "BenchResult",
    "BenchSettings",
    "format_bench_table",
    "plot_ratios",
    "run_benchmarks",
    "select_cases",
]


@dataclass(frozen=True)
class BenchSettings:
    """How hard to time. ``budget_seconds`` caps the whole run: once spent, the remaining
    cases get one timed run each and no reference; after ``stop_seconds`` the remaining
    cases are skipped (listed in the notes)."""

    warmup: int = 2
    repeats: int = 10
    max_seconds: float = 5.0  # per callable, after warm-up
    reference_warmup: int = 1
    reference_repeats: int = 3
    budget_seconds: float = math.inf
    stop_seconds: float = math.inf

    @classmethod
    def quick(cls) -> BenchSettings:
        # Sized so that ``--quick`` finishes in under two minutes on a shared 2-core CPU.
        return cls(
            warmup=1,
            repeats=5,
            max_seconds=0.75,
            reference_warmup=0,
            reference_repeats=1,
            budget_seconds=75.0,
            stop_seconds=100.0,
        )


@dataclass
class Timing:
    median: float
    runs: int
    min: float
    max: float


@dataclass
class BenchResult:
    op: str
    size: str
    device: str
    peer: str
    detops: Timing | None = None
    peer_timing: Timing | None = None
    reference: Timing | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Speed-up of detops over the peer: peer median / detops median."""
        if self.detops is None or self.peer_timing is None or self.detops.median <= 0:
            return None
        return self.peer_timing.median / self.detops.median


@dataclass
class BenchReport:
    device: str
    quick: bool
    settings: BenchSettings
    results: list[BenchResult]
    environment: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        results = []
        for r in self.results:
            item = {
                "op": r.op,
                "size": r.size,
                "device": r.device,
                "peer": r.peer,
                "detops_median_s": r.detops.median if r.detops else None,
                "peer_median_s": r.peer_timing.median if r.peer_timing else None,
                "reference_median_s": r.reference.median if r.reference else None,
                "ratio_peer_over_detops": r.ratio,
                "timings": {
                    "detops": asdict(r.detops) if r.detops else None,
                    "peer": asdict(r.peer_timing) if r.peer_timing else None,
                    "reference": asdict(r.reference) if r.reference else None,
                },
                "note": r.note,
            }
            results.append(item)
        settings = asdict(self.settings)
        for key in ("budget_seconds", "stop_seconds"):
            if not math.isfinite(settings[key]):
                settings[key] = None
        return {
            "device": self.device,
            "quick": self.quick,
            "settings": settings,
            "environment": self.environment,
            "seconds": self.seconds,
            "results": results,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def select_cases(
    cases: Sequence[BenchCase], device: str, *, quick: bool, ops: Sequence[str] | None = None
) -> list[BenchCase]:
    """The cases that run on ``device`` (and are ``quick`` when asked), optionally only
    those whose op is in ``ops``. Raises ValueError naming the known ops for an unknown one."""
    if ops:
        known = sorted({case.op for case in cases})
        unknown = [op for op in ops if op not in known]
        if unknown:
            raise ValueError(f"no benchmark for op {unknown}; known: {known}")
    device_type = torch.device(device).type
    return [
        case
        for case in cases
        if device_type in case.devices and (case.quick or not quick) and (not ops or case.op in ops)
    ]


def _time(fn: Callable[[], object], device: str, warmup: int, repeats: int, limit: float) -> Timing:
    times = measure(synchronized(fn, device), warmup=warmup, repeats=repeats, max_seconds=limit)
    return Timing(statistics.median(times), len(times), min(times), max(times))


def run_benchmarks(
    cases: Sequence[BenchCase],
    device: str,
    *,
    settings: BenchSettings,
    quick: bool = False,
    reference: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every case on ``device``. A case whose setup or timing raises is reported with
    the error in its note; the others still run."""
    start = time.monotonic()
    results = []
    for index, case in enumerate(cases, 1):
        result = BenchResult(case.op, case.size, str(device), case.peer)
        if time.monotonic() - start > settings.stop_seconds:
            result.note = "skipped: time budget spent"
            results.append(result)
            continue
        over_budget = time.monotonic() - start > settings.budget_seconds
        warmup = 0 if over_budget else settings.warmup
        repeats = 1 if over_budget else settings.repeats
        if progress:
            progress(f"[{index}/{len(cases)}] {case.op} | {case.size} | {device}")
        try:
            functions = case.setup(torch.device(device))
            result.detops = _time(functions.detops, device, warmup, repeats, settings.max_seconds)
            result.peer_timing = _time(
                functions.peer, device, warmup, repeats, settings.max_seconds
            )
            if functions.reference is not None:
                if not reference:
                    result.note = "reference not timed (--no-reference)"
                elif over_budget:
                    result.note = "reference skipped: time budget spent"
                else:
                    result.reference = _time(
                        functions.reference,
                        "cpu",
                        settings.reference_warmup,
                        settings.reference_repeats,
                        settings.max_seconds,
                    )
            if over_budget and not result.note:
                result.note = "one timed run: time budget spent"
        except Exception as exc:  # report and carry on with the other cases
            result.note = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        finally:
            functions = None
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
    return BenchReport(
        device=str(device),
        quick=quick,
        settings=settings,
        results=results,
        environment=environment_info(device),
        seconds=time.monotonic() - start,
    )


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_bench_table(report: BenchReport) -> str:
    header = ("op", "size", "device", "detops", "peer", "peer median", "ratio", "reference")
    rows = [header]
    for r in report.results:
        ratio = r.ratio
        rows.append(
            (
                r.op,
                r.size,
                r.device,
                format_seconds(r.detops.median if r.detops else None),
                _short(r.peer, 48),
                format_seconds(r.peer_timing.median if r.peer_timing else None),
                "-" if ratio is None else f"{ratio:.2f}x",
                format_seconds(r.reference.median if r.reference else None),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 5, 6, 7}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    env = report.environment
    machine = env.get("gpu") or env.get("cpu_model", env.get("processor", "?"))
    lines.append("")
    lines.append(
        f"ratio = peer median / detops median (> 1: detops is faster), medians of up to "
        f"{report.settings.repeats} runs after {report.settings.warmup} warm-up, same run."
    )
    lines.append(
        f"machine: {machine}; {env.get('cpu_count', '?')} CPUs, torch threads "
        f"{env.get('torch_threads', '?')}; torch {env.get('torch', '?')}, torchvision "
        f"{env.get('torchvision', '?')}, numpy {env.get('numpy', '?')}, python "
        f"{env.get('python', '?')}; total {report.seconds:.1f} s"
    )
    notes = [f"  {r.op} | {r.size}: {r.note}" for r in report.results if r.note]
    if notes:
        lines += ["notes:", *notes]
    return "\n".join(lines)


def plot_ratios(report: BenchReport, path: str | Path) -> Path:
    """A horizontal bar chart of the ratios (log scale, 1x marked), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .data._atomic import atomic_path

    rows = [r for r in report.results if r.ratio is not None]
    labels = [f"{r.op} | {r.size}\nvs {_short(r.peer, 40)}" for r in rows]
    ratios = [r.ratio for r in rows]
    height = max(2.5, 0.55 * len(rows) + 1.5)
    fig = Figure(figsize=(11, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#2a9d8f" if ratio >= 1 else "#e76f51" for ratio in ratios]
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, ratios, color=colors)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    for y, ratio in zip(positions, ratios, strict=True):
        ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
    env = report.environment
    machine = env.get("gpu") or env.get("cpu_model", "?")
    ax.set_xlabel("speed-up over the peer: peer median / detops median (log scale)")
    ax.set_title(f"detops bench on {report.device}: {machine}", fontsize=10)
    if rows:
        low, high = min(ratios), max(ratios)
        ax.set_xlim(min(0.5, low / 1.5), max(2.0, high * 3))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
