"""The command line's entry points answer as documented."""

import subprocess
import sys

from metamesh import __version__, build_info
from metamesh.cli import main


def test_version_flag(capsys: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "--version"], capture_output=True, text=True, check=True
    )
    # the child imports from the same sys.path as this process, so it runs the same build
    assert out.stdout.strip() == f"metamesh {__version__}, {build_info.describe()}"


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout and "codecs" in out.stdout


def test_no_command_prints_help_and_fails() -> None:
    assert main([]) == 2
