"""``detops verify`` at its edges (found by new-user trials): Ctrl-C keeps what finished
(and, from the start, still writes the --json), a write that changes nothing is no
mutation, only cpu and cuda are devices, loading errors say what is wrong (before the
target is imported, where they can), an input whose shrinking ran out of budget (or was
switched off) says so, a refusal that is a crash is not counted as a refusal, and the
target's prints stay out of the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sigint_helpers import ctrl_c_while_torch_loads
from verify_helpers import FAST, IMPLS, child_pids, gone, only

import detops.verify
from detops.cli import main
from detops.verify import harness, load_target, verify
from detops.verify.course_api import SEED_NAMES, CallFailure, collect_problems, spec_by_name
from detops.verify.harness import (
    ForkedRunner,
    ForkServer,
    GuardedCall,
    format_report,
    format_value,
)

ROOT = Path(__file__).parent.parent


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("detops verify: error: "), err
    return lines[0]


# --- 1. Ctrl-C keeps the functions finished --------------------------------------------------


def _interrupt_in(monkeypatch, name: str, at_call: int) -> list[int]:
    """Ctrl-C (KeyboardInterrupt) while the parent waits for ``name``'s worker, at its
    ``at_call``-th call; returns the pids of every worker forked."""
    pids: list[int] = []
    calls = {"left": None}
    start, exchange = ForkedRunner._start, ForkedRunner._exchange
    verify_one = harness._verify_one

    def record_start(self):
        start(self)
        pids.append(self.pid)

    def exchange_or_interrupt(self, case, dtype):
        if calls["left"] is not None:
            calls["left"] -= 1
            if calls["left"] == 0:
                raise KeyboardInterrupt
        return exchange(self, case, dtype)

    def verify_one_or_arm(fn_name, *args, **kwargs):
        if fn_name == name:
            calls["left"] = at_call
        return verify_one(fn_name, *args, **kwargs)

    monkeypatch.setattr(ForkedRunner, "_start", record_start)
    monkeypatch.setattr(ForkedRunner, "_exchange", exchange_or_interrupt)
    monkeypatch.setattr(harness, "_verify_one", verify_one_or_arm)
    return pids


@pytest.mark.skipif(not ForkedRunner.available(), reason="no fork on this platform")
@pytest.mark.parametrize("where", ["probe", "generated case"])
def test_cli_ctrl_c_reports_the_functions_finished_and_exits_130(
    where, tmp_path, capsys, monkeypatch
):
    probes = len(spec_by_name("box_iou").probes)
    at_call = 1 if where == "probe" else probes + 2  # inside the hypothesis search
    pids = _interrupt_in(monkeypatch, "box_iou", at_call)
    before = child_pids()
    json_path = tmp_path / "verify.json"
    argv = ["verify", "--impl", str(IMPLS / "correct.py"), "--examples", "3"]
    argv += ["--op", "get_fpn_location_coords", "--op", "box_iou", "--json", str(json_path)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 130, captured.err
    assert captured.err.splitlines()[-1] == "detops verify: interrupted after 1 of 2 functions"
    # The function finished is reported; the one running at Ctrl-C is neither PASS nor FAIL.
    rows = [line.split() for line in captured.out.splitlines()]
    assert ["get_fpn_location_coords", "PASS"] in [row[:2] for row in rows]
    assert not any(row and row[0] == "box_iou" for row in rows), captured.out
    last = captured.out.splitlines()[-2]  # then "report written to ..."
    assert last.startswith("INTERRUPTED after 1 of 2 functions in "), last
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["passed"] is False
    assert (data["functions_done"], data["functions_total"]) == (1, 2)
    assert [f["name"] for f in data["functions"]] == ["get_fpn_location_coords"]
    assert data["functions"][0]["verdict"] == "PASS"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verify.json"]  # written atomically
    # No worker is left behind, nor their server: each was ended and reaped.
    assert pids and all(gone(pid) for pid in pids)
    assert child_pids() <= before


def test_cli_ctrl_c_before_the_first_function_still_writes_the_json(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. while the user's module imports torch

    monkeypatch.setattr(detops.verify, "load_target", interrupted)
    json_path = tmp_path / "verify.json"
    code = main(["verify", "--impl", str(IMPLS / "correct.py"), "--json", str(json_path)])
    assert code == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "detops verify: interrupted before the first function"
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["functions"] == []
    assert (data["functions_done"], data["functions_total"]) == (0, None)
    assert data["passed"] is False


def test_api_ctrl_c_returns_the_report_so_far():
    class CtrlCAtSecond(detops.verify.Progress):
        def start(self, name):
            if name == "box_iou":
                raise KeyboardInterrupt

    target = load_target(str(IMPLS / "partial.py"))
    names = ["get_fpn_location_coords", "box_iou"]
    try:
        report = verify(target, names=names, progress=CtrlCAtSecond(), **FAST)
    except KeyboardInterrupt:  # not out of verify: it would end the test session
        pytest.fail("KeyboardInterrupt escaped verify()")
    assert report.interrupted and report.total == 2
    assert [f.name for f in report.functions] == ["get_fpn_location_coords"]
    assert not report.passed and not report.passed_strict
    assert (
        format_report(report).splitlines()[-1].startswith("INTERRUPTED after 1 of 2 functions in ")
    )


# --- 2. a write that changes nothing is not a mutation ---------------------------------------


def _nan_with_payload(payload: int) -> torch.Tensor:
    return torch.tensor([0x7FC00000 | payload], dtype=torch.int32).view(torch.float32)


def test_values_compared_bit_for_bit_but_any_nan_equals_any_nan():
    def rewrite_nan(x):
        x[0:1] = _nan_with_payload(5)  # another NaN: the same value to any reader
        return x.clone()

    out = GuardedCall(rewrite_nan, "f", 5.0)(_nan_with_payload(1).clone())
    assert torch.isnan(out).all()

    def drop_the_sign_of_zero(x):
        x.add_(0.0)  # -0.0 + 0.0 is +0.0: == says equal, the bits differ
        return x.clone()

    with pytest.raises(CallFailure, match="modified its input `x` in place"):
        GuardedCall(drop_the_sign_of_zero, "f", 5.0)(torch.tensor([-0.0, 1.0]))

    def transpose(x):
        x.t_()  # same values, another layout
        return x.clone()

    with pytest.raises(CallFailure, match="modified its input `x` in place"):
        GuardedCall(transpose, "f", 5.0)(torch.ones(2, 3))
    with collect_problems() as problems:  # an in-place op on a copy is fine
        GuardedCall(lambda x: x.clone().mul_(2), "f", 5.0)(torch.ones(2))
    assert problems == []


def test_an_in_place_call_that_changes_nothing_passes_and_a_real_change_fails(tmp_path):
    noop = tmp_path / "noop_write.py"
    noop.write_text(
        "from detops import box_iou as _box_iou\n\n\n"
        "def box_iou(boxes1, boxes2):\n"
        "    boxes1.mul_(1.0)  # writes, changes nothing\n"
        "    return _box_iou(boxes1, boxes2)\n"
    )
    changed = tmp_path / "real_write.py"
    changed.write_text(
        "from detops import box_iou as _box_iou\n\n\n"
        "def box_iou(boxes1, boxes2):\n"
        "    out = _box_iou(boxes1, boxes2)\n"
        "    boxes1.add_(1.0)\n"
        "    return out\n"
    )
    result = only(verify(load_target(str(noop)), **FAST), "box_iou")
    assert result.verdict == "PASS", result.summary
    result = only(verify(load_target(str(changed)), **FAST), "box_iou")
    assert result.verdict == "FAIL"
    assert "modified its input `boxes1` in place" in result.failures[0].reason


# --- 3. devices: cpu and cuda only -----------------------------------------------------------


@pytest.mark.parametrize("name", ["meta", "tpu", "cuda:x", "mps", "cpu:1"])
def test_cli_device_other_than_cpu_or_cuda_exits_2_with_one_short_line(name, capsys):
    code = main(["verify", "--device", name, "--op", "nms", "--examples", "1", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert line.startswith(f"detops verify: error: --device {name}: "), line
    assert "verify runs on cpu or cuda" in line and len(line) < 120, line


def test_api_refuses_a_device_other_than_cpu_or_cuda():
    with pytest.raises(
        ValueError, match=r"^verify: device 'meta': verify runs on cpu or cuda .*, not on meta$"
    ):
        verify(load_target(str(IMPLS / "partial.py")), device="meta", **FAST)


# --- 4. loading an implementation: say what is wrong -----------------------------------------


@pytest.mark.parametrize(
    ("source", "found"),
    [("nms = 5\n", "it is int 5"), ("import math as nms\n", "it is the module math")],
)
def test_cli_a_course_name_bound_to_a_non_callable_is_named(source, found, tmp_path, capsys):
    impl = tmp_path / "five.py"
    impl.write_text(source)
    assert main(["verify", "--impl", str(impl), "--examples", "1"]) == 2
    line = one_error_line(capsys)
    assert f"--impl {impl}: `nms` is not callable: {found};" in line, line


def test_a_placeholder_none_is_missing_not_an_error(tmp_path):
    impl = tmp_path / "placeholder.py"
    impl.write_text("from detops import box_iou\n\nnms = None  # TODO\n")
    target = load_target(str(impl))
    assert sorted(target.functions) == ["box_iou"]


def test_cli_a_folder_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "solution.py").write_text("")
    assert main(["verify", "--impl", str(tmp_path), "--examples", "1"]) == 2
    line = one_error_line(capsys)
    assert f"--impl {tmp_path}: is a folder; --impl takes a .py file, a module name or " in line
    assert "'torchvision'" in line and "solution.py" in line, line


def test_a_package_folder_named_like_a_module_still_imports(tmp_path, monkeypatch):
    name = "detops_trial_package"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("from detops import box_iou\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert sorted(load_target(name).functions) == ["box_iou"]
    finally:
        sys.modules.pop(name, None)


def test_a_plain_folder_named_like_an_installed_package_does_not_hide_it(tmp_path, monkeypatch):
    # (a checkout of detops, run from its parent: ./detops is a folder without __init__.py)
    (tmp_path / "detops").mkdir()
    (tmp_path / "detops" / "README.md").write_text("")
    monkeypatch.chdir(tmp_path)
    target = load_target("detops")
    assert "nms" in target.functions and target.functions["nms"].__module__ == "detops.nms"


def test_a_plain_folder_named_like_a_module_is_named_as_a_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "no_such_package_here").mkdir()
    (tmp_path / "no_such_package_here" / "solution.py").write_text("")
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["verify", "--impl", "no_such_package_here", "--examples", "1"]) == 2
    finally:
        sys.modules.pop("no_such_package_here", None)
    line = one_error_line(capsys)
    assert "--impl no_such_package_here: is a folder;" in line and "solution.py" in line, line


def test_cli_an_empty_impl_is_named_as_empty(capsys):
    assert main(["verify", "--impl", "", "--examples", "1"]) == 2
    assert "--impl: empty;" in one_error_line(capsys)


# --- 5. shrinking that runs out of budget says so; rows print as rows ------------------------


def test_a_hang_whose_shrinking_ran_out_of_budget_says_so(tmp_path):
    impl = tmp_path / "hangs_from_three.py"
    impl.write_text(
        "from detops import nms as _nms\n\n\n"
        "def nms(boxes, scores, iou_threshold=0.5):\n"
        "    while boxes.shape[0] >= 3:\n"
        "        pass\n"
        "    return _nms(boxes, scores, iou_threshold)\n"
    )
    options = {**FAST, "timeout": 0.3, "shrink_draws": 2, "examples": 20}
    report = verify(load_target(str(impl)), names=["nms"], **options)
    result = only(report, "nms")
    generated = [f for f in result.failures if f.kind == "timeout" and not f.probe]
    assert generated, result.failures
    note = generated[0].shrink_note
    assert note.startswith("shrinking stopped after 2 tries, its budget;"), note
    assert "a smaller input may hang too" in note and "--timeout 0.3 s" in note, note
    text = format_report(report)
    assert "generated case (not fully shrunk)]" in text
    assert f"  shrink:   {note}" in text


def test_a_failure_shrunk_to_the_end_has_no_note():
    report = verify(
        load_target(str(IMPLS / "wrong_locations_row_index.py")),
        names=["get_fpn_location_coords"],
        **{**FAST, "shrink_seconds": 30.0, "shrink_draws": 1000},
    )
    generated = [f for f in only(report, "get_fpn_location_coords").failures if not f.probe]
    assert generated and all(not f.shrink_note for f in generated)
    assert "generated case (shrunk)]" in format_report(report)
    report = verify(
        load_target(str(IMPLS / "wrong_locations_row_index.py")),
        names=["get_fpn_location_coords"],
        **{**FAST, "shrink_draws": 0},
    )
    generated = [f for f in only(report, "get_fpn_location_coords").failures if not f.probe]
    note = generated[0].shrink_note
    assert "a smaller input may fail too" in note and "--shrink-seconds" in note, note


def test_shrink_seconds_0_reports_the_first_failing_input_found():
    report = verify(
        load_target(str(IMPLS / "wrong_locations_row_index.py")),
        names=["get_fpn_location_coords"],
        **{**FAST, "shrink_seconds": 0},
    )
    result = only(report, "get_fpn_location_coords")
    assert result.verdict == "FAIL"
    generated = [f for f in result.failures if not f.probe]
    assert generated and all(f.input and f.data["input"] for f in generated), generated
    note = generated[0].shrink_note
    assert note == (
        "shrinking is off (a shrink budget of 0 s); this is the first failing input found"
    )
    text = format_report(report)
    assert "generated case (not shrunk)]" in text and f"  shrink:   {note}" in text
    assert "gives it more time" not in text and "its budget" not in text


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (
            -1.0,
            ValueError,
            r"must be >= 0 \(0: no shrinking\) and at most 86400 s \(a day\), got -1.0",
        ),
        (float("nan"), ValueError, "must be >= 0 .*, got nan"),
        (float("inf"), ValueError, "must be .* at most 86400 s .*, got inf"),
        (1e10, ValueError, "must be .* at most 86400 s .*, got 10000000000.0"),
        ("1", TypeError, "must be a number of seconds >= 0, got str"),
    ],
)
def test_verify_refuses_a_bad_shrink_seconds(value, error, message):
    with pytest.raises(error, match=f"^verify: shrink_seconds {message}"):
        verify(load_target(str(IMPLS / "partial.py")), **{**FAST, "shrink_seconds": value})


def test_a_large_array_prints_whole_rows():
    boxes = np.arange(80, dtype=np.float32).reshape(20, 4)
    text = format_value(boxes)
    assert text.startswith("array[20, 4] float32 first 16 of 20 rows: [[ 0.,  1.,  2.,  3.], ")
    assert text.endswith("[60., 61., 62., 63.]]")
    flat = format_value(np.arange(100, dtype=np.float32))
    assert flat.startswith("array[100] float32 first 64: [ 0.,  1.,")
    wide = format_value(np.zeros((2, 100)))  # a row longer than the limit: flat
    assert "first 64: [0., 0.," in wide


# --- 6. a second trial: bad arguments before the import, Ctrl-C at start-up, refusals that
# --- are crashes, the target's prints -------------------------------------------------------


def _target_that_leaves_a_mark(tmp_path) -> tuple[Path, Path]:
    """A file with a correct box_iou that creates a marker file when it is imported."""
    marker = tmp_path / "imported"
    impl = tmp_path / "leaves_a_mark.py"
    impl.write_text(
        f"from pathlib import Path\n\nfrom detops.boxes import box_iou\n\n"
        f"Path({str(marker)!r}).touch()\n"
    )
    return impl, marker


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (["nosuchop"], f"--op: nosuchop is not a course function; known: {', '.join(SEED_NAMES)}"),
        (["box_iou", "bogus"], "--op: bogus is not a course function; known: "),
        (["bogus", "nms", "also"], "--op: bogus, also are not course functions; known: "),
    ],
    ids=["unknown op", "one unknown op of two", "two unknown ops"],
)
def test_cli_refuses_an_unknown_op_before_anything_imports_the_target(
    ops, message, tmp_path, capsys, monkeypatch
):
    impl, marker = _target_that_leaves_a_mark(tmp_path)
    started: list[ForkServer] = []
    monkeypatch.setattr(ForkServer, "start", lambda server: started.append(server))
    argv = ["verify", "--impl", str(impl), "--examples", "1"]
    assert main([*argv, *[arg for op in ops for arg in ("--op", op)]]) == 2
    assert one_error_line(capsys).startswith(f"detops verify: error: {message}")
    assert not marker.exists() and not started


def test_cli_refuses_a_missing_file_before_starting_the_worker_server(
    tmp_path, capsys, monkeypatch
):
    started: list[ForkServer] = []
    monkeypatch.setattr(ForkServer, "start", lambda server: started.append(server))
    missing = tmp_path / "missing.py"
    assert main(["verify", "--impl", str(missing), "--examples", "1"]) == 2
    assert one_error_line(capsys) == f"detops verify: error: --impl {missing}: no such file"
    assert not started


@pytest.mark.usefixtures("ctrl_c_at_the_option_check")
def test_cli_ctrl_c_while_verify_imports_its_modules_still_writes_the_json(tmp_path, capsys):
    # While the command checks its options and imports torch and hypothesis, Ctrl-C waits
    # until those imports are done: a KeyboardInterrupt inside them left half-imported
    # modules, and no --json.
    json_path = tmp_path / "verify.json"
    code = main(["verify", "--impl", str(IMPLS / "correct.py"), "--json", str(json_path)])
    assert code == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "detops verify: interrupted before the first function", err
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["functions"] == [] and data["passed"] is False
    assert data["environment"]["device"] == "cpu" and data["environment"]["torch"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.usefixtures("python_sigint_handler")  # the child must not inherit SIGINT ignored
@pytest.mark.parametrize("after", [0.0, 0.5], ids=["as torch loads", "0.5 s later"])
def test_cli_a_real_ctrl_c_during_start_up_exits_130_with_the_json(after, tmp_path):
    json_path = tmp_path / "verify.json"
    args = ["verify", "--impl", str(IMPLS / "correct.py"), "--json", str(json_path)]
    returncode, out, err = ctrl_c_while_torch_loads(args, after)
    assert returncode == 130, (returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    data = json.loads(json_path.read_text())
    assert data["interrupted"] is True and data["functions"] == [] and data["passed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verify.json"]  # written atomically


def test_a_refusal_counts_only_where_the_function_accepts_the_input_without_it():
    nan_probe = "a NaN score is refused"
    options = {**FAST, "shrink_seconds": 0}
    report = verify(load_target(str(IMPLS / "wrong_raising_nms.py")), names=["nms"], **options)
    raising = only(report, "nms")
    assert raising.verdict == "FAIL"
    (probe,) = [p for p in raising.probes if p.label == nan_probe]
    assert probe.verdict == "N/A"
    assert probe.note == (
        "the same input without the NaN (score 0.5 in its place) fails too: nms raised "
        "NotImplementedError: TODO: write nms (at wrong_raising_nms.py:5 in nms)"
    )
    assert sum(p.verdict == "PASS" for p in raising.probes) == 0
    text = format_report(report)
    assert f"N/A nms [float32, probe '{nan_probe}']: the same input without the NaN" in text
    assert f"0/{len(raising.probes)}" in text
    # detops' own nms refuses only the NaN: it passes the probe.
    detops_nms = only(verify(load_target(None), names=["nms"], **options), "nms")
    assert {p.label: p.verdict for p in detops_nms.probes}[nan_probe] == "PASS"
    assert detops_nms.verdict == "PASS", detops_nms.summary


def test_cli_the_targets_prints_go_to_stderr_and_stdout_holds_only_the_report(tmp_path, capfd):
    impl = tmp_path / "prints.py"
    impl.write_text(
        "import os\n\nfrom detops.boxes import box_iou\n\n"
        "print('printed at import')\n"
        "os.write(1, b'written to fd 1 at import\\n')\n"
    )
    code = main(["verify", "--impl", str(impl), "--op", "box_iou", "--examples", "2"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "printed at import" in err and "written to fd 1 at import" in err
    lines = out.splitlines()
    assert lines[0] == f"detops verify: {impl}", out
    assert lines[-1].startswith("PASS: 1 function in "), out
    assert "printed" not in out and "written" not in out, out


@pytest.mark.parametrize(
    "examples, words", [(1, "1 generated case per dtype"), (2, "2 generated cases")]
)
def test_the_report_header_counts_its_cases_in_words(examples, words):
    report = detops.verify.VerifyReport("x.py", "functions", examples, 0, 10.0, "cpu", [])
    assert words in format_report(report).splitlines()[1]


def test_generated_matching_cases_keep_to_the_level_names_the_course_code_knows():
    """The course's matcher sets its size ranges by level name (p3: no lower bound, p5: no
    upper one); detops by stride order. Generated cases reach the course's function only
    where the two agree: two levels p3, p4 are renamed p3, p5, and one level alone (no
    course range is (0, inf)) is outside the shared contract."""
    from detops.testing.strategies import Case

    spec = spec_by_name("fcos_match_locations_to_gt")
    assert spec.prepare is not None and spec.domain is not None
    gt = np.array([[0.0, 0.0, 40.0, 40.0, 1.0]])
    points = np.array([[4.0, 4.0]])
    two = spec.prepare(Case(({"p3": points, "p4": points}, {"p3": 8, "p4": 16}, gt), {}))
    assert two is not None
    locations, strides, _ = two.args
    assert list(locations) == ["p3", "p5"] and strides == {"p3": 8, "p5": 16}
    assert spec.domain(two, torch.float32) is None
    one = spec.prepare(Case(({"p3": points}, {"p3": 4}, gt), {}))
    assert one is not None
    assert "levels other than the course's p3" in spec.domain(one, torch.float32)
    three = {"p3": 8, "p4": 16, "p5": 32}
    full = spec.prepare(Case(({k: points for k in three}, three, gt), {}))
    assert full is not None and spec.domain(full, torch.float32) is None
