"""Results of ``python -m detops bench``: rows, the report, its JSON, text table and chart."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .timing import Timing

if TYPE_CHECKING:
    from .runner import BenchSettings

__all__ = [
    "BenchReport",
    "BenchResult",
    "FAULT_NOTE_MIN",
    "fault_note",
    "format_bench_table",
    "format_ratio",
    "format_seconds",
    "plot_ratios",
    "print_progress",
]


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
    unstable: bool = False
    unstable_reason: str = ""
    retries: int = 0
    workload: str = ""  # what the case times (its BenchCase.notes)

    @property
    def ratio(self) -> float | None:
        """Speed-up of detops over the peer: peer median / detops median."""
        if self.detops is None or self.peer_timing is None or self.detops.median <= 0:
            return None
        return self.peer_timing.median / self.detops.median

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """(peer q25 / detops q75, peer q75 / detops q25): the ratio's spread."""
        detops, peer = self.detops, self.peer_timing
        if detops is None or peer is None or detops.median <= 0 or detops.q25 <= 0:
            return None
        return (peer.q25 / detops.q75, peer.q75 / detops.q25)

    def to_dict(self) -> dict[str, Any]:
        low_high = self.ratio_range
        timings = {"detops": self.detops, "peer": self.peer_timing, "reference": self.reference}
        return {
            "op": self.op,
            "size": self.size,
            "device": self.device,
            "peer": self.peer,
            "workload": self.workload,
            "detops_median_s": self.detops.median if self.detops else None,
            "peer_median_s": self.peer_timing.median if self.peer_timing else None,
            "reference_median_s": self.reference.median if self.reference else None,
            "ratio_peer_over_detops": self.ratio,
            "ratio_low": low_high[0] if low_high else None,
            "ratio_high": low_high[1] if low_high else None,
            "unstable": self.unstable,
            "unstable_reason": self.unstable_reason,
            "retries": self.retries,
            "timings": {k: t.to_dict() if t else None for k, t in timings.items()},
            "note": self.note,
        }


