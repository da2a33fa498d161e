import os
import signal
import threading

import pytest
import torch
from hypothesis import HealthCheck, settings

# quick: the default while developing. ci: what `make test` runs (more examples, no
# deadline because the machine is shared, derandomized so CI is reproducible).
settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_generate_tests(metafunc):
    """Every test that takes ``device`` runs on cpu, and on cuda when one is present."""
    if "device" in metafunc.fixturenames:
        metafunc.parametrize(
            "device", ["cpu", pytest.param("cuda", marks=[CUDA_SKIP, pytest.mark.cuda])]
        )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored afterwards: two OpenMP threads on a
    shared, oversubscribed 2-core machine run small convs 10-30x slower (barrier spinning).
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, restored afterwards. A
    process started in the background by a non-interactive shell (``cmd &``) starts with
    SIGINT ignored, and Python then installs no handler: a test that sends a real SIGINT
    would see nothing happen (found running CI as ``.ci/run &``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctrl_c_at_the_option_check(python_sigint_handler, monkeypatch):
    """A real Ctrl-C while a ``detops`` command checks its options, before it has imported
    torch: ``detops.cli.check_output_file`` (the ``--json`` check) first sends this
    process SIGINT."""
    import detops.cli

    check_output_file = detops.cli.check_output_file

    def ctrl_c_then_check(option, path):
        os.kill(os.getpid(), signal.SIGINT)
        check_output_file(option, path)

    monkeypatch.setattr(detops.cli, "check_output_file", ctrl_c_then_check)
