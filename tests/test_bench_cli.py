"""``detops bench`` (runner, table, JSON, chart) and ``detops demo`` on small inputs.

Nothing here asserts on a measured duration: the runner tests drive a fake clock that the
fake callables advance by fixed amounts, so their timings (and what is unstable) are exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys

import pytest
import torch
from sigint_helpers import ctrl_c_while_torch_loads

import detops.bench.cases
from detops.bench import (
    BenchReport,
    BenchResult,
    BenchSettings,
    Timing,
    busy_warning,
    calibrate_calls,
    calls_per_sample,
    fault_note,
    format_bench_table,
    instability,
    measure_interleaved,
    own_load_share,
    page_faults,
    plot_ratios,
    quartiles,
    run_benchmarks,
    select_cases,
)
from detops.bench.cases import BENCHMARKS, BenchCase, BenchFunctions
from detops.bench.report import format_ratio
from detops.cli import main
from detops.testing import assert_trees_close, entry_by_name

# sample_seconds=0: one call per timed sample, so that the tests can count the calls
TINY = BenchSettings(warmup=1, repeats=3, max_seconds=0.2, reference_repeats=1, sample_seconds=0)
PNG = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """A clock that only moves when a fake callable says it took some time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def callable(self, name, calls, durations):
        steps = itertools.cycle(durations)

        def run():
            calls.append(name)
            self.now += next(steps)

        return run


def _case(op="fake", size="tiny", quick=True, devices=("cpu", "cuda"), reference=True, calls=None):
    calls = calls if calls is not None else []

    def setup(device):
        return BenchFunctions(
            detops=lambda: calls.append("detops"),
            peer=lambda: calls.append("peer"),
            reference=(lambda: calls.append("reference")) if reference else None,
        )

    return BenchCase(op, size, "a peer", setup, quick=quick, devices=devices)


def _timed_case(clock, calls, detops, peer, reference=(0.5,), op="fake", size="tiny"):
    """A case whose callables take ``detops`` / ``peer`` / ``reference`` fake seconds per
    call, cycling through each list."""

    def setup(device):
        return BenchFunctions(
            detops=clock.callable("detops", calls, detops),
            peer=clock.callable("peer", calls, peer),
            reference=clock.callable("reference", calls, reference) if reference else None,
        )

    return BenchCase(op, size, "a peer", setup)


def _samples(first_ms, *rest_ms):
    return Timing.from_samples([ms / 1000 for ms in (first_ms, *rest_ms)])


def test_select_cases_filters_quick_device_and_op():
    cases = [
        _case("a", quick=True),
        _case("a", "big", quick=False),
        _case("b", devices=("cpu",)),
        _case("c", devices=("cuda",)),
    ]
    assert [c.op for c in select_cases(cases, "cpu", quick=True)] == ["a", "b"]
    assert [c.size for c in select_cases(cases, "cpu", quick=False, ops=["a"])] == ["tiny", "big"]
    assert [c.op for c in select_cases(cases, "cuda", quick=False)] == ["a", "a", "c"]
    with pytest.raises(ValueError, match=r"no benchmark for op zzz; known: a, b, c"):
        select_cases(cases, "cpu", quick=True, ops=["zzz"])


def test_run_benchmarks_times_every_callable_with_warmup_and_repeats():
    calls: list[str] = []
    clock = FakeClock()
    case = _timed_case(clock, calls, detops=[0.001], peer=[0.005])
    report = run_benchmarks([case], "cpu", settings=TINY, timer=clock)
    (result,) = report.results
    # detops and peer: 1 warm-up + 3 timed runs each; reference: 1 warm-up + 1 timed run.
    assert calls.count("detops") == 4 and calls.count("peer") == 4
    assert calls.count("reference") == 2
    assert result.detops.runs == 3 and result.reference.runs == 1
    assert result.detops.samples == pytest.approx([0.001] * 3)
    assert result.peer_timing.samples == pytest.approx([0.005] * 3)
    assert not result.unstable and result.retries == 0
    assert "torch" in report.environment and "cpu_model" in report.environment


def test_detops_and_peer_alternate_and_the_reference_runs_after():
    calls: list[str] = []
    clock = FakeClock()
    case = _timed_case(clock, calls, detops=[0.001], peer=[0.005])
    settings = BenchSettings(
        warmup=1,
        repeats=4,
        max_retries=0,
        reference_warmup=0,
        reference_repeats=1,
        sample_seconds=0,
    )
    run_benchmarks([case], "cpu", settings=settings, timer=clock)
    warmup = ["detops", "peer"]
    timed = ["detops", "peer", "peer", "detops", "detops", "peer", "peer", "detops"]
    assert calls == [*warmup, *timed, "reference"]


def test_measure_interleaved_alternates_who_goes_first_and_keeps_the_pairs():
    calls: list[str] = []
    clock = FakeClock()
    first = clock.callable("a", calls, [1.0, 2.0])
    second = clock.callable("b", calls, [10.0])
    a, b = measure_interleaved(first, second, rounds=3, start_round=1, timer=clock)
    assert calls == ["b", "a", "a", "b", "b", "a"]
    assert a == [1.0, 2.0, 1.0] and b == [10.0, 10.0, 10.0]
    # The time limit applies once min_rounds are done.
    calls.clear()
    a, b = measure_interleaved(first, second, rounds=10, max_seconds=5, min_rounds=2, timer=clock)
    assert len(a) == len(b) == 2