@dataclass
class BenchReport:
    device: str
    quick: bool
    settings: BenchSettings
    results: list[BenchResult]
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    cases_total: int | None = None  # None: every case has a row
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.results) if self.cases_total is None else self.cases_total

    def to_dict(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        for key in ("budget_seconds", "stop_seconds"):
            if not math.isfinite(settings[key]):
                settings[key] = None
        return {
            "device": self.device,
            "quick": self.quick,
            "settings": settings,
            "environment": self.environment,
            "warnings": self.warnings,
            "seconds": self.seconds,
            "interrupted": self.interrupted,
            "cases_done": len(self.results),
            "cases_total": self.total,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


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


def format_ratio(ratio: float) -> str:
    """Two decimals, or two significant digits below 0.1 (``0.0077``, not ``0.00``)."""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def _with_spread(timing: Timing | None) -> str:
    """``1.23 ms +-4%``: the median and half the IQR as a share of it."""
    if timing is None:
        return "-"
    half = 0.5 * timing.relative_iqr
    spread = f"+-{half:.0%}" if math.isfinite(half) else "+-?"
    return f"{format_seconds(timing.median)} {spread}"


def _ratio_range(result: BenchResult) -> str:
    low_high = result.ratio_range
    return "-" if low_high is None else f"{format_ratio(low_high[0])}-{format_ratio(low_high[1])}"


def _machine(env: dict[str, Any]) -> str:
    return env.get("gpu") or env.get("cpu_model", env.get("processor", "?"))


def _load(value: Any) -> str:
    return "?" if value is None else f"{value:.2f}"


def format_header(report: BenchReport) -> list[str]:
    """The lines above the table: machine, threads, versions, load, warnings."""
    env = report.environment
    lines = [
        f"detops bench on {report.device}: {_machine(env)}; {env.get('cpu_count', '?')} CPUs, "
        f"torch threads {env.get('torch_threads', '?')}",
        f"torch {env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}, numpy "
        f"{env.get('numpy', '?')}, python {env.get('python', '?')}",
        f"load average (1 min): {_load(env.get('load_average_1m_start'))} at start, "
        f"{_load(env.get('load_average_1m_end'))} at end, this run's share of it "
        f"{_load(env.get('own_load_share'))}",
    ]
    if env.get("allocator"):
        lines.append(f"allocator: {env['allocator']}")
    if env.get("cuda"):
        lines[0] += f"; CUDA {env['cuda']}"
    lines += report.warnings
    return lines


# A side faulting this many pages a call (1 MiB of fresh 4 KiB pages) gets a note.
FAULT_NOTE_MIN = 256


def fault_note(result: BenchResult) -> str:
    """A note where detops or the peer faults FAULT_NOTE_MIN pages a call or more: their
    first touches of fresh memory, whose cost rides on the allocator's state (see
    :func:`detops.bench.timing.page_faults`), so its time can differ between runs."""
    counts = {
        name: timing.faults_per_call
        for name, timing in (("detops", result.detops), ("peer", result.peer_timing))
        if timing is not None and timing.faults_per_call is not None
    }
    if not any(count >= FAULT_NOTE_MIN for count in counts.values()):
        return ""
    listed = ", ".join(f"{name} {count:.0f}" for name, count in counts.items())
    return f"page faults a call: {listed}"


_FAULT_FOOTNOTE = (
    "page faults a call: first touches of fresh memory, noted from "
    f"{FAULT_NOTE_MIN} a call; how much of a call's memory comes fresh depends on the "
    "allocator's state, which earlier work in the process decides, so such a row can read "
    "differently in another run."
)


def format_bench_table(report: BenchReport) -> str:
    columns = ("op", "size", "device", "detops", "peer", "peer median", "ratio", "range")
    header = (*columns, "reference", "flag")
    rows = [header]
    for r in report.results:
        ratio = r.ratio
        rows.append(
            (
                r.op,
                r.size,
                r.device,
                _with_spread(r.detops),
                _short(r.peer, _PEER_WIDTH),
                _with_spread(r.peer_timing),
                "-" if ratio is None else f"{format_ratio(ratio)}x",
                _ratio_range(r),
                format_seconds(r.reference.median if r.reference else None),
                "unstable" if r.unstable else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 5, 6, 7, 8}
    lines = [*format_header(report), ""]
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    s = report.settings
    lines += [
        "",
        "ratio = peer median / detops median (> 1: detops is faster); range = peer q25 / "
        "detops q75 to peer q75 / detops q25.",
        f"+-: half the interquartile range (q25-q75) over the median. Timed runs alternate "
        f"detops and peer (ABBA...), up to {s.repeats} rounds after {s.warmup} warm-up each; "
        f"a sample of a call under {s.rewarm_samples * s.sample_seconds * 1e3:g} ms starts "
        "with one untimed call.",
        f"unstable: an IQR over {s.max_relative_iqr:.0%} of the median, detops and peer IQRs "
        f"overlapping, or under {s.min_repeats} runs, after up to {s.max_retries} re-measure(s).",
        f"total {report.seconds:.1f} s",
    ]
    if report.interrupted:
        lines.append(f"INTERRUPTED: {len(report.results)} of {report.total} cases measured.")
    notes = []
    faulting = False
    for r in report.results:
        faults = fault_note(r)
        faulting = faulting or bool(faults)
        unstable = f"unstable: {r.unstable_reason}" if r.unstable else ""
        text = "; ".join(part for part in (r.note, unstable, faults) if part)
        if text:
            notes.append(f"  {r.op} | {r.size}: {text}")
    if notes:
        lines += ["notes:", *notes]
        if faulting:
            lines.append(_FAULT_FOOTNOTE)
    lines += _workloads(report.results)
    return "\n".join(lines)


_PEER_WIDTH = 48  # the table's peer column cuts longer names


def _workloads(results: list[BenchResult]) -> list[str]:
    """ "what each row times": per op and workload (rows of the same op sharing one), its
    sizes and the case's description, and the peer in full where the table cut it."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        if r.workload or len(r.peer) > _PEER_WIDTH:
            groups.setdefault((r.op, r.workload, r.peer), []).append(r.size)
    lines = []
    for (op, workload, peer), sizes in groups.items():
        parts = [workload] if workload else []
        if len(peer) > _PEER_WIDTH:
            parts.append(f"peer: {peer}")
        lines.append(f"  {op} ({'; '.join(dict.fromkeys(sizes))}): {'; '.join(parts)}")
    return ["what each row times:", *lines] if lines else []


def plot_ratios(report: BenchReport, path: str | Path) -> Path:
    """A horizontal bar chart of the ratios (log scale, 1x marked) with their ranges as
    error bars and unstable rows hatched, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .._atomic import atomic_path

    measured = [(r, ratio) for r in report.results if (ratio := r.ratio) is not None]
    rows = [r for r, _ in measured]
    labels = [f"{r.op} | {r.size}\nvs {_short(r.peer, 40)}" for r in rows]
    ratios = [ratio for _, ratio in measured]
    ranges = [r.ratio_range or (ratio, ratio) for r, ratio in measured]
    height = max(2.5, 0.55 * len(rows) + 1.8)
    fig = Figure(figsize=(11, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positions = list(range(len(rows)))[::-1]
    for y, r, ratio, (low, high) in zip(positions, rows, ratios, ranges, strict=True):
        color = "#2a9d8f" if ratio >= 1 else "#e76f51"
        ax.barh(
            y,
            ratio,
            color=color,
            alpha=0.45 if r.unstable else 1.0,
            hatch="//" if r.unstable else None,
            edgecolor="#444444" if r.unstable else color,
        )
        ax.errorbar(
            ratio,
            y,
            xerr=[[max(ratio - low, 0.0)], [max(high - ratio, 0.0)]],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
        text = f" {format_ratio(ratio)}x [{format_ratio(low)}-{format_ratio(high)}]"
        text += " unstable" if r.unstable else ""
        ax.text(max(high, ratio), y, text, va="center", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel(
        "speed-up: peer median / detops median (log scale)\n"
        "whiskers: peer q25 / detops q75 to peer q75 / detops q25"
    )
    title = f"detops bench on {report.device}: {_machine(report.environment)}"
    if report.interrupted:
        title += f" (interrupted: {len(report.results)} of {report.total} cases)"
    if report.warnings:
        title += "\nmachine busy: figures may be unreliable"
    ax.set_title(title, fontsize=10)
    if any(r.unstable for r in rows):
        ax.legend(
            handles=[Patch(facecolor="white", edgecolor="#444444", hatch="//", label="unstable")],
            loc="lower right",
            fontsize=8,
        )
    if rows:
        low = min(low for low, _ in ranges)
        high = max(high for _, high in ranges)
        ax.set_xlim(min(0.5, low / 1.5), max(2.0, high * 20))  # room for the labels
        ax.set_ylim(-0.6, len(rows) - 0.4)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
