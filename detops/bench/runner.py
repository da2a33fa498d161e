"""Run the benchmark cases: interleaved timing of detops and its peer, re-measuring of
unstable rows, the NumPy reference on its own, a time budget, and Ctrl-C handling.

The cases are the same :data:`detops.bench.cases.BENCHMARKS` that the pytest-benchmark suite
(``benchmarks/test_bench.py``) runs: each builds its inputs outside the timed call and gives
three callables, detops, the peer (torchvision or a course-style loop) and, at small sizes,
the NumPy reference.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._allocator import allocator_description
from .._interrupt import check as check_interrupt
from .cases._case import BenchCase, BenchFunctions
from .report import BenchReport, BenchResult
from .timing import (
    Timer,
    Timing,
    busy_warning,
    calibrate_calls,
    environment_info,
    instability,
    load_average,
    measure,
    measure_interleaved,
    own_load_share,
    synchronized,
)

__all__ = ["BenchSettings", "run_benchmarks", "select_cases"]


@dataclass(frozen=True)
class BenchSettings:
    """How hard to time.

    Per case: ``warmup`` runs of detops and of the peer, then up to ``repeats`` interleaved
    rounds (one timed sample of each), cut short after ``max_seconds`` per callable once
    ``min_repeats`` rounds are done. A sample is as many back-to-back calls as fill
    ``sample_seconds`` (:func:`detops.bench.calibrate_calls`), divided by their number: one
    call where a warm-up run after the first already took that long. A callable whose
    fastest warm-up call took less than ``rewarm_samples`` sample lengths is called once,
    untimed, before each of its samples: every timed call then follows a call of the same
    function, so the number of calls in a sample (which the machine's speed at calibration
    decides) does not decide how many timed calls run in the other function's wake, cache-
    and allocator-wise (two back-to-back quick runs read a course-style peer at 5.7 ms,
    one call a sample, then at 2.4 ms, three a sample). A row whose spread is
    wide or whose detops and peer IQRs overlap (see :func:`detops.bench.instability`,
    ``max_relative_iqr``) gets one more batch of rounds, up to ``max_retries`` times, then
    is flagged unstable. The reference is timed on its own after (``reference_warmup``,
    ``reference_repeats``).

    ``budget_seconds`` caps the whole run: once spent, the remaining cases get one timed
    round each, no re-measuring and no reference; after ``stop_seconds`` the remaining
    cases are skipped (listed in the notes).
    """

    warmup: int = 2
    repeats: int = 15
    max_seconds: float = 5.0  # per callable and batch of rounds, after warm-up
    sample_seconds: float = 0.01  # a timed sample: enough back-to-back calls to fill it
    rewarm_samples: float = 10.0  # faster callables get an untimed call before each sample
    min_repeats: int = 3
    max_retries: int = 2
    max_relative_iqr: float = 0.25
    reference_warmup: int = 1
    reference_repeats: int = 3
    budget_seconds: float = math.inf
    stop_seconds: float = math.inf

    @classmethod
    def quick(cls) -> BenchSettings:
        # ``--quick`` took 14-31 s on a 2-core CPU; the budget bounds a slow or busy machine.
        return cls(
            warmup=1,
            repeats=10,
            max_seconds=0.75,
            sample_seconds=0.005,
            min_repeats=3,
            max_retries=1,
            reference_warmup=0,
            reference_repeats=1,
            budget_seconds=75.0,
            stop_seconds=100.0,
        )


def select_cases(
    cases: Sequence[BenchCase], device: str, *, quick: bool, ops: Sequence[str] | None = None
) -> list[BenchCase]:
    """The cases that run on ``device`` (and are ``quick`` when asked), optionally only
    those whose op is in ``ops``. Raises ValueError naming the known ops for an unknown one."""
    if ops:
        known = sorted({case.op for case in cases})
        unknown = [op for op in ops if op not in known]
        if unknown:
            raise ValueError(f"no benchmark for op {', '.join(unknown)}; known: {', '.join(known)}")
    device_type = torch.device(device).type
    return [
        case
        for case in cases
        if device_type in case.devices and (case.quick or not quick) and (not ops or case.op in ops)
    ]


def _measure_pair(
    result: BenchResult,
    functions: BenchFunctions,
    device: str,
    settings: BenchSettings,
    *,
    over_budget: bool,
    time_left: Callable[[], float],
    timer: Timer,
    progress: Callable[[str], None] | None,
) -> None:
    """Time detops and the peer interleaved into ``result``; re-measure while unstable."""
    detops = synchronized(functions.detops, device)
    peer = synchronized(functions.peer, device)
    fastest = [math.inf, math.inf]  # per call, over the warm-up runs
    for _ in range(0 if over_budget else settings.warmup):
        for which, fn in enumerate((detops, peer)):
            begin = timer()
            fn()
            fastest[which] = min(fastest[which], timer() - begin)
    calls = [1, 1]
    for which, fn in enumerate((detops, peer)):
        # A warm call (not the first: it can be 30x slower) that fills a sample needs no
        # calibration: it is timed one call per sample.
        warm_and_slow = settings.warmup >= 2 and fastest[which] >= settings.sample_seconds
        if not over_budget and not warm_and_slow:
            calls[which] = calibrate_calls(fn, settings.sample_seconds, timer=timer)
    rewarm_below = settings.rewarm_samples * settings.sample_seconds
    rewarm = (fastest[0] < rewarm_below, fastest[1] < rewarm_below)
    rounds = 1 if over_budget else settings.repeats
    detops_times: list[float] = []
    peer_times: list[float] = []
    faults: tuple[list[float], list[float]] = ([], [])
    while True:
        check_interrupt()
        begin = timer()
        new_detops, new_peer = measure_interleaved(
            detops,
            peer,
            rounds=rounds,
            max_seconds=2 * settings.max_seconds,
            min_rounds=min(settings.min_repeats, rounds),
            start_round=len(detops_times),
            calls=(calls[0], calls[1]),
            rewarm=rewarm,
            timer=timer,
            faults=faults,
        )
        batch_seconds = timer() - begin
        detops_times += new_detops
        peer_times += new_peer
        result.detops = Timing.from_samples(detops_times, calls[0], faults[0])
        result.peer_timing = Timing.from_samples(peer_times, calls[1], faults[1])
        reason = instability(
            result.detops,
            result.peer_timing,
            max_relative_iqr=settings.max_relative_iqr,
            min_runs=settings.min_repeats,
        )
        if reason is None or over_budget or result.retries >= settings.max_retries:
            break
        if batch_seconds > time_left():
            reason += "; not re-measured: time budget spent"
            break
        result.retries += 1
        if progress:
            retry = f"{result.retries}/{settings.max_retries}"
            progress(f"    unstable ({reason}): re-measuring, {retry}")
    result.unstable = reason is not None
    result.unstable_reason = reason or ""


def run_benchmarks(
    cases: Sequence[BenchCase],
    device: str,
    *,
    settings: BenchSettings,
    quick: bool = False,
    reference: bool = True,
    progress: Callable[[str], None] | None = None,
    timer: Timer = time.perf_counter,
) -> BenchReport:
    """Time every case on ``device``.

    Per case: warm-up runs of detops and the peer, then timed runs alternating the two
    (see :func:`measure_interleaved`); a row that :func:`instability` finds unclean is
    re-measured up to ``settings.max_retries`` times (the new rounds join the old), then
    flagged ``unstable``. The reference is timed on its own after. A case whose setup or
    timing raises is reported with the error in its note; the others still run.

    KeyboardInterrupt (Ctrl-C) stops the run: the report holds the rows measured so far
    and is flagged ``interrupted``. ``timer`` is the clock for timings and the budget.
    """
    load_start = load_average()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    environment: dict[str, object] = dict(environment_info(device))
    environment["allocator"] = allocator_description()
    start = timer()
    start_warning = busy_warning(os.cpu_count(), load_start, None)
    if progress and start_warning:
        progress(start_warning)
    results: list[BenchResult] = []
    interrupted = False
    try:
        for index, case in enumerate(cases, 1):
            check_interrupt()  # a Ctrl-C that garbage collection swallowed
            results.append(
                _run_case(
                    case,
                    f"[{index}/{len(cases)}]",
                    device,
                    settings,
                    reference=reference,
                    elapsed=lambda: timer() - start,
                    timer=timer,
                    progress=progress,
                )
            )
    except KeyboardInterrupt:
        interrupted = True
    load_end = load_average()
    own_share = own_load_share(time.process_time() - cpu_start, time.perf_counter() - wall_start)
    environment.update(
        load_average_1m_start=load_start,
        load_average_1m_end=load_end,
        own_load_share=round(own_share, 2),
    )
    warning = busy_warning(os.cpu_count(), load_start, load_end, own_share)
    return BenchReport(
        device=str(device),
        quick=quick,
        settings=settings,
        results=results,
        environment=environment,
        seconds=timer() - start,
        interrupted=interrupted,
        cases_total=len(cases),
        warnings=[warning] if warning else [],
    )


def _run_case(
    case: BenchCase,
    counter: str,
    device: str,
    settings: BenchSettings,
    *,
    reference: bool,
    elapsed: Callable[[], float],
    timer: Timer,
    progress: Callable[[str], None] | None,
) -> BenchResult:
    result = BenchResult(case.op, case.size, str(device), case.peer, workload=case.notes)
    if elapsed() > settings.stop_seconds:
        result.note = "skipped: time budget spent"
        return result
    over_budget = elapsed() > settings.budget_seconds
    if progress:
        progress(f"{counter} {case.op} | {case.size} | {device}")
    functions = None
    try:
        functions = case.setup(torch.device(device))
        _measure_pair(
            result,
            functions,
            device,
            settings,
            over_budget=over_budget,
            time_left=lambda: settings.budget_seconds - elapsed(),
            timer=timer,
            progress=progress,
        )
        if functions.reference is not None:
            if not reference:
                result.note = "reference not timed (--no-reference)"
            elif over_budget:
                result.note = "reference skipped: time budget spent"
            else:
                times = measure(
                    functions.reference,
                    warmup=settings.reference_warmup,
                    repeats=settings.reference_repeats,
                    max_seconds=settings.max_seconds,
                    timer=timer,
                )
                result.reference = Timing.from_samples(times)
        if over_budget and not result.note:
            result.note = "one timed run: time budget spent"
    except Exception as exc:  # report and carry on with the other cases
        result.note = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        functions = None
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return result
