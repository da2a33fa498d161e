import pytest
import torch

from detops._allocator import allocator_description, steady_allocator

CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_configure(config):
    # A benchmark run is a program of its own: glibc malloc's thresholds are fixed for it,
    # as `detops bench` does (see detops._allocator), before the first case allocates.
    steady_allocator()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["allocator"] = allocator_description()


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_SKIP)])
