"""The command line starts fast: only the chosen command's code is imported.

Each case runs in a fresh interpreter, because this test process has imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import detops
from detops.commands import COMMANDS

HEAVY = ("torch", "torchvision", "hypothesis", "matplotlib", "numpy")

_PROBE = """
import contextlib, io, json, sys
from detops.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & HEAVY_MODULES)
print(json.dumps({"code": code, "stdout": out.getvalue(), "heavy": heavy}))
"""


def run_cli_probe(*argv: str) -> dict:
    probe = _PROBE.replace("HEAVY_MODULES", repr(set(HEAVY)))
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_top_level_help_lists_every_command_without_importing_torch():
    result = run_cli_probe("--help")
    assert result["code"] == 0
    for name, help_line in COMMANDS.items():
        assert name in result["stdout"]
        assert help_line.split()[0] in result["stdout"]
    assert result["heavy"] == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_imports_nothing_heavy(command):
    result = run_cli_probe(command, "--help")
    assert result["code"] == 0
    assert f"usage: detops {command}" in result["stdout"]
    assert result["heavy"] == [], f"`detops {command} --help` imported {result['heavy']}"


def test_version():
    result = run_cli_probe("--version")
    assert result["code"] == 0
    assert result["stdout"].strip() == f"detops {detops.__version__}"


def test_unknown_command_is_a_usage_error():
    done = subprocess.run(
        [sys.executable, "-m", "detops", "trian"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "invalid choice: 'trian'" in done.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--iterations", "abc"],
         "detops train: error: argument --iterations: invalid int value: 'abc' "
         "(see detops train --help)"),
        (["train", "--bogus"],
         "detops train: error: unrecognized arguments: --bogus (see detops train --help)"),
        (["detect"],
         "detops detect: error: the following arguments are required: IMAGE, --checkpoint "
         "(see detops detect --help)"),
        (["bench", "--repeats", "x"],
         "detops bench: error: argument --repeats: invalid int value: 'x' "
         "(see detops bench --help)"),
    ],
)  # fmt: skip
def test_argparse_usage_errors_are_one_line(argv, expected, capsys):
    from detops.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_every_public_name_resolves_and_nms_is_the_op():
    import detops.inference  # imports the submodule detops.nms  # noqa: F401
    from detops import nms as nms_module_name

    assert callable(nms_module_name) and nms_module_name.__name__ == "nms"
    assert detops.nms is nms_module_name
    for name in detops.__all__:
        value = getattr(detops, name)
        assert getattr(value, "__name__", None) == name
    assert set(detops.__all__) <= set(dir(detops))
    with pytest.raises(AttributeError, match="no attribute 'no_such_op'"):
        detops.no_such_op  # noqa: B018
