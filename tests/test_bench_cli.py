"""``detops bench`` (runner, table, JSON, chart) and ``detops demo`` on small inputs."""

from __future__ import annotations

import json

import pytest
import torch

from detops.bench import (
    BenchResult,
    BenchSettings,
    Timing,
    format_bench_table,
    run_benchmarks,
    select_cases,
)
from detops.cli import main
from detops.testing import BENCHMARKS, BenchCase, BenchFunctions

TINY = BenchSettings(warmup=1, repeats=3, max_seconds=0.2, reference_repeats=1)


def _case(op="fake", size="tiny", quick=True, devices=("cpu", "cuda"), reference=True, calls=None):
    calls = calls if calls is not None else []

    def setup(device):
        return BenchFunctions(
            detops=lambda: calls.append("detops"),
            peer=lambda: calls.append("peer"),
            reference=(lambda: calls.append("reference")) if reference else None,
        )

    return BenchCase(op, size, "a peer", setup, quick=quick, devices=devices)


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
    with pytest.raises(
        ValueError, match=r"no benchmark for op \['zzz'\]; known: \['a', 'b', 'c'\]"
    ):
        select_cases(cases, "cpu", quick=True, ops=["zzz"])


def test_run_benchmarks_times_every_callable_with_warmup_and_repeats():
    calls: list[str] = []
    report = run_benchmarks([_case(calls=calls)], "cpu", settings=TINY)
    (result,) = report.results
    # detops and peer: 1 warm-up + 3 timed runs each; reference: 1 warm-up + 1 timed run.
    assert calls.count("detops") == 4 and calls.count("peer") == 4
    assert calls.count("reference") == 2
    assert result.detops.runs == 3 and result.reference.runs == 1
    assert result.detops.min <= result.detops.median <= result.detops.max
    assert "torch" in report.environment and "cpu_model" in report.environment


def test_ratio_is_peer_over_detops():
    result = BenchResult("op", "size", "cpu", "peer", Timing(0.002, 3, 0.001, 0.003))
    result.peer_timing = Timing(0.010, 3, 0.009, 0.011)
    assert result.ratio == pytest.approx(5.0)
    assert BenchResult("op", "size", "cpu", "peer").ratio is None


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
    header = out.splitlines()[0].split()
    assert header == [
        "op",
        "size",
        "device",
        "detops",
        "peer",
        "peer",
        "median",
        "ratio",
        "reference",
    ]
    assert "get_fpn_location_coords" in out and "machine:" in out
    data = json.loads(json_path.read_text())
    (row,) = data["results"]
    assert row["op"] == "get_fpn_location_coords" and row["device"] == "cpu"
    assert row["ratio_peer_over_detops"] == pytest.approx(
        row["peer_median_s"] / row["detops_median_s"]
    )
    assert row["reference_median_s"] is not None
    assert {"torch", "torchvision", "cpu_model", "python"} <= set(data["environment"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--op", "no_such_op"], "no benchmark for op ['no_such_op']"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--repeats", "0", "--quick"], "--repeats must be at least 1"),
    ],
)
def test_cli_bench_bad_arguments_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cli_bench_cuda_without_gpu_exits_2(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


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
    assert "box_iou" in text and "FAIL" in text  # torchvision departs on zero-area IoU
    assert json.loads((out / "verify_torchvision.json").read_text())["mode"] == "functions"
    assert "=== demo: results ===" in printed