def test_page_faults_per_call_go_to_the_function_that_made_them():
    faults = 0

    def fault(pages):
        def run():
            nonlocal faults
            faults += pages

        return run

    counted: tuple[list[float], list[float]] = ([], [])
    measure_interleaved(
        fault(30),
        fault(0),
        rounds=4,
        calls=(3, 1),
        rewarm=(True, False),  # (the untimed call's faults are not the sample's)
        faults=counted,
        fault_counter=lambda: faults,
    )
    assert counted == ([30.0] * 4, [0.0] * 4)
    # Where the OS counts none, nothing is recorded and nothing breaks.
    nothing: tuple[list[float], list[float]] = ([], [])
    measure_interleaved(fault(1), fault(1), rounds=2, faults=nothing, fault_counter=lambda: None)
    assert nothing == ([], [])


@pytest.mark.skipif(page_faults() is None, reason="no page-fault count on this OS")
def test_page_faults_count_first_touches_of_fresh_memory():
    # 64 MiB: above glibc's largest mmap threshold, so every call maps fresh pages.
    def fresh():
        torch.ones(16 << 20)

    counted: tuple[list[float], list[float]] = ([], [])
    measure_interleaved(fresh, lambda: None, rounds=3, faults=counted)
    assert min(counted[0]) >= 16  # at least one per 4 MiB, even in 2 MiB huge pages
    assert max(counted[1]) < min(counted[0])


def test_rows_with_many_page_faults_get_a_note():
    quiet = Timing.from_samples([1e-3, 1e-3, 1e-3], faults_per_call=[0.0, 2.0, 1.0])
    faulting = Timing.from_samples([9e-3, 9e-3, 9e-3], faults_per_call=[9700.0, 9733.0, 9800.0])
    assert faulting.faults_per_call == 9733.0 and quiet.faults_per_call == 1.0
    row = BenchResult("box_iou", "1000x1000", "cpu", "torchvision.ops.box_iou", quiet, faulting)
    assert "page faults a call: detops 1, peer 9733" in fault_note(row)
    assert fault_note(BenchResult("box_iou", "10x10", "cpu", "tv", quiet, quiet)) == ""
    report = BenchReport("cpu", True, TINY, [row], {}, 1.0)
    table = format_bench_table(report)
    assert "box_iou | 1000x1000: page faults a call: detops 1, peer 9733" in table
    assert "depends on the allocator's state" in table.splitlines()[-1]
    assert (
        json.loads(report.to_json())["results"][0]["timings"]["peer"]["page_faults_per_call"]
        == 9733.0
    )


def test_each_row_says_what_it_times_and_names_a_cut_peer_in_full():
    """A case's notes (its workload) reach the row, the JSON and the text report, once per
    op and workload with the sizes that share it; a peer name the table cuts is given in
    full there."""
    clock = FakeClock()
    calls: list[str] = []
    long_peer = "course-style per-image loop (match, deltas, centerness) over 16 images"
    cases = [
        dataclasses.replace(
            _timed_case(clock, calls, [0.001], [0.002], reference=(), size=size),
            notes="random boxes, IoU threshold 0.5",
        )
        for size in ("10", "50")
    ]
    cases.append(
        dataclasses.replace(
            _timed_case(clock, calls, [0.001], [0.002], reference=(), op="other"), peer=long_peer
        )
    )
    cases.append(_timed_case(clock, calls, [0.001], [0.002], reference=(), op="plain"))
    settings = BenchSettings(warmup=1, repeats=3, max_retries=0, reference_repeats=1)
    report = run_benchmarks(cases, "cpu", settings=settings, timer=clock)
    assert [r.workload for r in report.results] == [
        "random boxes, IoU threshold 0.5",
        "random boxes, IoU threshold 0.5",
        "",
        "",
    ]
    table = format_bench_table(report)
    assert long_peer not in table.partition("what each row times:")[0]  # cut in the table
    assert table.splitlines()[-3:] == [
        "what each row times:",
        "  fake (10; 50): random boxes, IoU threshold 0.5",
        f"  other (tiny): peer: {long_peer}",
    ]
    rows = json.loads(report.to_json())["results"]
    assert rows[0]["workload"] == "random boxes, IoU threshold 0.5" and rows[3]["workload"] == ""


def test_calls_per_sample_fills_the_sample_time():
    assert calls_per_sample(0.001, 0.01) == 10
    assert calls_per_sample(0.003, 0.01) == 4  # rounded up: a sample is at least 10 ms
    assert calls_per_sample(0.5, 0.01) == 1  # slower than a sample: one call
    assert calls_per_sample(0.0, 0.01) == 10_000  # below the timer's resolution: the cap
    assert calls_per_sample(1e-9, 0.01, max_calls=50) == 50
    assert calls_per_sample(0.001, 0) == 1  # sample_seconds=0: one call per sample


