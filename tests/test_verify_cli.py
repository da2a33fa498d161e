"""``detops verify``: three verdicts a student can trust.

* Correct implementations (three independent ones, torchvision, the course's provided
  functions) never FAIL; where they differ from detops outside the shared contract they
  DEPART.
* Each student-style wrong implementation (tests/impls/wrong_*.py, its bug in its
  docstring) FAILs with the hint of its mistake, or DEPARTS where the mistake is the course
  code's or torchvision's own behaviour, or only shows outside the pipeline's domain.
* The harness never crashes, kills hangs without poisoning later calls, reports every
  independent failure kind, and its command line reports and exits as documented.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from verify_helpers import FAST, IMPLS, child_pids, gone, only

from detops.cli import main
from detops.testing import EXACT, Case, Tolerance, compare_trees, entry_by_name
from detops.verify import load_target, stderr_progress, verify
from detops.verify.course_api import (
    SEED_NAMES,
    SEED_SPECS,
    CallFailure,
    collect_problems,
    spec_by_name,
)
from detops.verify.harness import (
    ForkedRunner,
    ForkServer,
    FunctionReport,
    GuardedCall,
    VerifyReport,
    _worker_job,
    compare_bounded,
    format_report,
)

ROOT = Path(__file__).parent.parent


def run(module: str, *names: str, **overrides):
    options = {**FAST, **overrides}
    return verify(load_target(str(IMPLS / f"{module}.py")), names=list(names), **options)


def hints_of(result, shared: bool) -> list[str]:
    return [hint for f in result.failures if f.shared == shared for hint in f.hints]


def hint_text(name: str, short: str) -> str:
    """The hint line of the known mistake ``short`` of course function ``name``."""
    return spec_by_name(name).hint(short).text


def no_fail(report) -> None:
    failing = [(f.name, f.summary, f.failures[:1]) for f in report.checked if f.verdict == "FAIL"]
    assert not failing, failing
    assert all(f.verdict in ("PASS", "DEPARTS") for f in report.checked), [
        (f.name, f.verdict, f.note) for f in report.checked
    ]
    assert report.passed


# --- correct implementations never FAIL -----------------------------------------------------


@pytest.mark.parametrize("module", ["correct", "correct_loops", "correct_vectorized"])
def test_correct_implementations_never_fail(module):
    report = verify(load_target(str(IMPLS / f"{module}.py")), **{**FAST, "dtypes": None})
    assert len(report.checked) == len(SEED_NAMES)
    no_fail(report)
    for result in report.checked:
        assert result.cases > 0 and result.probes, result.name
        for failure in result.departures:  # each departure says what detops does there
            assert failure.departure and failure.probe and failure.input, failure
    if module != "correct_vectorized":  # written to detops' own contract: no departure
        assert report.passed_strict, [(f.name, f.summary) for f in report.checked]
        failed = [
            (f.name, p.label) for f in report.checked for p in f.probes if p.verdict != "PASS"
        ]
        assert not failed, failed


def test_detops_exports_pass_through_the_course_adapters():
    # detops' own ops take the per-image calls too: the adapters and probes are consistent.
    report = verify(load_target("detops"), **{**FAST, "examples": 3})
    assert [f.verdict for f in report.functions] == ["PASS"] * len(SEED_NAMES), [
        (f.name, f.summary) for f in report.functions if f.verdict != "PASS"
    ]
    for result in report.functions:  # every probe, inside the shared contract or not
        assert result.probes and all(p.verdict == "PASS" for p in result.probes), result.probes


def test_course_functions_depart_but_never_fail():
    report = run("course", "fcos_match_locations_to_gt", "class_spec_nms", "nms")
    no_fail(report)
    assert not report.passed_strict
    matching = only(report, "fcos_match_locations_to_gt")
    assert matching.verdict == "DEPARTS"
    assert {f.probe for f in matching.departures} >= {
        "areas 1681 and 1680: exact comparison, not 1e8 - area in float32",
        "image with zero GT rows (N = 0)",
    }
    departing_hints = hints_of(matching, shared=False)
    empty_gt = hint_text("fcos_match_locations_to_gt", "fails without GT boxes")
    assert hint_text("fcos_match_locations_to_gt", "1e8 - area float32 trick") in departing_hints
    assert empty_gt in departing_hints
    assert "https://github.com/tianzhi0549/FCOS/issues/190" in empty_gt
    class_nms = only(report, "class_spec_nms")
    assert class_nms.verdict == "DEPARTS"
    assert hint_text("class_spec_nms", "class-offset trick") in hints_of(class_nms, shared=False)


def test_student_forms_outside_the_pipeline_depart_but_never_fail():
    report = verify(
        load_target(str(IMPLS / "student_forms.py")),
        **{**FAST, "dtypes": None, "examples": 40},
    )
    no_fail(report)
    nms_result = only(report, "nms")
    assert nms_result.verdict == "DEPARTS"
    assert "two zero-area boxes (their IoU is 0 / 0)" in {f.probe for f in nms_result.departures}
    focal = only(report, "sigmoid_focal_loss")
    assert focal.verdict == "DEPARTS"
    soft = "large |x| with a soft target (x = -10000, t = 0.00137, no alpha, gamma 0)"
    assert soft in {f.probe for f in focal.departures}


def test_the_shared_contract_leaves_out_zero_area_pairs_soft_targets_and_alpha_minus_one():
    # (The generated cases stay inside the contract: these were generated, and FAILed
    # correct forms, before.)
    nms_spec, focal_spec = spec_by_name("nms"), spec_by_name("sigmoid_focal_loss")
    zero_area = Case((np.array([[0.0, 0, 0, 0], [0, 0, 0, 0]]), np.array([0.9, 0.8])), {})
    zero_area = Case(zero_area.args + (0.3,), {})
    assert nms_spec.domain(zero_area, torch.float32) == "two zero-area boxes (IoU 0 / 0)"
    hard = Case((np.array([1.0, -2.0]), np.array([1.0, 0.0])), {"alpha": 0.25, "gamma": 2.0})
    assert focal_spec.domain(hard, torch.float32) is None
    soft = Case((np.array([1.0]), np.array([0.5])), {"alpha": 0.25, "gamma": 2.0})
    assert focal_spec.domain(soft, torch.float32).startswith("soft targets")
    no_alpha = Case(hard.args, {"alpha": -1.0, "gamma": 2.0})
    assert focal_spec.domain(no_alpha, torch.float32).startswith("alpha -1")


def test_a_target_that_sets_numpy_errors_to_raise_gets_no_false_fail(tmp_path):
    # np.seterr(all="raise") at the top of the file reached verify's own error model (an
    # underflow in logaddexp, then a bound of 0: torchvision's focal loss FAILed) and its
    # NMS code (ERROR). verify's checks run under NumPy's default error handling, scoped;
    # the file's settings themselves stay (its import is the user's own doing).
    target = tmp_path / "strict_numpy.py"
    target.write_text(
        "import numpy as np\nimport torch\n"
        "np.seterr(all='raise')\n"
        "torch.set_default_dtype(torch.float64)\n"
        "from torchvision.ops import nms, sigmoid_focal_loss\n"
    )
    errors, dtype = np.geterr(), torch.get_default_dtype()
    try:
        loaded = load_target(str(target))
        assert np.geterr()["under"] == "raise"  # not undone behind the user's back
        report = verify(loaded, **{**FAST, "dtypes": None, "examples": 10})
        assert np.geterr()["under"] == "raise"  # and the scope ended with the run
    finally:
        np.seterr(**errors)
        torch.set_default_dtype(dtype)
    no_fail(report)
    soft = "large |x| with a soft target (x = -10000, t = 0.00137, no alpha, gamma 0)"
    focal = only(report, "sigmoid_focal_loss")
    assert [p.verdict for p in focal.probes if p.label == soft] == ["PASS"]


def test_torchvision_gives_no_fail_and_lists_its_departures():
    report = verify(load_target("torchvision"), **{**FAST, "dtypes": None, "examples": 30})
    assert [f.name for f in report.functions] == [
        n
        for n in SEED_NAMES
        if n in ("nms", "class_spec_nms", "sigmoid_focal_loss", "box_iou", "clip_boxes_to_image")
    ]
    no_fail(report)
    departures = {
        "nms": "a NaN score is refused",
        "class_spec_nms": "negative coordinates (max coordinate -1: the class offset is 0)",
        "sigmoid_focal_loss": "mean over an empty input is 0",
        "box_iou": "zero-area boxes (union 0)",
    }
    for name, probe in departures.items():
        result = only(report, name)
        assert result.verdict == "DEPARTS", (name, result.summary)
        assert probe in {f.probe for f in result.departures}, name
    assert only(report, "clip_boxes_to_image").verdict == "PASS"


@pytest.mark.slow
def test_torchvision_and_float32_formulas_no_fail_at_many_examples():
    # The acceptance run is --examples 1000: measured by hand on the 2-core
    # development machine, `detops verify --impl torchvision --examples 1000` gives no FAIL
    # in 72 s (1 PASS, 4 DEPARTS). That is too slow for the suite: 200 examples here, for
    # torchvision and for the float32 textbook formulas.
    options = {**FAST, "examples": 200, "dtypes": None, "timeout": 10.0}
    no_fail(verify(load_target("torchvision"), **options))
    no_fail(
        verify(
            load_target(str(IMPLS / "correct_vectorized.py")),
            names=["sigmoid_focal_loss", "box_iou", "nms", "fcos_get_deltas_from_locations"],
            **options,
        )
    )


# --- wrong implementations: FAIL with the hint of the mistake --------------------------------

# (module, course function, the known mistake's short name in the catalogue)
FAIL_CASES = [
    ("wrong_locations_transposed", "get_fpn_location_coords", "transposed location order"),
    ("wrong_locations_row_index", "get_fpn_location_coords", "x from the row index"),
    ("wrong_locations_stride_floor", "get_fpn_location_coords", "stride // 2 offsets"),
    ("wrong_locations_int64", "get_fpn_location_coords", "stride // 2 offsets"),
    ("wrong_match_inclusive", "fcos_match_locations_to_gt", "inclusive size bounds"),
    ("wrong_match_max_area", "fcos_match_locations_to_gt", "max-area tie-break"),
    ("wrong_deltas_unscaled", "fcos_get_deltas_from_locations", "not divided by stride"),
    ("wrong_deltas_background", "fcos_get_deltas_from_locations", "background deltas not -1"),
    ("wrong_apply_unclamped", "fcos_apply_deltas_to_locations", "deltas not clamped"),
    (
        "wrong_centerness_background",
        "fcos_make_centerness_targets",
        "background centerness not -1",
    ),
    ("wrong_nms_ge", "nms", ">= instead of >"),
    ("wrong_nms_ge", "class_spec_nms", ">= instead of >"),
    ("wrong_nms_never_suppresses", "nms", "never suppresses"),
    ("wrong_nms_hangs_zero_area", "nms", "hangs: kept box removed by its self-IoU"),
    ("wrong_focal_alpha", "sigmoid_focal_loss", "alpha on the wrong class"),
    ("wrong_iou_plus_one", "box_iou", "+1 pixel areas"),
    ("wrong_clip_swapped", "clip_boxes_to_image", "(width, height) swapped"),
]


@pytest.mark.parametrize(
    ("module", "name", "mistake"), [pytest.param(*case, id=case[0]) for case in FAIL_CASES]
)
def test_wrong_implementation_fails_with_its_hint(module, name, mistake):
    hint = hint_text(name, mistake)
    report = run(module, name, timeout=1.0)
    result = only(report, name)
    assert result.verdict == "FAIL", result.summary
    assert not report.passed
    hints = hints_of(result, shared=True)
    assert any(hint in text for text in hints), f"{hint!r} not in {hints}"
    for failure in result.failures:
        assert failure.input
        if failure.kind == "mismatch":
            assert failure.expected and failure.actual and failure.expected != failure.actual


def test_at_least_ten_student_style_bugs_each_described():
    wrong = sorted(IMPLS.glob("wrong_*.py"))
    assert len({case[0] for case in FAIL_CASES}) >= 10
    for path in wrong:
        text = path.read_text()
        assert text.startswith('"""') and len(text.split('"""')[1].split()) >= 5, path.name


DEPARTS_CASES = [
    # The mistake is the course code's or torchvision's own behaviour, or shows only outside
    # the pipeline's domain: DEPARTS with the hint, never FAIL.
    ("course", "fcos_match_locations_to_gt", "1e8 - area float32 trick"),
    ("course", "class_spec_nms", "class-offset trick"),
    ("wrong_centerness_nan", "fcos_make_centerness_targets", "NaN at zero denominator"),
    ("wrong_iou_nan", "box_iou", "NaN IoU for zero union"),
]


@pytest.mark.parametrize(
    ("module", "name", "mistake"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in DEPARTS_CASES],
)
def test_mistake_outside_the_shared_contract_departs_with_its_hint(module, name, mistake):
    hint = hint_text(name, mistake)
    report = run(module, name)
    result = only(report, name)
    assert result.verdict == "DEPARTS", result.summary
    assert report.passed and not report.passed_strict
    assert any(hint in text for text in hints_of(result, shared=False))


def test_independent_failures_are_all_reported():
    # int64 locations AND floored offsets: a wrong dtype must not hide wrong values.
    result = only(
        run("wrong_locations_int64", "get_fpn_location_coords"), "get_fpn_location_coords"
    )
    keys = {f.key for f in result.failures if f.shared}
    assert {"dtype", "mismatch"} <= keys, result.failures
    dtype_failure = next(f for f in result.failures if f.key == "dtype")
    assert "has dtype int64, expected float32" in dtype_failure.reason


def test_hint_only_when_the_mistake_reproduces_the_output():
    # An nms that never suppresses also differs on the float16 probe: the report names its
    # real cause, not float16.
    result = only(run("wrong_nms_never_suppresses", "nms"), "nms")
    assert result.verdict == "FAIL"
    for failure in result.failures:
        for hint in failure.hints:
            assert hint == hint_text("nms", "never suppresses"), hint
    assert "float16" not in {f.probe for f in result.failures}


def test_ordinary_suppression_is_probed():
    labels = [probe.label for probe in spec_by_name("nms").probes if probe.shared]
    assert any("ordinary suppression" in label for label in labels)
    result = only(run("wrong_nms_never_suppresses", "nms"), "nms")
    failed = {p.label for p in result.probes if p.verdict == "FAIL"}
    assert any("ordinary suppression" in label for label in failed)


# --- robustness: raising, hanging, mutating, wrong dtype/device/shape -----------------------

ROBUSTNESS_CASES = [  # (module, function, failure kind, pattern of its reason)
    ("wrong_raising", "box_iou", "raised", r"raised NotImplementedError: TODO: write box_iou"),
    ("wrong_hanging", "clip_boxes_to_image", "timeout", r"did not return within"),
    ("wrong_mutating", "clip_boxes_to_image", "mutated", r"modified its input `boxes` in place"),
    ("wrong_dtype", "box_iou", "output", r"has dtype float64, expected float32"),
    ("wrong_device", "get_fpn_location_coords", "output", r"is on device meta, expected cpu"),
    # (the rows left depend on how far shrinking got within its time budget: any N)
    ("wrong_shape", "fcos_make_centerness_targets", "output",
     r"has shape \[(\d+), 1\], expected \[\1\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("module", "name", "kind", "reason"),
    [pytest.param(*case, id=case[0]) for case in ROBUSTNESS_CASES],
)
def test_misbehaving_function_fails_with_reason(module, name, kind, reason):
    report = run(module, name, timeout=0.5)
    result = only(report, name)
    assert result.verdict == "FAIL"
    failure = result.failures[0]
    assert failure.kind == kind, failure
    assert re.search(reason, failure.reason), failure.reason


def test_a_hang_does_not_poison_later_calls_and_shrinks():
    # (No bound on the wall time: a poisoned worker shows as later probes timing out.)
    # (a budget the shrinker does not reach on a loaded machine: it stops when done)
    # (Seed 2: its cases hang early on one zero-area box, which shrinks to itself; under
    # seed 0 the first hang is a 26-box grid at threshold 1.0, which the shrinker cannot
    # reduce while keeping it inside the shared contract, as pairs of zero-area boxes are
    # not.)
    report = run("wrong_nms_hangs_zero_area", "nms", timeout=0.5, shrink_seconds=120.0, seed=2)
    result = only(report, "nms")
    timeouts = [f for f in result.failures if f.kind == "timeout"]
    assert timeouts and all(f.shared for f in timeouts)
    # The probes after the hanging one ran in a fresh worker: none of them timed out.
    labels = [p.label for p in spec_by_name("nms").probes]
    hang_at = labels.index("a zero-area box among others")
    later = {p.label: p.verdict for p in result.probes[hang_at + 1 :]}
    assert later and later["tied scores keep index order"] == "PASS", later
    shrunk = next(f for f in timeouts if not f.probe)
    boxes = np.asarray(shrunk.data["input"]["boxes"])
    # The shrinker reaches a tiny hanging input (1 box here when idle; each candidate that
    # still hangs costs the 0.5 s limit and a new worker), or, on a loaded machine, says it
    # stopped at its budget: never a large input passed off as shrunk.
    if shrunk.shrink_note:
        assert "stopped" in shrunk.shrink_note, shrunk.shrink_note
    else:
        assert boxes.shape[0] <= 2, shrunk.input
        assert hint_text("nms", "hangs: kept box removed by its self-IoU") in shrunk.hints


def test_forked_runner_kills_a_hang_and_starts_afresh(tmp_path):
    if not ForkedRunner.available():
        pytest.skip("no fork on this platform")
    impl = tmp_path / "hang_on_three.py"
    impl.write_text(
        "import torch\n\n\ndef box_iou(boxes1, boxes2):\n"
        "    while boxes1.shape[0] == 3:\n"
        "        pass\n"
        "    return torch.zeros(boxes1.shape[0], boxes2.shape[0])\n"
    )
    target = load_target(str(impl))
    job = _worker_job(target.functions["box_iou"], "box_iou", target.source, 0.5, "cpu")
    server = ForkServer(target.source)
    runner = ForkedRunner(server, job, "box_iou", timeout=0.5)
    hang, ok = (Case((np.zeros((n, 4)), np.zeros((1, 4)))) for n in (3, 2))
    try:
        with pytest.raises(CallFailure, match="did not return within 0.5 s"):
            runner(hang, torch.float32)
        assert runner.pid is None  # killed
        out, problems = runner(ok, torch.float32)  # a fresh worker from the same server
        assert out.tolist() == [[0.0], [0.0]] and problems == []
        worker = runner.pid
        assert worker is not None and worker != os.getpid()
    finally:
        runner.close()
        server.close()
    assert runner.pid is None and gone(worker)
    assert server.process is not None and server.process.returncode == 0


def test_cli_exits_1_not_134_for_a_function_that_hangs_in_torch(tmp_path):
    impl = tmp_path / "hang_in_torch.py"
    impl.write_text(
        "import torch\n\n\ndef box_iou(boxes1, boxes2):\n"
        "    x = torch.ones(64, 64)\n"
        "    while True:\n"
        "        x = (x @ x).clamp(max=1)\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detops",
            "verify",
            "--impl",
            str(impl),
            "--examples",
            "2",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "did not return within 0.5 s" in proc.stdout
    assert "terminate called" not in proc.stderr


def test_function_that_ends_its_process_fails_with_reason(tmp_path):
    impl = tmp_path / "exits.py"
    impl.write_text("import os\n\n\ndef box_iou(boxes1, boxes2):\n    os._exit(3)\n")
    report = verify(load_target(str(impl)), **FAST)
    result = only(report, "box_iou")
    assert result.verdict == "FAIL"
    assert "ended the process that ran it (exit status 3)" in result.failures[0].reason


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (  # (not 0: were it imported here after all, this test run would end "passed")
            "import os\n\nos._exit(7)\n",
            "importing it ended the process that imported it: the worker process server "
            "ended (exit status 7)",
        ),
        (
            "import time\n\ntime.sleep(600)\n",
            "importing it did not finish: the worker process server did not start within 4 s",
        ),
    ],
    ids=["os._exit(7) at import", "a hang at import"],
)
def test_cli_reports_a_file_whose_import_ends_or_hangs_its_process(
    tmp_path, capsys, monkeypatch, source, message
):
    # The worker server imports the file before this process does: without that, os._exit
    # (0) ended `detops verify` with status 0 and no report, and a hang hung it.
    import detops.verify.harness as harness

    monkeypatch.setattr(harness, "_TARGET_IMPORT_SECONDS", 4.0)
    impl = tmp_path / "bad_import.py"
    impl.write_text(source)
    before = child_pids()
    code = main(["verify", "--impl", str(impl), "--examples", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"detops verify: error: --impl {impl}: {message}; verify imports" in err, err
    assert child_pids() <= before


def test_cli_exit_status_is_not_0_for_a_file_that_exits_0_at_import(tmp_path):
    impl = tmp_path / "exits_0.py"
    impl.write_text("import os\n\nos._exit(0)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "detops", "verify", "--impl", str(impl), "--examples", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "ended (exit status 0); verify imports your file" in proc.stderr


def test_guard_reports_in_place_changes_but_not_writes_that_change_nothing():
    # "an input changed in place" (README): the values and layout are compared with a
    # snapshot, bit for bit; a write that leaves them as they were changes nothing.
    def touch(boxes):
        boxes.clamp_(-1e9, 1e9)  # writes into the caller's tensor, but changes no value
        boxes.mul_(1.0)
        return boxes

    def shrink(boxes):
        boxes.mul_(0.5)
        return boxes

    def rename(levels):
        levels["extra"] = 1
        return levels

    assert GuardedCall(touch, "touch", 5.0)(torch.ones(2, 4)).shape == (2, 4)
    with pytest.raises(CallFailure, match="modified its input `boxes`"):
        GuardedCall(shrink, "shrink", 5.0)(torch.ones(2, 4))
    with pytest.raises(CallFailure, match=r"`levels \(keys changed\)`"):
        GuardedCall(rename, "rename", 5.0)({"p3": torch.ones(1)})
    assert GuardedCall(lambda x: x + 1, "ok", 5.0)(torch.ones(1)).item() == 2.0
    # Inside collect_problems the mutation is collected, and the value still returned.
    with collect_problems() as problems:
        out = GuardedCall(shrink, "shrink", 5.0)(torch.ones(2, 4))
    assert out.shape == (2, 4) and problems and problems[0][1] == "mutated"


def test_partial_module_reports_missing_and_passes():
    report = verify(load_target(str(IMPLS / "partial.py")), **FAST)
    verdicts = {f.name: f.verdict for f in report.functions}
    assert verdicts["get_fpn_location_coords"] == "PASS"
    missing = [name for name, verdict in verdicts.items() if verdict == "MISSING"]
    assert len(missing) == 8 and "nms" in missing
    assert report.passed


# --- error models: tolerances follow the conditioning ---------------------------------------


def test_focal_error_model_passes_float32_rounding_of_the_formula():
    # The example: torchvision returns 13.7001953125 where float64 gives 13.69999954.
    t = float(np.float32(0.00137))
    case = Case((np.array([-10000.0]), np.array([t])), {"alpha": -1.0, "gamma": 0.0})
    entry = entry_by_name("sigmoid_focal_loss")
    ref_case = entry.reference_inputs(case, torch.float32)
    expected = entry.reference(*ref_case.args, **ref_case.kwargs)
    tol = entry.tolerances[torch.float32]
    bound = spec_by_name("sigmoid_focal_loss").error_bound(ref_case, expected, torch.float32)
    assert compare_bounded(np.array([13.7001953125]), expected, tol, bound).ok
    # A real error at the same point is still caught (meta-test of the comparison).
    assert not compare_bounded(np.array([13.75]), expected, tol, bound).ok
    assert not compare_bounded(np.array([13.7001953125]), expected, tol, 0.0).ok


def test_bounded_comparison_catches_nan_and_shape():
    tol = Tolerance(1e-6, 1e-6)
    assert not compare_bounded(np.array([np.nan]), np.array([0.0]), tol, 1.0).ok
    assert not compare_bounded(np.array([1.0, 2.0]), np.array([1.0]), tol, 1.0).ok
    assert compare_bounded(np.array([np.inf]), np.array([np.inf]), tol, 0.0).ok


@pytest.mark.parametrize("spec", [s for s in SEED_SPECS if s.domain], ids=lambda s: s.name)
def test_generated_cases_stay_inside_the_shared_contract(spec):
    entry = entry_by_name(spec.entry_name)

    @settings(max_examples=20, deadline=None)
    @given(case=spec.generated_cases(entry, torch.float32))
    def check(case):
        assert spec.domain(entry.reference_inputs(case, torch.float32), torch.float32) is None

    check()
    # And the probes that are marked outside really are outside.
    for probe in spec.probes:
        if not probe.shared and not probe.refuse and probe.dtype == torch.float32:
            ref_case = entry.reference_inputs(probe.case(), probe.dtype)
            assert spec.domain(ref_case, probe.dtype) is not None, probe.label


def test_a_largest_distance_a_rounding_away_from_a_size_bound_is_outside_the_contract():
    # Found at --examples 1000 with the course code's matcher: in float32 the distance
    # 1.54717 - -54.45283 is 56.0, on p4's lower bound; in float64 it is 56.0000013, above.
    spec = spec_by_name("fcos_match_locations_to_gt")
    x, x1, x2 = (float(np.float32(v)) for v in (1.54717, -54.45283, 2.5471702))
    locations = {"p3": np.zeros((0, 2)), "p4": np.array([[x, 0.0]]), "p5": np.zeros((0, 2))}
    case = Case((locations, {"p3": 7, "p4": 14, "p5": 28}, np.array([[x1, -1.0, x2, 1.0, 0.0]])))
    reason = "a largest distance within rounding error of a size bound"
    assert spec.domain(case, torch.float32) == reason
    assert spec.domain(case, torch.float64) is None
    # Exactly on the bound is exact in every dtype: inside, and probed.
    on_bound = spec.probe("largest distance exactly 64 (the p3/p4 size bound)")
    assert on_bound.shared and spec.domain(on_bound.case(), torch.float32) is None


# --- mistake references: the reference with exactly their mistake ----------------------------


def probe_inputs(name: str, label: str):
    """A probe's case as the reference sees it, and the reference's answer there."""
    spec = spec_by_name(name)
    entry = entry_by_name(spec.entry_name)
    ref_case = entry.reference_inputs(spec.probe(label).case(), torch.float64)
    return ref_case, entry.reference(*ref_case.args, **ref_case.kwargs)


def test_locations_mistake_references_make_only_their_mistake():
    spec = spec_by_name("get_fpn_location_coords")
    entry = entry_by_name(spec.entry_name)
    # One row of cells and even strides: transposing and flooring stride / 2 change nothing.
    ref_case = entry.reference_inputs(
        Case(({"p3": (1, 1, 1, 3), "p4": (1, 1, 1, 1)}, {"p3": 8, "p4": 16})), torch.float64
    )
    expected = entry.reference(*ref_case.args)
    for short in ("transposed location order", "stride // 2 offsets"):
        assert compare_trees(spec.hint(short).mistake(ref_case, torch.float64), expected, EXACT).ok
    # On a 2x3 map with stride 7 each one is wrong, and exactly as described.
    ref_case, expected = probe_inputs(spec.name, "odd stride 7 on a 2x3 map")
    (expected,) = expected.values()
    assert expected[:3].tolist() == [[3.5, 3.5], [10.5, 3.5], [17.5, 3.5]]
    mistakes = {
        short: spec.hint(short).mistake(ref_case, torch.float64)["p3"]
        for short in ("transposed location order", "x from the row index", "stride // 2 offsets")
    }
    assert mistakes["transposed location order"][:3].tolist() == [
        [3.5, 3.5],
        [3.5, 10.5],
        [10.5, 3.5],
    ]
    assert mistakes["x from the row index"][:3].tolist() == [[3.5, 3.5], [3.5, 10.5], [3.5, 17.5]]
    assert mistakes["stride // 2 offsets"][:3].tolist() == [[3, 3], [10, 3], [17, 3]]


def test_matching_mistake_references_make_only_their_mistake():
    spec = spec_by_name("fcos_match_locations_to_gt")
    entry = entry_by_name(spec.entry_name)
    tie_breaks = [spec.hint(s).mistake for s in ("max-area tie-break", "1e8 - area float32 trick")]

    @settings(max_examples=30, deadline=None)
    @given(case=spec.generated_cases(entry, torch.float64))
    def check(case):
        locations, strides, gt = case.args
        gt = np.array(gt, copy=True)
        gt[..., 1:, :] = -1.0  # one real box at most: no tie to break
        ref_case = entry.reference_inputs(Case((locations, strides, gt)), torch.float64)
        expected = entry.reference(*ref_case.args)
        for mistake in tie_breaks:
            assert compare_trees(mistake(ref_case, torch.float64), expected, EXACT).ok

    check()
    # The largest distance exactly 64: no level for the reference, p3 and p4 when inclusive.
    ref_case, expected = probe_inputs(
        spec.name, "largest distance exactly 64 (the p3/p4 size bound)"
    )
    wrong = spec.hint("inclusive size bounds").mistake(ref_case, torch.float64)
    assert all((rows == -1).all() for rows in expected.values())
    assert wrong["p3"].tolist() == wrong["p4"].tolist() == [[4, 4, 132, 132, 3]]
    assert (wrong["p5"] == -1).all()
    # Nested boxes: the larger one when the largest box wins.
    ref_case, expected = probe_inputs(spec.name, "nested boxes: the smaller one wins")
    wrong = spec.hint("max-area tie-break").mistake(ref_case, torch.float64)
    assert expected["p3"][:, 4].tolist() == [2] and wrong["p3"][:, 4].tolist() == [1]


def test_nms_mistake_references_make_only_their_mistake():
    spec = spec_by_name("nms")
    entry = entry_by_name(spec.entry_name)
    ge = spec.hint(">= instead of >").mistake

    @settings(max_examples=30, deadline=None)
    @given(case=spec.generated_cases(entry, torch.float64))
    def check(case):  # no IoU at the threshold there: >= and > agree
        ref_case = entry.reference_inputs(case, torch.float64)
        expected = entry.reference(*ref_case.args, **ref_case.kwargs)
        assert entry.compare(ge(ref_case, torch.float64), expected, EXACT).ok

    check()
    ref_case, expected = probe_inputs(spec.name, "IoU exactly at the threshold (0.5) is kept")
    assert expected.tolist() == [0, 1] and ge(ref_case, torch.float64).tolist() == [0]
    ref_case, expected = probe_inputs(
        spec.name, "ordinary suppression: IoU 0.68 > 0.5 is suppressed"
    )
    never = spec.hint("never suppresses").mistake(ref_case, torch.float64)
    assert expected.tolist() == [0, 2] and never.tolist() == [0, 1, 2]
    class_nms = spec_by_name("class_spec_nms")
    ref_case, expected = probe_inputs(
        class_nms.name, "negative coordinates (max coordinate -1: the class offset is 0)"
    )
    trick = class_nms.hint("class-offset trick").mistake(ref_case, torch.float64)
    assert expected.tolist() == [0, 1] and trick.tolist() == [0]


def test_probe_areas_collide_in_float32():
    # The probe for the `1e8 - area` trick must really collide: areas 1681 and 1680.
    assert np.float32(1e8) - np.float32(1681) == np.float32(1e8) - np.float32(1680)


def test_unknown_mistake_or_probe_names_fail_loudly():
    with pytest.raises(KeyError, match="no known mistake 'bogus'; known: \\['>= instead of >'"):
        spec_by_name("nms").hint("bogus")
    with pytest.raises(KeyError, match="no probe 'bogus'"):
        spec_by_name("nms").probe("bogus")


# --- the command line -------------------------------------------------------------------------


def test_cli_registry_mode_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "verify.json"
    code = main(
        ["verify", "--op", "get_fpn_location_coords", "--examples", "5", "--json", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "get_fpn_location_coords" in text and "PASS" in text
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["mode"] == "registry"
    assert data["functions"][0]["verdict"] == "PASS"
    assert "torch" in data["environment"]


def test_cli_wrong_impl_exits_1_with_details(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        [
            "verify",
            "--impl",
            str(IMPLS / "wrong_locations_stride_floor.py"),
            "--examples",
            "5",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    text = captured.out
    assert code == 1
    assert "FAIL get_fpn_location_coords" in text
    assert "input:" in text and "expected:" in text and "actual:" in text
    assert "hint:     offsets use stride // 2" in text
    assert "MISSING" in text
    assert "seed" not in text.replace("seed 0", "")  # the README's words: "course code"
    # One progress line per function on stderr.
    progress = [line for line in captured.err.splitlines() if line.startswith("verify ")]
    assert len(progress) == len(SEED_NAMES), captured.err
    data = json.loads(out.read_text())
    (fn,) = [f for f in data["functions"] if f["name"] == "get_fpn_location_coords"]
    assert fn["verdict"] == "FAIL" and fn["failures"][0]["hints"]
    assert data["passed"] is False
    # Arrays are nested lists with shape and dtype; the input in the dtype it was received.
    failure = next(f for f in fn["failures"] if f["key"] == "mismatch")
    assert failure["verdict"] == "FAIL"
    actual = failure["data"]["actual"]
    level = next(iter(actual))
    assert set(actual[level]) == {"shape", "dtype", "data"}
    assert isinstance(actual[level]["data"], list) and actual[level]["shape"][1] == 2
    assert failure["dtype"] == "float32"


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_function_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    target = load_target(str(IMPLS / "partial.py"))
    lines, terminal = io.StringIO(), Terminal()
    report = verify(target, progress=stderr_progress(lines), **FAST)
    count = len(report.functions)
    written = lines.getvalue().splitlines()
    assert len(written) == count and all(line.startswith("verify ") for line in written)
    assert "verify get_fpn_location_coords: PASS" in written[0]
    verify(target, progress=stderr_progress(terminal), **FAST)
    bar = terminal.getvalue()
    assert f"{count}/{count}" in bar and "2 PASS, 8 MISSING" in bar, bar
    assert "get_fpn_location_coords: PASS" not in bar  # the bar, not the lines


@pytest.mark.parametrize(
    ("option", "error", "message"),
    [
        ({"examples": 0}, ValueError, "examples must be an int >= 1, got 0"),
        ({"examples": 2.5}, TypeError, "examples must be an int >= 1, got float"),
        ({"timeout": 0.0}, ValueError, "timeout must be > 0"),
        ({"shrink_draws": -1}, ValueError, "shrink_draws must be an int >= 0"),
    ],
)
def test_verify_refuses_bad_options(option, error, message):
    with pytest.raises(error, match=f"^verify: {message}"):
        verify(load_target(str(IMPLS / "partial.py")), **{**FAST, **option})


def test_cli_input_shows_the_dtype_the_function_received(capsys):
    code = main(["verify", "--impl", str(IMPLS / "wrong_clip_swapped.py"), "--examples", "5"])
    text = capsys.readouterr().out
    assert code == 1
    line = next(line for line in text.splitlines() if line.startswith("  input:"))
    assert "float32" in line and "float64" not in line, line


def test_cli_strict_makes_departures_fail(capsys):
    argv = ["verify", "--impl", str(IMPLS / "course.py"), "--op", "class_spec_nms"]
    argv += ["--examples", "5", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "DEPARTS class_spec_nms" in text and "detops:" in text
    last = text.splitlines()[-1]
    assert last.startswith("PASS: 1 function in "), last
    assert last.endswith(
        ": 0 match detops, 1 departs from detops' stricter rules"
        " (not a failure; --strict makes it one), 0 fail"
    ), last
    assert main([*argv, "--strict"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL: 1 function in "), last
    assert "1 departs from detops' stricter rules (a failure under --strict)" in last, last


def _report(*verdicts: str, mode: str = "functions") -> VerifyReport:
    functions = [FunctionReport(f"f{i}", v) for i, v in enumerate(verdicts)]
    return VerifyReport("t", mode, 1, 0, 1.0, "cpu", functions, seconds=0.44)


@pytest.mark.parametrize(
    ("report", "strict", "line"),
    [
        (_report("PASS"), False, "PASS: 1 function in 0.4 s: 1 matches detops, 0 fail"),
        (
            _report(*["PASS"] * 22, mode="registry"),
            False,
            "PASS: 22 functions in 0.4 s: 22 match the reference, 0 fail",
        ),
        (
            _report("PASS", *["DEPARTS"] * 4),
            False,
            "PASS: 5 functions in 0.4 s: 1 matches detops, 4 depart from detops' stricter"
            " rules (not failures; --strict makes them failures), 0 fail",
        ),
        (
            _report("PASS", *["DEPARTS"] * 4),
            True,
            "FAIL: 5 functions in 0.4 s: 1 matches detops, 4 depart from detops' stricter"
            " rules (failures under --strict), 0 fail",
        ),
        (
            _report("FAIL", *["MISSING"] * 9),
            False,
            "FAIL: 10 functions in 0.4 s: 0 match detops, 1 fails, 9 missing",
        ),
        (
            _report("PASS", "FAIL", "FAIL", "ERROR", "SKIPPED", "MISSING"),
            False,
            "FAIL: 6 functions in 0.4 s: 1 matches detops, 2 fail, 1 could not be checked,"
            " 1 missing, 1 skipped",
        ),
    ],
)
def test_verdict_line_keeps_every_count_in_plain_words(report, strict, line):
    assert format_report(report, strict=strict).splitlines()[-1] == line


def test_cli_module_name_target(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(IMPLS))
    code = main(["verify", "--impl", "partial", "--op", "box_iou", "--examples", "5"])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--impl", "no/such/file.py"], "no such file"),
        (["--impl", str(IMPLS / "__init__.py")], "defines none of the course code's functions"),
        (["--impl", "no_such_module_xyz"], "ModuleNotFoundError"),
        (["--op", "no_such_op"], "no registry entry named"),
        (["--impl", str(IMPLS / "correct.py"), "--op", "bogus"], "is not a course function"),
        (["--examples", "0"], "--examples must be at least 1"),
        (["--timeout", "-1"], "--timeout must be positive"),
        (["--timeout", "inf"], "--timeout must be positive and at most 86400 s (a day), got inf"),
        (["--timeout", "1e10"], "at most 86400 s"),
        (["--timeout", "nan"], "--timeout must be positive"),
        (
            ["--shrink-seconds", "-1"],
            "--shrink-seconds must be at least 0 (0: no shrinking) and at most 86400 s (a day)"
            ", got -1",
        ),
        (["--shrink-seconds", "nan"], "--shrink-seconds must be at least 0"),
        (["--shrink-seconds", "inf"], "at most 86400 s (a day), got inf"),
        (["--shrink-seconds", "1e10"], "at most 86400 s (a day), got 1e+10"),
        (["--json", "no/such/folder/report.json"], "the folder no/such/folder does not exist"),
        (
            ["--impl", str(IMPLS / "partial.py"), "--op", "class_spec_nms"],
            "defines none of the functions asked for with --op (class_spec_nms)",
        ),
    ],
)
def test_cli_bad_argument_exits_2_with_one_line(argv, message, capsys):
    code = main(["verify", "--examples", "2", *argv])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("detops verify: error: "), err
    assert message in err


def test_the_command_and_the_harness_share_the_timeout_limits():
    from detops.commands import verify as command
    from detops.verify import harness

    assert command.DEFAULT_TIMEOUT == harness.DEFAULT_TIMEOUT
    assert command.MAX_TIMEOUT == harness.MAX_TIMEOUT
    assert command.SHRINK_SECONDS == harness.SHRINK_SECONDS


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 0.0, -1.0])
def test_api_timeout_out_of_range_raises(timeout):
    from detops.verify import verify

    with pytest.raises(ValueError, match=r"verify: timeout must"):
        verify(str(IMPLS / "correct.py"), examples=1, timeout=timeout)


def test_a_reference_py_in_the_current_folder_is_named_not_misread(tmp_path):
    # python -m puts the current folder first on sys.path, so a user's reference.py
    # shadows detops' NumPy references: the error says so (it was "No module named
    # 'reference.boxes'").
    (tmp_path / "reference.py").write_text("x = 1\n")
    for argv in (
        ["-m", "detops", "verify", "--op", "nms", "--examples", "1"],
        ["-c", "import detops.bench.cases"],
    ):
        proc = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1
        assert f"the module 'reference' found at {tmp_path / 'reference.py'}" in proc.stderr
        assert "shadows it" in proc.stderr


def test_cli_shrink_seconds_reaches_verify(monkeypatch, capsys):
    import detops.verify

    seen = {}

    def fake_verify(target, **options):
        seen.update(options)
        raise detops.verify.TargetError("stop here")

    monkeypatch.setattr(detops.verify, "verify", fake_verify)
    argv = ["verify", "--impl", str(IMPLS / "correct.py"), "--shrink-seconds", "45"]
    assert main(argv) == 2 and "stop here" in capsys.readouterr().err
    assert seen["shrink_seconds"] == 45.0
    assert main(argv[:3]) == 2 and seen["shrink_seconds"] == 10.0  # the default


def test_cli_shrink_seconds_0_reports_the_first_failing_input_unshrunk(capsys):
    argv = ["verify", "--impl", str(IMPLS / "wrong_locations_row_index.py")]
    argv += ["--op", "get_fpn_location_coords", "--examples", "6", "--quiet"]
    assert main([*argv, "--shrink-seconds", "120"]) == 1  # a FAIL, shrunk (stops when done)
    assert "generated case (shrunk)]" in capsys.readouterr().out
    assert main([*argv, "--shrink-seconds", "0"]) == 1
    text = capsys.readouterr().out
    assert "FAIL get_fpn_location_coords [float32, generated case (not shrunk)]" in text, text
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if "generated case (not shrunk)]" in line))
    assert lines[at + 1].startswith("  function: "), lines[at + 1]
    assert lines[at + 2].startswith("  input:    shape_per_fpn_level="), lines[at + 2]
    assert lines[at + 3] == (
        "  shrink:   shrinking is off (a shrink budget of 0 s); "
        "this is the first failing input found"
    )
    assert "gives it more time" not in text and "its budget" not in text
    assert text.splitlines()[-1].startswith("FAIL: 1 function in ")


@pytest.mark.parametrize("inside", [True, False])
def test_cli_names_the_failing_function_by_a_path_under_the_working_directory_or_absolute(
    capsys, monkeypatch, tmp_path, inside
):
    """A FAIL block names the function's file relative to the working directory when the
    file lies inside it, else by its absolute path (no ``../..`` climbing out)."""
    monkeypatch.chdir(IMPLS.parent if inside else tmp_path)
    impl = IMPLS / "wrong_nms_ge.py"
    argv = ["verify", "--impl", str(impl), "--op", "nms", "--examples", "6", "--quiet"]
    assert main(argv) == 1
    functions = [line for line in capsys.readouterr().out.splitlines() if "function: " in line]
    assert functions, "no FAIL block named its function"
    shown = os.path.join(IMPLS.name, impl.name) if inside else str(impl)
    for line in functions:
        assert line.startswith(f"  function: {shown}:"), line
