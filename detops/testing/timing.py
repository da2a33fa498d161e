"""Timing helpers shared by the pytest-benchmark suite and ``python -m detops bench``."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


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
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, max_seconds: float = 10.0
) -> list[float]:
    """Wall times of up to ``repeats`` runs of ``fn`` after ``warmup`` runs.

    Stops early (with at least one timed run) once ``max_seconds`` have been spent, so a
    slow peer cannot stall a quick run. Wrap CUDA work with :func:`synchronized`.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > budget_end:
            break
    return times


def median_seconds(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, max_seconds: float = 10.0
) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (see
    :func:`measure`)."""
    return statistics.median(measure(fn, warmup=warmup, repeats=repeats, max_seconds=max_seconds))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str) -> dict[str, str]:
    import numpy
    import torchvision

    info = {
        "device": str(device),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }
    info["cpu_model"] = _cpu_model()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    return info
