"""Timing for ``python -m detops bench`` and the pytest-benchmark suite.

Synchronized calls, interleaved measurement of two callables, the spread of a set of
timings (median, quartiles, min/max) and the description of the machine they ran on.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..environment import environment_info

__all__ = [
    "Timing",
    "busy_warning",
    "calibrate_calls",
    "calls_per_sample",
    "environment_info",
    "instability",
    "load_average",
    "measure",
    "measure_interleaved",
    "page_faults",
    "quartiles",
    "synchronized",
]

Timer = Callable[[], float]
FaultCounter = Callable[[], "int | None"]


def page_faults() -> int | None:
    """This process's page faults so far (minor and major, all threads), or None where
    the OS does not count them for Python (Windows). A first touch of fresh memory faults
    once per page; how much of a call's memory is fresh depends on the allocator's state
    (whether it hands back pages it kept or new ones from the OS), which earlier work in
    the process decides, so a call that faults a lot can take a different time in
    another run."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def synchronized(fn: Callable[[], Any], device: torch.device | str) -> Callable[[], Any]:
    """Wrap ``fn`` so a CUDA call is timed to completion, not to launch."""
    if torch.device(device).type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    max_seconds: float = 10.0,
    timer: Timer = time.perf_counter,
) -> list[float]:
    """Wall times of up to ``repeats`` runs of ``fn`` after ``warmup`` runs.

    Stops early (with at least one timed run) once ``max_seconds`` have been spent, so a
    slow callable cannot stall a quick run. Wrap CUDA work with :func:`synchronized`.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    budget_end = timer() + max_seconds
    for _ in range(repeats):
        start = timer()
        fn()
        times.append(timer() - start)
        if timer() > budget_end:
            break
    return times


def calls_per_sample(
    seconds_per_call: float, sample_seconds: float, max_calls: int = 10_000
) -> int:
    """How many back-to-back calls make one timed sample of about ``sample_seconds``.

    A single call of a few µs is mostly timer and scheduler noise; timing ``n`` calls and
    dividing by ``n`` (as ``timeit`` and pytest-benchmark do) keeps the noise a small share.
    """
    if sample_seconds <= 0:
        return 1
    if not seconds_per_call > 0:  # below the timer's resolution
        return max_calls
    return max(1, min(max_calls, math.ceil(sample_seconds / seconds_per_call)))


def calibrate_calls(
    fn: Callable[[], Any],
    sample_seconds: float,
    *,
    max_calls: int = 10_000,
    timer: Timer = time.perf_counter,
) -> int:
    """:func:`calls_per_sample` for ``fn``, from back-to-back runs of 1, 10, 100, ... calls
    until one run lasts a tenth of ``sample_seconds`` (as ``timeit.Timer.autorange`` does):
    a single warm call is too short to time reliably, a cold first call too slow."""
    if sample_seconds <= 0:
        return 1
    n = 1
    while True:
        start = timer()
        for _ in range(n):
            fn()
        elapsed = timer() - start
        if elapsed >= sample_seconds / 10 or n >= max_calls:
            return calls_per_sample(elapsed / n, sample_seconds, max_calls)
        n *= 10


def measure_interleaved(
    first: Callable[[], Any],
    second: Callable[[], Any],
    *,
    rounds: int,
    max_seconds: float = math.inf,
    min_rounds: int = 1,
    start_round: int = 0,
    calls: tuple[int, int] = (1, 1),
    rewarm: tuple[bool, bool] = (False, False),
    timer: Timer = time.perf_counter,
    faults: tuple[list[float], list[float]] | None = None,
    fault_counter: FaultCounter = page_faults,
) -> tuple[list[float], list[float]]:
    """Per-call wall times of ``first`` and ``second`` timed in alternation, one sample of
    each per round; a sample is ``calls[i]`` back-to-back calls, divided by their number,
    after one untimed call where ``rewarm[i]`` (so that every timed call follows a call of
    its own function, whatever ``calls[i]`` is: a sample of one call would otherwise time
    only calls made in the other function's wake, a sample of ten one such call in ten).

    Round ``k`` runs ``first`` then ``second`` when ``start_round + k`` is even and
    ``second`` then ``first`` when it is odd (ABBAAB...), so that both see the same machine
    state and neither always runs in the other's wake. Stops after ``rounds`` rounds, or
    earlier once ``max_seconds`` have passed and ``min_rounds`` rounds are done. No warm-up:
    run each callable before. Wrap CUDA work with :func:`synchronized`. With ``faults``,
    each sample's page faults per call (``fault_counter``, read outside the timed calls)
    are appended to the list of its function, where the counter gives them.

    Returns:
        (first's times, second's times), one entry per round, in seconds per call.
    """
    times: tuple[list[float], list[float]] = ([], [])
    functions = (first, second)
    begin = timer()
    for k in range(rounds):
        order = (0, 1) if (start_round + k) % 2 == 0 else (1, 0)
        for which in order:
            fn, n = functions[which], calls[which]
            if rewarm[which]:
                fn()
            faults_before = fault_counter() if faults is not None else None
            start = timer()
            for _ in range(n):
                fn()
            times[which].append((timer() - start) / n)
            if faults is not None and faults_before is not None:
                faults_after = fault_counter()
                if faults_after is not None:
                    faults[which].append((faults_after - faults_before) / n)
        if k + 1 >= min_rounds and timer() - begin > max_seconds:
            break
    return times


def quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(q25, median, q75) of ``samples``, interpolated between order statistics (NumPy's
    default ``linear`` method, ``statistics.quantiles(method="inclusive")``). One sample is
    its own quartiles."""
    if not samples:
        raise ValueError("quartiles: samples must not be empty")
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q25, median, q75 = statistics.quantiles(samples, n=4, method="inclusive")
    return q25, median, q75


@dataclass
class Timing:
    """The spread of the timed runs of one callable, in seconds."""

    median: float
    runs: int
    min: float
    max: float
    q25: float
    q75: float
    samples: list[float] = field(default_factory=list, repr=False)
    calls_per_sample: int = 1  # each sample is the mean of this many back-to-back calls
    faults_per_call: float | None = None  # median over the samples (see page_faults)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[float],
        calls_per_sample: int = 1,
        faults_per_call: Sequence[float] = (),
    ) -> Timing:
        """The spread of ``samples``; ``faults_per_call``, one per sample where counted,
        gives :attr:`faults_per_call` (their median)."""
        q25, median, q75 = quartiles(samples)
        return cls(
            median,
            len(samples),
            min(samples),
            max(samples),
            q25,
            q75,
            list(samples),
            calls_per_sample,
            statistics.median(faults_per_call) if faults_per_call else None,
        )

    @property
    def iqr(self) -> float:
        """Interquartile range, q75 - q25."""
        return self.q75 - self.q25

    @property
    def relative_iqr(self) -> float:
        """IQR / median (inf for a zero median)."""
        return self.iqr / self.median if self.median > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "runs": self.runs,
            "min": self.min,
            "max": self.max,
            "q25": self.q25,
            "q75": self.q75,
            "iqr": self.iqr,
            "calls_per_sample": self.calls_per_sample,
            "page_faults_per_call": self.faults_per_call,
            "samples": list(self.samples),
        }