def test_short_calls_are_timed_in_batches_and_reported_per_call():
    # detops takes 1 ms, the peer 4 ms; samples of 10 ms: 10 and 3 calls per sample.
    calls: list[str] = []
    clock = FakeClock()
    case = _timed_case(clock, calls, detops=[0.001], peer=[0.004])
    settings = BenchSettings(
        warmup=1, repeats=3, max_retries=0, reference_repeats=1, sample_seconds=0.01
    )
    (result,) = run_benchmarks([case], "cpu", settings=settings, timer=clock).results
    # one warm-up call, one calibration call (already a tenth of a sample), 3 samples, each
    # after one untimed call (both are under 10 sample lengths: rewarmed)
    assert calls.count("detops") == 1 + 1 + 3 * (1 + 10)
    assert calls.count("peer") == 1 + 1 + 3 * (1 + 3)
    assert result.detops.calls_per_sample == 10 and result.peer_timing.calls_per_sample == 3
    assert result.detops.samples == pytest.approx([0.001] * 3)  # per call, not per batch
    assert result.peer_timing.samples == pytest.approx([0.004] * 3)
    assert result.ratio == pytest.approx(4.0)
    # Batches alternate as single calls did: detops' 1 + 10, the peer's 1 + 3 twice, ...
    timed = [c for c in calls[4:] if c != "reference"]
    assert timed[:11] == ["detops"] * 11 and timed[11:19] == ["peer"] * 8
    assert timed[19:30] == ["detops"] * 11


def test_a_call_that_fills_a_sample_after_warming_up_is_timed_alone():
    # The first call is cold (50 ms), the second warm (20 ms): no calibration, one call
    # per sample. The peer's warm call (1 ms) is calibrated: 10 calls per sample.
    calls: list[str] = []
    clock = FakeClock()
    case = _timed_case(clock, calls, detops=[0.05] + [0.02] * 50, peer=[0.001])
    settings = BenchSettings(
        warmup=2, repeats=3, max_retries=0, reference_repeats=1, sample_seconds=0.01
    )
    (result,) = run_benchmarks([case], "cpu", settings=settings, timer=clock).results
    # Both are under 10 sample lengths (100 ms): one untimed call before each sample.
    assert calls.count("detops") == 2 + 3 * 2 and result.detops.calls_per_sample == 1
    assert calls.count("peer") == 2 + 1 + 3 * 11 and result.peer_timing.calls_per_sample == 10
    assert result.detops.samples == pytest.approx([0.02] * 3)


def _cold_after_other(clock, calls, name, cold, warm):
    """A fake callable that takes ``cold`` seconds right after another one, else ``warm``."""

    def run():
        clock.now += warm if calls and calls[-1] == name else cold
        calls.append(name)

    return run


@pytest.mark.parametrize("rewarm_samples", [10.0, 0.0])
def test_each_sample_of_a_fast_callable_follows_an_untimed_call_of_its_own(rewarm_samples):
    """A call right after the other function is slower (cold caches, the allocator's state).
    With one call a sample every timed call would be such a call; the untimed call before
    each sample makes every timed call follow a call of its own function. Switched off
    (``rewarm_samples=0``), the samples are the cold calls."""
    calls: list[str] = []
    clock = FakeClock()

    def setup(device):
        return BenchFunctions(
            detops=_cold_after_other(clock, calls, "detops", cold=0.005, warm=0.001),
            peer=_cold_after_other(clock, calls, "peer", cold=0.008, warm=0.002),
        )

    case = BenchCase("fake", "tiny", "a peer", setup)
    settings = BenchSettings(
        warmup=2,
        repeats=4,
        max_retries=0,
        sample_seconds=0.001,  # one call a sample; rewarmed below 10 ms
        rewarm_samples=rewarm_samples,
    )
    (result,) = run_benchmarks([case], "cpu", settings=settings, timer=clock).results
    assert result.detops.calls_per_sample == result.peer_timing.calls_per_sample == 1
    if rewarm_samples:
        assert result.detops.samples == pytest.approx([0.001] * 4)
        assert result.peer_timing.samples == pytest.approx([0.002] * 4)
    else:  # ABBA: a sample is warm only where its function also ended the round before
        assert result.detops.samples == pytest.approx([0.005, 0.005, 0.001, 0.005])
        assert result.peer_timing.samples == pytest.approx([0.008, 0.002, 0.008, 0.002])


def test_calibration_grows_the_batch_until_it_is_long_enough_to_time():
    calls: list[str] = []
    clock = FakeClock()
    # 20 us a call: runs of 1, 10 and 100 calls (0.02, 0.2, 2 ms); 2 ms >= 10 ms / 10
    fn = clock.callable("f", calls, [20e-6])
    assert calibrate_calls(fn, 0.01, timer=clock) == 500
    assert len(calls) == 1 + 10 + 100
    assert calibrate_calls(fn, 0, timer=clock) == 1


