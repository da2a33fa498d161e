"""The machine and library versions a result was measured on, for reports (verify, bench)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path

import torch

__all__ = ["device_problem", "environment_info"]


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
    """Where a result came from, as text: ``device``, the machine, processor, CPU model and
    count, torch's intra-op thread count (read, never set) and the versions of python,
    torch, torchvision and numpy; on a CUDA device also the GPU's name and the CUDA
    version.

    Args:
        device: the device the result was computed on.

    Returns:
        ``{"device", "machine", "processor", "cpu_count", "torch_threads", "python",
        "torch", "torchvision", "numpy", "cpu_model"}``, plus ``"gpu"`` and ``"cuda"`` on
        CUDA.
    """
    import numpy

    info = {
        "device": str(device),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "numpy": numpy.__version__,
    }
    info["cpu_model"] = _cpu_model()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    return info


def _torchvision_version() -> str:
    """``torchvision.__version__`` without importing torchvision (over a second, and verify
    needs it for nothing else): read from its ``version.py``, else the package metadata
    (which lacks the local ``+cu...`` part)."""
    module = sys.modules.get("torchvision")
    if module is not None:
        return str(module.__version__)
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin is not None:
        version_file = Path(spec.origin).with_name("version.py")
        if version_file.is_file():
            found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", version_file.read_text(), re.M)
            if found:
                return found.group(1)
    return importlib.metadata.version("torchvision")


def device_problem(device: object, command: str) -> str | None:
    """Why ``command`` (verify, bench) cannot run on ``device``, or None: the commands take
    cpu, and cuda (cuda:N) where that GPU exists; other devices (meta holds no values) are
    refused. (torch's own error lists every device type it knows, most of which the
    commands cannot use.)"""
    accepted = f"{command} runs on cpu or cuda (cuda:N for one GPU)"
    try:
        parsed = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, ValueError, TypeError):
        return f"not a device; {accepted}"
    if parsed.type not in ("cpu", "cuda"):
        return f"{accepted}, not on {parsed.type}"
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        return f"the CPU has no device {parsed.index}; {accepted}"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"CUDA is not available here (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda})"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return (
                f"there is no such GPU here ({count} CUDA device"
                f"{'' if count == 1 else 's'}: cuda:0 to cuda:{count - 1})"
            )
    return None
