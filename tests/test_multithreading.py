"""Every op is safe to call from any thread and changes no process-wide or per-thread state.

In the style of numbagg's test_multithreading.py: each op is called from 4 threads at once,
50 times per thread, and every result must equal (bit for bit) the result of a serial call
on the same input. Each thread's torch settings (intra-op threads, grad mode, default dtype)
must be the same after the calls as before, and no thread may be left running (no op
starts one).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings

import detops
from detops import losses
from detops.bench.cases import BENCHMARKS
from detops.bench.cases.nms import random_detections
from detops.testing import REGISTRY, OpEntry
from detops.testing.strategies import Case

THREADS = 4
CALLS_PER_THREAD = 50


# ----------------------------------------------------------------------------- helpers


def assert_identical(actual: Any, expected: Any, where: str = "output") -> None:
    """Tensors, arrays, containers and dataclasses equal exactly (NaN equals NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {actual!r}"
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{index}]")
    elif dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for field in dataclasses.fields(expected):
            name = field.name
            assert_identical(getattr(actual, name), getattr(expected, name), f"{where}.{name}")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 2e-7])),
        (torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64)),
        ({"a": torch.zeros(2)}, {"a": torch.zeros(3)}),
        ((torch.ones(1), 2), (torch.ones(1), 3)),
        ([torch.ones(1)], (torch.ones(1),)),
        (np.array([1, 2]), np.array([1, 3])),
    ],
)
def test_assert_identical_rejects_a_different_answer(actual, expected):
    with pytest.raises(AssertionError):
        assert_identical(actual, expected)


def test_assert_identical_accepts_equal_answers_with_nan():
    value = {"x": (torch.tensor([float("nan"), 1.0]), 3), "y": np.array([0.5])}
    same = {"x": (torch.tensor([float("nan"), 1.0]), 3), "y": np.array([0.5])}
    assert_identical(same, value)


def drawn_cases(entry: OpEntry, count: int = 2) -> list[Case]:
    """The ``count`` largest of the first 12 cases the entry's strategy generates
    (derandomized, so the same cases every run)."""
    cases: list[Case] = []

    @settings(
        max_examples=12, derandomize=True, database=None, phases=[Phase.generate], deadline=None
    )
    @given(case=entry.strategy())
    def collect(case):
        cases.append(case)

    collect()

    def size(case: Case) -> int:
        arrays = [v for v in (*case.args, *case.kwargs.values()) if isinstance(v, np.ndarray)]
        return sum(a.size for a in arrays)

    return sorted(cases, key=size, reverse=True)[:count]


def thread_settings() -> tuple:
    return (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype())


def run_in_threads(call: Callable[[], Any], expected: Any) -> None:
    """``call()`` from THREADS threads at once, CALLS_PER_THREAD times each; every result
    must equal ``expected``, and every thread's settings must not change."""
    before_threads = set(threading.enumerate())
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    settings_seen: list[tuple[tuple, tuple]] = []

    def work() -> None:
        try:
            before = thread_settings()
            barrier.wait()
            for _ in range(CALLS_PER_THREAD):
                assert_identical(call(), expected)
            settings_seen.append((before, thread_settings()))
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a caller thread hangs"
    if errors:
        raise errors[0]
    assert len(settings_seen) == THREADS
    for before, after in settings_seen:
        assert after == before, f"thread settings changed: {before} -> {after}"
    left = [t for t in set(threading.enumerate()) - before_threads if t.is_alive()]
    assert [t.name for t in left] == [], "threads left running"


# ----------------------------------------------------------------------------- registry ops


@pytest.mark.slow
@pytest.mark.parametrize("entry", REGISTRY, ids=lambda entry: entry.name)
def test_registry_op_from_four_threads_equals_serial(entry):
    dtype = torch.float32 if torch.float32 in entry.dtypes else entry.dtypes[0]
    cases = drawn_cases(entry)
    expected = [entry.run_op(case, dtype, "cpu") for case in cases]
    run_in_threads(lambda: [entry.run_op(case, dtype, "cpu") for case in cases], expected)


# ---------------------------------------------- the big ops: fcos_loss with backward, ...


def bench_step(op: str, size: str) -> Callable[[], Any]:
    (case,) = [c for c in BENCHMARKS if c.op == op and c.size == size]
    return case.setup(torch.device("cpu")).detops


def focal_loss_of_many_chunks() -> Any:
    # At least 16 chunks, each with its own binary-target check.
    shape = (16 * losses._CHUNK // 128 + 3, 128)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=generator) * 3).requires_grad_()
    targets = (torch.rand(shape, generator=generator) < 0.05).float()

    def call():
        loss = losses.sigmoid_focal_loss(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, logits)
        return loss.detach(), grad

    return call


def nms_of_5000_boxes() -> Callable[[], Any]:
    # (the bench's nms cases take 16 inputs in turn: one input here, so that every call
    # has the serial run's answer)
    boxes, scores, _ = random_detections(5000)
    return lambda: detops.nms(boxes, scores, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_call",
    [
        pytest.param(lambda: bench_step("fcos_loss", "A4 16x224x224 C=20"), id="fcos_loss+grad"),
        pytest.param(lambda: bench_step("fcos_inference", "A4 16x224x224 C=20"), id="inference"),
        pytest.param(focal_loss_of_many_chunks, id="focal_loss_many_chunks+grad"),
        pytest.param(nms_of_5000_boxes, id="nms-5000"),
        pytest.param(
            lambda: bench_step("batched_nms_per_image", "16x1000, 20 classes"), id="batched_nms"
        ),
    ],
)
def test_pipeline_op_from_four_threads_equals_serial(make_call):
    call = make_call()
    run_in_threads(call, call())


# ----------------------------------------------------------------------- process-wide state


def process_state() -> dict[str, Any]:
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "grad": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "torch_rng": torch.random.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "warning_filters": list(warnings.filters),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda entry: entry.name)
def test_registry_op_changes_no_process_state(entry):
    (case,) = drawn_cases(entry, count=1)
    before = process_state()
    for dtype in entry.dtypes:
        entry.run_op(case, dtype, "cpu")
    assert_identical(process_state(), before, f"process state after {entry.name}")
