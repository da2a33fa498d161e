import subprocess
import sys


def test_import_reference_does_not_import_torch():
    code = (
        "import sys, pkgutil, importlib, reference\n"
        "for m in pkgutil.iter_modules(reference.__path__):\n"
        "    importlib.import_module('reference.' + m.name)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_every_detops_op_module_has_a_reference_twin():
    import importlib
    import pkgutil

    import reference
    from detops.testing import REGISTRY

    reference_modules = {m.name for m in pkgutil.iter_modules(reference.__path__)}
    for entry in REGISTRY:
        fast_module = entry.op.__module__.split(".")[-1]
        assert fast_module in reference_modules, f"reference.{fast_module} missing"
        twin = importlib.import_module(f"reference.{fast_module}")
        assert hasattr(twin, entry.op.__name__), f"reference.{fast_module}.{entry.op.__name__}"