def test_quartiles_and_spread_on_fixed_timings():
    assert quartiles([5.0, 1.0, 4.0, 2.0, 3.0]) == (2.0, 3.0, 4.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0]) == pytest.approx((1.75, 2.5, 3.25))
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="quartiles: samples must not be empty"):
        quartiles([])
    timing = Timing.from_samples([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (timing.median, timing.q25, timing.q75, timing.min, timing.max) == (3, 2, 4, 1, 5)
    assert timing.runs == 5 and timing.iqr == 2 and timing.relative_iqr == pytest.approx(2 / 3)


def test_ratio_is_peer_over_detops_with_its_range():
    result = BenchResult("op", "size", "cpu", "peer", _samples(1, 2, 3, 4, 5))
    result.peer_timing = _samples(10, 20, 30, 40, 50)
    assert result.ratio == pytest.approx(10.0)
    # peer q25 / detops q75 to peer q75 / detops q25
    assert result.ratio_range == pytest.approx((20 / 4, 40 / 2))
    row = result.to_dict()
    assert row["ratio_low"] == pytest.approx(5.0) and row["ratio_high"] == pytest.approx(20.0)
    assert BenchResult("op", "size", "cpu", "peer").ratio is None
    assert BenchResult("op", "size", "cpu", "peer").ratio_range is None
    # Tiny ratios keep two significant digits instead of rounding to 0.00.
    assert [format_ratio(x) for x in (12.5, 0.5, 0.000766)] == ["12.50", "0.50", "0.00077"]


@pytest.mark.parametrize(
    ("detops_ms", "peer_ms", "expected"),
    [
        ([1, 1, 1, 1, 1], [5, 5, 5, 5, 5], None),
        ([1, 1.1, 1.2], [5, 5.1, 5.2], None),
        ([1], [5], "1 timed run, too few for a spread"),
        ([1, 1, 2, 3, 3], [9, 9, 9, 9, 9], "detops IQR is 100% of its median"),
        ([1, 1, 1, 1, 1], [8, 8, 10, 13, 13], "peer IQR is 50% of its median"),
        ([1.0, 1.1, 1.2], [1.05, 1.15, 1.25], "detops and peer IQRs overlap"),
    ],
)
def test_instability_on_fixed_timings(detops_ms, peer_ms, expected):
    assert instability(_samples(*detops_ms), _samples(*peer_ms)) == expected


def test_an_unstable_row_is_re_measured_then_flagged():
    calls: list[str] = []
    clock = FakeClock()
    # detops takes 1, 1, 3 ms in turn: its IQR stays 50% to 200% of its median.
    case = _timed_case(clock, calls, detops=[0.001, 0.001, 0.003], peer=[0.010])
    settings = BenchSettings(
        warmup=1, repeats=4, max_retries=2, reference_repeats=1, sample_seconds=0
    )
    report = run_benchmarks([case], "cpu", settings=settings, timer=clock)
    (result,) = report.results
    assert result.unstable and result.retries == 2
    assert "detops IQR is" in result.unstable_reason
    assert result.detops.runs == result.peer_timing.runs == 12  # 3 batches of 4 rounds
    # The retries continue the alternation: 12 timed rounds, ABBA... throughout.
    timed = [c for c in calls[2:] if c != "reference"]
    assert timed == ["detops", "peer", "peer", "detops"] * 6
    table = format_bench_table(report)
    (row,) = [line for line in table.splitlines() if line.startswith("fake")]
    assert row.endswith("unstable")
    assert "fake | tiny: unstable: detops IQR is" in table
    data = json.loads(report.to_json())["results"][0]
    assert data["unstable"] is True and data["retries"] == 2
    assert data["unstable_reason"] == result.unstable_reason


def test_a_row_that_settles_on_re_measuring_is_not_flagged():
    calls: list[str] = []
    clock = FakeClock()
    # After the warm-up, the first batch's detops times are wide (1, 4, 1, 4 ms), then
    # they settle at 1 ms: 8 pooled samples still have an IQR of 75%, 12 have none.
    durations = [0.001, 0.001, 0.004, 0.001, 0.004] + [0.001] * 8
    case = _timed_case(clock, calls, detops=durations, peer=[0.010])
    settings = BenchSettings(
        warmup=1, repeats=4, max_retries=3, reference_repeats=1, sample_seconds=0
    )
    (result,) = run_benchmarks([case], "cpu", settings=settings, timer=clock).results
    assert not result.unstable and result.unstable_reason == ""
    assert result.retries == 2 and result.detops.runs == 12


def test_no_re_measuring_past_the_time_budget():
    calls: list[str] = []
    clock = FakeClock()
    case = _timed_case(clock, calls, detops=[1.0, 1.0, 3.0], peer=[10.0], reference=None)
    # Warm-up 11 s + one batch of 3 rounds 35 s: 46 s spent, 4 s left, a batch costs 35.
    settings = BenchSettings(
        warmup=1, repeats=3, max_seconds=100, budget_seconds=50, sample_seconds=0
    )
    (result,) = run_benchmarks([case], "cpu", settings=settings, timer=clock).results
    assert result.retries == 0 and result.unstable
    assert result.unstable_reason.endswith("not re-measured: time budget spent")


def test_a_failing_case_is_reported_and_the_others_still_run():
    def broken(device):
        raise RuntimeError("setup exploded")

    cases = [BenchCase("broken", "x", "peer", broken), _case("fine", reference=False)]
    report = run_benchmarks(cases, "cpu", settings=TINY)
    assert report.results[0].note == "error: RuntimeError: setup exploded"
    assert report.results[1].ratio is not None and report.results[1].reference is None
    table = format_bench_table(report)
    assert "broken | x: error: RuntimeError: setup exploded" in table


def test_over_budget_cases_get_one_run_and_no_reference():
    calls: list[str] = []
    settings = BenchSettings(warmup=2, repeats=5, max_seconds=1.0, budget_seconds=0.0)
    report = run_benchmarks([_case(), _case(calls=calls)], "cpu", settings=settings)
    assert calls == ["detops", "peer"]
    assert report.results[1].reference is None
    assert "time budget" in report.results[1].note
    stopped = run_benchmarks([_case(calls=calls)], "cpu", settings=BenchSettings(stop_seconds=-1))
    assert stopped.results[0].note == "skipped: time budget spent"
    assert stopped.results[0].ratio is None and calls == ["detops", "peer"]


def test_cli_bench_writes_table_json_and_chart(tmp_path, capsys):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "bench",
            "--quick",
            "--op",
            "get_fpn_location_coords",
            "--repeats",
            "2",
            "--json",
            str(json_path),
            "--plot",
            str(png_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("detops bench on cpu: ") and "torch threads" in lines[0]
    assert lines[1].startswith("torch ") and "numpy" in lines[1] and "python" in lines[1]
    assert lines[2].startswith("load average (1 min): ")
    header = next(line for line in lines if line.startswith("op ")).split()
    assert header == [
        "op",
        "size",
        "device",
        "detops",
        "peer",
        "peer",
        "median",
        "ratio",
        "range",
        "reference",
        "flag",
    ]
    assert "get_fpn_location_coords" in out
    data = json.loads(json_path.read_text())
    (row,) = data["results"]
    assert row["op"] == "get_fpn_location_coords" and row["device"] == "cpu"
    assert row["ratio_peer_over_detops"] == pytest.approx(
        row["peer_median_s"] / row["detops_median_s"]
    )
    # The medians lie inside the quartiles, so the ratio lies inside its range.
    assert row["ratio_low"] <= row["ratio_peer_over_detops"] <= row["ratio_high"]
    assert row["reference_median_s"] is not None
    assert {"torch", "torchvision", "cpu_model", "python", "torch_threads"} <= set(
        data["environment"]
    )
    assert {"load_average_1m_start", "load_average_1m_end"} <= set(data["environment"])
    assert data["interrupted"] is False and data["cases_done"] == data["cases_total"] == 1
    assert png_path.read_bytes()[:8] == PNG


def test_json_structure_keeps_the_old_keys_and_adds_the_spread():
    clock = FakeClock()
    cases = [
        _timed_case(clock, [], detops=[0.001], peer=[0.004], size="a"),
        _timed_case(clock, [], detops=[0.001, 0.001, 0.003], peer=[0.010], size="b"),
    ]
    settings = BenchSettings(
        warmup=1, repeats=4, max_retries=0, reference_repeats=1, sample_seconds=0
    )
    data = json.loads(run_benchmarks(cases, "cpu", settings=settings, timer=clock).to_json())
    assert {
        "device",
        "quick",
        "settings",
        "environment",
        "warnings",
        "seconds",
        "interrupted",
        "cases_done",
        "cases_total",
        "results",
    } <= set(data)
    assert data["settings"]["budget_seconds"] is None  # inf is not JSON
    assert data["settings"]["max_relative_iqr"] == 0.25
    stable, unstable = data["results"]
    assert {
        "op",
        "size",
        "device",
        "peer",
        "workload",
        "detops_median_s",
        "peer_median_s",
        "reference_median_s",
        "ratio_peer_over_detops",
        "ratio_low",
        "ratio_high",
        "unstable",
        "unstable_reason",
        "retries",
        "timings",
        "note",
    } == set(stable)
    assert set(stable["timings"]) == {"detops", "peer", "reference"}
    detops = stable["timings"]["detops"]
    assert set(detops) == {
        "median",
        "runs",
        "min",
        "max",
        "q25",
        "q75",
        "iqr",
        "calls_per_sample",
        "page_faults_per_call",
        "samples",
    }
    assert detops["samples"] == pytest.approx([0.001] * 4)
    assert detops["calls_per_sample"] == 1
    # (counted in the process around fake calls: a number where the OS counts faults)
    assert (detops["page_faults_per_call"] is None) == (page_faults() is None)
    assert detops["iqr"] == pytest.approx(0.0, abs=1e-12)
    assert stable["ratio_peer_over_detops"] == pytest.approx(4.0)
    assert stable["ratio_low"] == pytest.approx(4.0) == stable["ratio_high"]
    assert stable["unstable"] is False and stable["unstable_reason"] == ""
    assert unstable["unstable"] is True and unstable["unstable_reason"]


def test_busy_warning_thresholds():
    assert busy_warning(2, 0.2, 0.3) is None
    assert busy_warning(2, 1.0, 1.0) is None  # at the limit, not above
    assert "1.50 at start" in busy_warning(2, 1.5, 0.2)
    # The end load counts this run's own threads; only the rest makes the machine busy.
    assert busy_warning(2, 0.2, 1.8, own_load=1.0) is None
    warning = busy_warning(2, 0.2, 2.5, own_load=1.0)
    assert warning.startswith("WARNING: the machine is busy") and "2.50 at end" in warning
    assert "figures may be unreliable" in warning
    assert busy_warning(8, 3.9, 0.0) is None and busy_warning(8, 4.1, 0.0) is not None
    assert busy_warning(None, 99.0, 99.0) is None and busy_warning(2, None, None) is None


def test_own_share_of_the_load_average_follows_the_kernels_one_minute_average():
    # Two CPUs busy for a minute add 2 * (1 - 1/e) to the 1-minute load average.
    assert own_load_share(120.0, 60.0) == pytest.approx(2 * (1 - math.exp(-1)))
    assert own_load_share(10.0, 10.0) == pytest.approx(1 - math.exp(-1 / 6))
    assert own_load_share(0.0, 10.0) == 0.0 and own_load_share(1.0, 0.0) == 0.0


def test_a_busy_machine_gets_a_warning_in_the_header_and_json(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (1e6, 0.0, 0.0))
    clock = FakeClock()
    case = _timed_case(clock, [], detops=[0.001], peer=[0.004])
    report = run_benchmarks([case], "cpu", settings=TINY, timer=clock)
    (warning,) = report.warnings
    assert warning.startswith("WARNING: the machine is busy") and "at start" in warning
    header, _, _ = format_bench_table(report).partition("\nop ")
    assert warning in header.splitlines()
    data = json.loads(report.to_json())
    assert data["warnings"] == [warning]
    assert data["environment"]["load_average_1m_start"] == 1e6


def test_a_quiet_machine_gets_no_warning_and_no_load_average_is_shown_as_unknown(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    clock = FakeClock()
    case = _timed_case(clock, [], detops=[0.001], peer=[0.004])
    report = run_benchmarks([case], "cpu", settings=TINY, timer=clock)
    assert report.warnings == [] and "WARNING" not in format_bench_table(report)

    def no_loadavg():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    report = run_benchmarks([case], "cpu", settings=TINY, timer=clock)
    assert report.environment["load_average_1m_start"] is None
    assert "load average (1 min): ? at start, ? at end" in format_bench_table(report)


def _interrupting_cases(calls):
    """Three cases; the third one's peer raises KeyboardInterrupt in its first call."""

    def interrupt():
        raise KeyboardInterrupt

    def setup(device):
        return BenchFunctions(detops=lambda: calls.append("detops"), peer=interrupt)

    return [
        _case("first", calls=calls),
        _case("second", calls=calls),
        BenchCase("third", "tiny", "a peer", setup),
    ]


def test_ctrl_c_keeps_the_rows_already_measured():
    calls: list[str] = []
    report = run_benchmarks(_interrupting_cases(calls), "cpu", settings=TINY)
    assert report.interrupted
    assert [r.op for r in report.results] == ["first", "second"]
    assert report.total == 3
    assert "INTERRUPTED: 2 of 3 cases measured." in format_bench_table(report)


def test_cli_ctrl_c_writes_the_rows_measured_and_exits_130(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(detops.bench.cases, "BENCHMARKS", _interrupting_cases([]))
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--repeats", "3", "--json", str(json_path), "--plot", str(png_path)])
    captured = capsys.readouterr()
    assert code == 130, captured.out
    assert captured.err.splitlines()[-1] == "detops bench: interrupted after 2 of 3 cases"
    assert "first" in captured.out and "second" in captured.out
    data = json.loads(json_path.read_text())
    assert [row["op"] for row in data["results"]] == ["first", "second"]
    assert data["interrupted"] is True
    assert (data["cases_done"], data["cases_total"]) == (2, 3)
    assert png_path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]


def test_cli_ctrl_c_before_the_first_case_still_writes_the_json(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. while the environment is read, before any case

    monkeypatch.setattr(detops.bench, "run_benchmarks", interrupted)
    json_path = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--json", str(json_path)])
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err.splitlines()[-1].startswith("detops bench: interrupted after 0 of ")
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["results"] == []
    assert data["cases_done"] == 0 and data["cases_total"] > 0


@pytest.mark.usefixtures("ctrl_c_at_the_option_check")
def test_cli_ctrl_c_while_bench_starts_still_writes_the_json(tmp_path, capsys):
    # While the command checks its options and imports torch, Ctrl-C waits until those
    # imports are done (a KeyboardInterrupt inside an import leaves it half done), then
    # stops the run before the first case.
    json_path = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--op", "box_iou", "--json", str(json_path)])
    captured = capsys.readouterr()
    assert code == 130, captured.out
    assert captured.err.splitlines()[-1].startswith("detops bench: interrupted after 0 of ")
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["results"] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.usefixtures("python_sigint_handler")  # the child must not inherit SIGINT ignored
def test_cli_a_real_ctrl_c_while_torch_loads_exits_130_with_the_json(tmp_path):
    json_path = tmp_path / "bench.json"
    args = ["bench", "--quick", "--op", "box_iou", "--json", str(json_path)]
    returncode, out, err = ctrl_c_while_torch_loads(args)
    assert returncode == 130, (returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["results"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # written atomically


def test_chart_marks_unstable_rows(tmp_path):
    clock = FakeClock()
    cases = [
        _timed_case(clock, [], detops=[0.001], peer=[0.004], op="steady"),
        _timed_case(clock, [], detops=[0.001, 0.001, 0.003], peer=[0.002], op="shaky"),
    ]
    settings = BenchSettings(
        warmup=1, repeats=4, max_retries=0, reference_repeats=1, sample_seconds=0
    )
    report = run_benchmarks(cases, "cpu", settings=settings, timer=clock)
    assert [r.unstable for r in report.results] == [False, True]
    path = plot_ratios(report, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--op", "no_such_op"], "--op: no benchmark for op no_such_op; known: "),
        (["--device", "tpu"], "--device tpu: not a device; bench runs on cpu or cuda (cuda:N for"),
        (
            ["--device", "meta"],
            "--device meta: bench runs on cpu or cuda (cuda:N for one GPU), not",
        ),
        (["--device", "cpu:1"], "--device cpu:1: the CPU has no device 1; bench runs on cpu or"),
        (["--device", "cuda:x"], "--device cuda:x: not a device; bench runs on cpu or cuda"),
        (["--repeats", "0", "--quick"], "--repeats must be at least 1, got 0"),
        (["--plot", "chart.txt"], "--plot chart.txt: the chart is a PNG"),
        (["--json", "no/such/folder/out.json"], "the folder no/such/folder does not exist"),
        (["--json", "same.png", "--plot", "same.png"], "--json and --plot name the same file"),
    ],
)
def test_cli_bench_bad_arguments_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--examples", "0"], "--examples must be at least 1, got 0"),
        (["--train-iterations", "0"], "--train-iterations must be at least 1, got 0"),
        (["--train-iterations", "-1", "--skip", "train"], "--train-iterations must be at least 1"),
    ],
)
def test_cli_demo_bad_arguments_exit_2_before_any_step(argv, message, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing was written


def test_cli_demo_out_that_is_a_file_exits_2(tmp_path, capsys):
    taken = tmp_path / "demo"
    taken.write_text("a file")
    assert main(["demo", "--out", str(taken)]) == 2
    assert f"--out {taken} exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "a file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
@pytest.mark.parametrize("given", ["cuda", "cuda:0"])  # (not "device": conftest's)
def test_cli_bench_cuda_without_gpu_exits_2(given, capsys):
    assert main(["bench", "--device", given]) == 2
    assert f"--device {given}: CUDA is not available here (torch " in capsys.readouterr().err


def test_bench_reads_the_shared_registry():
    # One registry for pytest-benchmark and the CLI: every quick CPU case is selected.
    quick = select_cases(BENCHMARKS, "cpu", quick=True)
    assert quick and all(case.quick for case in quick)
    assert set(quick) <= set(BENCHMARKS)


def test_demo_writes_its_index(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--examples",
            "2",
            "--skip",
            "verify",
            "--skip",
            "bench",
            "--skip",
            "train",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    index = (out / "index.txt").read_text()
    assert "verify torchvision" in index and str(out / "verify_torchvision.txt") in index
    text = (out / "verify_torchvision.txt").read_text()
    verdicts = {line.split()[0]: line.split()[1] for line in text.splitlines() if "  " in line}
    assert verdicts["box_iou"] == "DEPARTS"  # torchvision departs on zero-area IoU
    assert "FAIL" not in verdicts.values()
    assert json.loads((out / "verify_torchvision.json").read_text())["mode"] == "functions"
    assert "=== demo: results ===" in printed


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


# The target path (match, deltas, centerness) has no entry of its own: its widest
# tolerance is centerness's.
_ENTRY_OF_CASE = {"fcos_targets": "fcos_make_centerness_targets"}


@pytest.mark.parametrize(
    "case",
    [c for c in BENCHMARKS if c.quick and "cpu" in c.devices],
    ids=lambda c: f"{c.op}|{c.size}",
)
def test_a_benchmark_times_what_its_reference_computes(case):
    # A ratio means something only if detops' callable computes the op: where a case
    # times the NumPy reference too, the two results agree within the registry's tolerance.
    functions = case.setup(torch.device("cpu"))
    if functions.reference is None:
        pytest.skip("no reference timed at this size")
    expected = functions.reference()
    assert not any(isinstance(leaf, torch.Tensor) for leaf in _leaves(expected))  # NumPy
    entry = entry_by_name(_ENTRY_OF_CASE.get(case.op, case.op))
    tolerance = entry.tolerances[torch.float32]
    assert_trees_close(functions.detops(), expected, tolerance, f"{case.op} {case.size}")


# Where a case times no reference, detops' callable is checked against its peer instead,
# where the peer is torchvision computing the same op: the same kept boxes (torchvision
# orders tied scores arbitrarily above 1000 boxes), the same values within the registry's
# tolerance. (fcos_loss and fcos_inference's peers are the course loops, compared with
# detops in tests/test_fcos_loss.py and tests/test_inference.py.)
_PEER_IS_THE_SAME_OP = {
    "box_iou", "clip_boxes_to_image", "sigmoid_focal_loss", "nms", "class_spec_nms",
    "batched_nms_per_image",
}  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [c for c in BENCHMARKS if c.quick and "cpu" in c.devices and c.op in _PEER_IS_THE_SAME_OP],
    ids=lambda c: f"{c.op}|{c.size}",
)
def test_a_benchmark_without_a_reference_times_what_its_peer_computes(case):
    functions = case.setup(torch.device("cpu"))
    if functions.reference is not None:
        pytest.skip("checked against the reference")
    ours, theirs = functions.detops(), functions.peer()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    if ours.dtype == torch.int64:  # kept indices: per row, the same set
        assert torch.equal(ours.sort(-1).values, theirs.sort(-1).values)
        assert ours.numel() > 0
    else:
        tolerance = entry_by_name(case.op).tolerances[torch.float32]
        assert_trees_close(ours, theirs, tolerance, f"{case.op} {case.size}")


@pytest.mark.parametrize(
    "op, size",
    [("nms", "50"), ("nms", "1000 clustered"), ("class_spec_nms", "200 clustered, 20 classes")],
)
def test_nms_cases_take_their_inputs_in_turn_on_both_sides(op, size):
    # A figure from one input repeated depends on the CPU's branch predictor (README,
    # Benchmarks): each side takes ROTATION different inputs in turn, the same ones in the
    # same order, so call k of detops and call k of torchvision compute the same NMS.
    (case,) = [c for c in BENCHMARKS if c.op == op and c.size == size]
    functions = case.setup(torch.device("cpu"))
    rotation = detops.bench.cases.nms.ROTATION
    ours = [functions.detops() for _ in range(rotation + 1)]
    theirs = [functions.peer() for _ in range(rotation + 1)]
    for k, (mine, peer) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(mine.sort().values, peer.sort().values), f"call {k}"
    assert len({tuple(kept.tolist()) for kept in theirs[:rotation]}) == rotation
    assert torch.equal(theirs[rotation], theirs[0])  # round again from the first input


_GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "fixed":
    from detops._allocator import steady_allocator
    steady_allocator()
def three_buffers():  # 20 MB each: mapped at first, then from the heap, then trimmed
    a, b, c = (np.ones(5_000_000, np.float32) for _ in range(3))
    del a, b, c
for _ in range(2):
    three_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    three_buffers()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _faults_a_round(mode: str) -> int:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc thresholds")
def test_steady_allocator_keeps_freed_buffers_from_coming_back_as_fresh_pages():
    # With glibc's moving thresholds, three 20 MB buffers freed together are given back to
    # the system and fault again at every round; with the thresholds fixed, none.
    default = _faults_a_round("default")
    if default < 256:
        pytest.skip(f"this glibc kept the buffers by itself ({default} faults a round)")
    assert _faults_a_round("fixed") == 0


def _run_bench_program(tmp_path, env_extra: dict[str, str]) -> tuple[dict, str]:
    import subprocess

    json_path = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.update(env_extra)
    argv = ["--quick", "--op", "get_fpn_location_coords", "--repeats", "2", "--no-reference"]
    done = subprocess.run(
        [sys.executable, "-m", "detops", "bench", *argv, "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(json_path.read_text())["environment"], done.stdout


@pytest.mark.skipif(not _GLIBC, reason="glibc's malloc thresholds")
def test_bench_as_a_program_fixes_the_allocator_and_says_so(tmp_path):
    environment, out = _run_bench_program(tmp_path, {})
    assert environment["allocator"].endswith(
        "trim threshold 1 GiB and mmap threshold 32 MiB fixed for this run"
    )
    assert f"allocator: {environment['allocator']}" in out.splitlines()
    # A user's own malloc settings are theirs: nothing is changed, and the report says so.
    environment, out = _run_bench_program(tmp_path, {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert environment["allocator"].endswith("as set in the environment (MALLOC_TRIM_THRESHOLD_)")


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, ["MALLOC_MMAP_THRESHOLD_"]),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, ["GLIBC_TUNABLES"]),
        # Not malloc's: an empty value, or another tunable, leaves the thresholds to detops.
        ({"MALLOC_MMAP_THRESHOLD_": ""}, []),
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=4096"}, []),
    ],
)
def test_only_the_users_malloc_settings_count_as_theirs(environment, named, monkeypatch):
    import detops._allocator as allocator

    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert allocator._user_settings() == named


def test_bench_called_from_python_leaves_the_allocator_alone(tmp_path, capsys, monkeypatch):
    import detops._allocator as allocator

    def refuse():
        raise AssertionError("main() called from Python changed the process's allocator")

    monkeypatch.setattr(allocator, "steady_allocator", refuse)
    json_path = tmp_path / "bench.json"
    argv = ["--quick", "--op", "get_fpn_location_coords", "--repeats", "2", "--no-reference"]
    assert main(["bench", *argv, "--json", str(json_path)]) == 0
    described = json.loads(json_path.read_text())["environment"]["allocator"]
    assert described == allocator.allocator_description()
    assert "defaults" in described and "fixed for this run" not in described
    assert f"allocator: {described}" in capsys.readouterr().out


@pytest.mark.parametrize("program", [True, False], ids=["program", "from Python"])
def test_demo_bench_step_fixes_the_allocator_only_as_a_program(
    program, tmp_path, capsys, monkeypatch
):
    import detops._allocator as allocator

    calls: list[None] = []
    monkeypatch.setattr(allocator, "steady_allocator", lambda: calls.append(None) or "steady")
    monkeypatch.setattr(detops.bench.cases, "BENCHMARKS", [_case()])
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--skip", "verify", "--skip", "torchvision"]
    assert main([*argv, "--skip", "train"], program=program) == 0, capsys.readouterr().out
    assert calls == ([None] if program else [])
    assert "allocator: " in (out / "bench.txt").read_text()


def test_every_case_says_what_it_times():
    # The table's "what each row times:" and the JSON's workload come from these notes.
    assert [(c.op, c.size) for c in BENCHMARKS if not c.notes.strip()] == []
