"""The CLI shell's own behaviour: help, and library errors as one line with exit code 1."""

import subprocess
import sys

from typer.testing import CliRunner

import facebank.cli as cli
from facebank.core.errors import BankError


def test_help_lists_command_groups():
    result = CliRunner().invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    assert "bank" in result.output and "neighbours" in result.output


def test_library_error_becomes_one_line_and_exit_1():
    @cli.app.command("_raise-for-test", hidden=True)
    def _raise() -> None:
        raise BankError("bank 'x.zarr' does not exist; give an existing bank")

    try:
        result = CliRunner().invoke(cli.app, ["_raise-for-test"])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: bank 'x.zarr' does not exist; give an existing bank"
        ]
        assert result.exception is None or isinstance(result.exception, SystemExit)
        verbose = CliRunner().invoke(cli.app, ["--verbose", "_raise-for-test"])
        assert isinstance(verbose.exception, BankError)  # -v keeps the traceback
    finally:
        cli.app.registered_commands.pop()


def test_python_cli_py_runs_as_a_script():
    out = subprocess.run([sys.executable, "cli.py", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "neighbours" in out.stdout


def test_cli_import_leaves_heavy_libraries_for_the_command_that_needs_them():
    # `facebank --help` and every command's option parsing must not pay for zarr, torch or
    # faiss: facebank.embed resolves its exports lazily (PEP 562).
    code = (
        "import sys, facebank.cli, facebank.embed; "
        "from facebank.embed import DataError; "
        "print(sorted(m for m in ('zarr', 'torch', 'faiss', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import facebank.embed as e; print(e.FeatureBank.__module__, 'scan_source' in dir(e))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["facebank.embed.bank.bank", "True"]