def instability(
    detops: Timing, peer: Timing, *, max_relative_iqr: float = 0.25, min_runs: int = 3
) -> str | None:
    """Why a detops-vs-peer comparison is not a clean figure, or None when it is.

    Unstable: fewer than ``min_runs`` runs on either side (no spread to speak of), an IQR
    wider than ``max_relative_iqr`` times the median on either side, or detops' and the
    peer's IQRs ([q25, q75]) overlapping (the run cannot tell which one is faster).
    """
    reasons = []
    runs = min(detops.runs, peer.runs)
    if runs < min_runs:
        reasons.append(f"{runs} timed run{'s' if runs != 1 else ''}, too few for a spread")
    for name, timing in (("detops", detops), ("peer", peer)):
        if timing.relative_iqr > max_relative_iqr:
            reasons.append(f"{name} IQR is {timing.relative_iqr:.0%} of its median")
    if detops.q25 <= peer.q75 and peer.q25 <= detops.q75:
        reasons.append("detops and peer IQRs overlap")
    return "; ".join(reasons) or None


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def own_load_share(cpu_seconds: float, wall_seconds: float) -> float:
    """This process's share of the 1-minute load average at the end of a run: the CPUs it
    kept busy on average (CPU seconds over wall seconds), weighted as the kernel's
    exponential average over a minute weighs the last ``wall_seconds``."""
    if wall_seconds <= 0:
        return 0.0
    return cpu_seconds / wall_seconds * (1.0 - math.exp(-wall_seconds / 60.0))


def busy_warning(
    cpu_count: int | None,
    load_start: float | None,
    load_end: float | None,
    own_load: float = 0.0,
) -> str | None:
    """A warning line when the machine was busy, or None.

    Busy: the 1-minute load average above half the CPU count at the start, or at the end
    once this run's own share of it (``own_load``) is taken off: on a 2-CPU machine the
    bench alone would otherwise always look busy at the end.
    """
    if not cpu_count:
        return None
    limit = 0.5 * cpu_count
    busy = []
    if load_start is not None and load_start > limit:
        busy.append(f"{load_start:.2f} at start")
    if load_end is not None and load_end - own_load > limit:
        busy.append(f"{load_end:.2f} at end, {own_load:.2f} of it this run")
    if not busy:
        return None
    return (
        f"WARNING: the machine is busy (1-minute load average {', '.join(busy)}; over "
        f"{limit:g} = half of {cpu_count} CPUs): figures may be unreliable."
    )
