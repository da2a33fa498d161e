"""``detops verify``: the harness passes a correct implementation, fails each deliberately wrong
one (tests/impls/wrong_*.py) with the right hint or reason, never crashes, and its command
line reports and exits as documented."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from detops.cli import main
from detops.testing import REGISTRY
from detops.testing import seed_api as sa
from detops.testing.compare import EXACT, compare_trees
from detops.testing.strategies import Case
from detops.verify import GuardedCall, load_target, verify

IMPLS = Path(__file__).parent / "impls"
ENTRY_NAMES = {entry.name for entry in REGISTRY}
FAST = {
    "examples": 6,
    "shrink_seconds": 1.0,
    "shrink_draws": 150,
    "timeout": 5.0,
    "dtypes": (torch.float32,),
}


def needs_entry(name: str):
    return pytest.mark.skipif(
        name not in ENTRY_NAMES, reason=f"registry entry {name!r} has not landed"
    )


def run(module: str, *names: str, **overrides):
    options = {**FAST, **overrides}
    return verify(load_target(str(IMPLS / f"{module}.py")), names=list(names), **options)


def only(report, name):
    (result,) = [f for f in report.functions if f.name == name]
    return result


def all_hints(result) -> list[str]:
    return [hint for failure in result.failures for hint in failure.hints]


# --- the correct implementation -------------------------------------------------------------


def test_correct_implementation_passes():
    report = verify(load_target(str(IMPLS / "correct.py")), **FAST)
    checked = report.checked
    assert checked, "nothing was checked"
    for result in checked:
        assert result.verdict == "PASS", (result.name, result.summary, result.failures[:1])
        assert result.cases > 0 or result.probes, result.name
    for result in report.functions:
        if result.name in ENTRY_NAMES:
            assert result.verdict == "PASS", result.name
        else:
            assert result.verdict == "SKIPPED", result.name
    assert report.passed


def test_detops_exports_pass_through_the_seed_adapters():
    # detops' own ops take the per-image calls too: the adapters and probes are consistent.
    report = verify(load_target("detops"), **{**FAST, "examples": 3})
    assert [f.verdict for f in report.functions] == ["PASS"] * len(sa.SEED_NAMES), [
        (f.name, f.summary) for f in report.functions if f.verdict != "PASS"
    ]


# --- one wrong implementation per known mistake: FAIL with the matching hint ----------------

HINT_CASES = [
    ("wrong_locations_transposed", "get_fpn_location_coords", sa._HINT_TRANSPOSED),
    ("wrong_locations_stride_floor", "get_fpn_location_coords", sa._HINT_STRIDE_FLOOR),
    ("wrong_match_inclusive", "fcos_match_locations_to_gt", sa._HINT_INCLUSIVE),
    ("wrong_match_max_area", "fcos_match_locations_to_gt", sa._HINT_MAX_AREA),
    ("wrong_match_course", "fcos_match_locations_to_gt", sa._HINT_F32_TRICK),
    ("wrong_match_course", "fcos_match_locations_to_gt", sa._HINT_EMPTY_GT),
    (
        "wrong_centerness_background",
        "fcos_make_centerness_targets",
        "the centerness of background locations (deltas -1) must be -1",
    ),
    ("wrong_centerness_nan", "fcos_make_centerness_targets", "0 / 0 gives NaN"),
    ("wrong_apply_unclamped", "fcos_apply_deltas_to_locations", sa._HINT_UNCLAMPED),
    ("wrong_nms_ge", "nms", sa._HINT_NMS_GE),
    ("wrong_class_nms_offset", "class_spec_nms", sa._HINT_OFFSET),
    ("wrong_focal_alpha", "sigmoid_focal_loss", "alpha weights the wrong class"),
    ("wrong_iou_nan", "box_iou", "a pair whose union is 0"),
    ("wrong_clip_swapped", "clip_boxes_to_image", "size is read as (width, height)"),
]


@pytest.mark.parametrize(
    ("module", "name", "hint"),
    [pytest.param(*case, marks=needs_entry(case[1]), id=case[0]) for case in HINT_CASES],
)
def test_wrong_implementation_fails_with_hint(module, name, hint):
    report = run(module, name)
    result = only(report, name)
    assert result.verdict == "FAIL", result.summary
    assert not report.passed
    hints = all_hints(result)
    assert any(hint in text for text in hints), f"{hint!r} not in {hints}"
    # Every failure shows the input, and mismatches the expected and actual outputs.
    for failure in result.failures:
        assert failure.input
        if failure.kind == "mismatch":
            assert failure.expected and failure.actual and failure.expected != failure.actual


# --- robustness: raising, hanging, mutating, wrong dtype/device/shape -----------------------

ROBUSTNESS_CASES = [
    ("wrong_raising", "box_iou", "raised", "raised NotImplementedError: TODO: write box_iou"),
    ("wrong_hanging", "clip_boxes_to_image", "timeout", "did not return within"),
    ("wrong_mutating", "clip_boxes_to_image", "mutated", "modified its input `boxes` in place"),
    ("wrong_dtype", "box_iou", "output", "has dtype float64, expected float32"),
    ("wrong_device", "get_fpn_location_coords", "output", "is on device meta, expected cpu"),
    ("wrong_shape", "fcos_make_centerness_targets", "output", "has shape [3, 1], expected [3]"),
]


@pytest.mark.parametrize(
    ("module", "name", "kind", "reason"),
    [pytest.param(*case, marks=needs_entry(case[1]), id=case[0]) for case in ROBUSTNESS_CASES],
)
def test_misbehaving_function_fails_with_reason(module, name, kind, reason):
    report = run(module, name, timeout=1.0)
    result = only(report, name)
    assert result.verdict == "FAIL"
    failure = result.failures[0]
    assert failure.kind == kind, failure
    assert reason in failure.reason, failure.reason


def test_hanging_function_is_abandoned_and_stopped():
    start = time.monotonic()
    report = run("wrong_hanging", "clip_boxes_to_image", timeout=0.5)
    assert only(report, "clip_boxes_to_image").failures[0].kind == "timeout"
    assert time.monotonic() - start < 5.0, "one hang must not be retried"
    # The busy loop received an asynchronous exception and its thread ends.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        alive = [t for t in threading.enumerate() if t.name.startswith("detops-verify")]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, alive


def test_guard_reports_in_place_writes_even_with_equal_values():
    def touch(boxes):
        boxes.clamp_(-1e9, 1e9)  # changes nothing, but writes into the caller's tensor
        return boxes

    def rename(levels):
        levels["extra"] = 1
        return levels

    with pytest.raises(sa.CallFailure, match="modified its input `boxes`"):
        GuardedCall(touch, "touch", 5.0)(torch.ones(2, 4))
    with pytest.raises(sa.CallFailure, match=r"`levels \(keys changed\)`"):
        GuardedCall(rename, "rename", 5.0)({"p3": torch.ones(1)})
    assert GuardedCall(lambda x: x + 1, "ok", 5.0)(torch.ones(1)).item() == 2.0


def test_partial_module_reports_missing_and_passes():
    report = verify(load_target(str(IMPLS / "partial.py")), **FAST)
    verdicts = {f.name: f.verdict for f in report.functions}
    assert verdicts["get_fpn_location_coords"] == "PASS"
    missing = [name for name, verdict in verdicts.items() if verdict == "MISSING"]
    assert len(missing) == 8 and "nms" in missing
    assert report.passed


# --- torchvision: where it departs from the reference ---------------------------------------


@needs_entry("box_iou")
@needs_entry("clip_boxes_to_image")
def test_torchvision_report_names_its_departures():
    report = verify(load_target("torchvision"), **FAST)
    names = [f.name for f in report.functions]
    assert names == [
        n
        for n in sa.SEED_NAMES
        if n in ("nms", "class_spec_nms", "sigmoid_focal_loss", "box_iou", "clip_boxes_to_image")
    ]
    iou = only(report, "box_iou")
    assert iou.verdict == "FAIL"
    assert any(f.probe == "zero-area boxes (union 0)" for f in iou.failures)
    assert only(report, "clip_boxes_to_image").verdict == "PASS"
    departures = {
        "nms": "a NaN score is refused",
        "class_spec_nms": "negative coordinates (max coordinate -1: the class offset is 0)",
        "sigmoid_focal_loss": "mean over an empty input is 0",
    }
    for name, probe in departures.items():
        result = only(report, name)
        if result.verdict == "SKIPPED":
            continue
        assert result.verdict == "FAIL"
        failing = {f.probe for f in result.failures}
        assert probe in failing, (name, failing)
    assert not report.passed


# --- mistake references and probes are themselves right -------------------------------------


def _entry(name):
    return next(entry for entry in REGISTRY if entry.name == name)


@needs_entry("fcos_match_locations_to_gt")
def test_matching_mistake_reference_without_mistakes_is_the_reference():
    entry = _entry("fcos_match_locations_to_gt")
    faithful = sa._matching_mistake()

    @settings(max_examples=30, deadline=None)
    @given(case=entry.strategy().map(sa._prepare_matching))
    def check(case):
        ref_case = entry.reference_inputs(case, torch.float64)
        expected = entry.reference(*ref_case.args, **ref_case.kwargs)
        assert compare_trees(faithful(ref_case, torch.float64), expected, EXACT).ok

    check()


@needs_entry("nms")
def test_greedy_nms_of_the_hints_is_the_reference():
    entry = _entry("nms")

    @settings(max_examples=30, deadline=None)
    @given(case=entry.strategy())
    def check(case):
        ref_case = entry.reference_inputs(case, torch.float64)
        args = sa._nms_args(ref_case)
        expected = entry.reference(*ref_case.args, **ref_case.kwargs)
        got = sa._greedy_nms(args["boxes"], args["scores"], float(args["iou_threshold"]))
        assert entry.compare(got, expected, EXACT).ok

    check()


def test_locations_mistake_reference_without_mistakes_is_the_reference():
    entry = _entry("get_fpn_location_coords")
    faithful = sa._locations_mistake(transposed=False, floor_half=False)
    ref_case = entry.reference_inputs(
        Case(({"p3": (2, 3), "p4": (1, 2)}, {"p3": 7, "p4": 14})), torch.float64
    )
    expected = entry.reference(*ref_case.args)
    assert compare_trees(faithful(ref_case, torch.float64), expected, EXACT).ok


@pytest.mark.parametrize("spec", sa.SEED_SPECS, ids=lambda s: s.name)
def test_probes_pass_for_detops_and_the_correct_implementation(spec):
    if spec.entry_name not in ENTRY_NAMES:
        pytest.skip(f"registry entry {spec.entry_name!r} has not landed")
    entry = _entry(spec.entry_name)
    target = load_target(str(IMPLS / "correct.py"))
    from detops.verify import _Check, _evaluate, _evaluate_refusal, _tolerance

    for label, fn in (("detops", entry.op), ("correct.py", target.functions[spec.name])):
        guard = GuardedCall(fn, spec.name, 10.0)
        check = _Check(entry, lambda c, d, g=guard: spec.call(g, c, d, "cpu"), [], spec.hints)
        for probe in spec.probes:
            tol = _tolerance(entry, probe.dtype, probe.tolerance)
            if probe.refuse:
                failure = _evaluate_refusal(check, probe.case(), probe.dtype, probe.label)
            else:
                failure, _, _ = _evaluate(check, probe.case(), probe.dtype, tol)
            assert failure is None, (label, probe.label, failure)


def test_probe_areas_collide_in_float32():
    # The probe for the `1e8 - area` trick must really collide: areas 1681 and 1680.
    assert np.float32(1e8) - np.float32(1681) == np.float32(1e8) - np.float32(1680)


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
    text = capsys.readouterr().out
    assert code == 1
    assert "FAIL get_fpn_location_coords" in text
    assert "input:" in text and "expected:" in text and "actual:" in text
    assert "hint:     offsets use stride // 2" in text
    assert "MISSING" in text
    data = json.loads(out.read_text())
    (fn,) = [f for f in data["functions"] if f["name"] == "get_fpn_location_coords"]
    assert fn["verdict"] == "FAIL" and fn["failures"][0]["hints"]
    assert data["passed"] is False


def test_cli_module_name_target(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(IMPLS))
    code = main(["verify", "--impl", "partial", "--op", "box_iou", "--examples", "5"])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--impl", "no/such/file.py"], "no such file"),
        (["--impl", str(IMPLS / "__init__.py")], "defines none of the seed's functions"),
        (["--impl", "no_such_module_xyz"], "ModuleNotFoundError"),
        (["--op", "no_such_op"], "no registry entry named"),
        (["--impl", str(IMPLS / "correct.py"), "--op", "bogus"], "is not a seed function"),
    ],
)
def test_cli_bad_target_exits_2(argv, message, capsys):
    code = main(["verify", *argv, "--examples", "2"])
    assert code == 2
    assert message in capsys.readouterr().err
