import pytest
import torch

CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_SKIP)])
