"""The command line's entry points answer as documented."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metamesh import __version__, build_info
from metamesh.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


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


def _subcommands(
    parser: argparse.ArgumentParser | None = None,
) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by its name (``demo client`` too)."""
    found = {}
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return found


def test_subcommands_found() -> None:
    assert {"proxy", "up", "demo", "demo backends", "demo client"} <= set(_subcommands())


def test_every_subcommand_help_shows_the_defaults() -> None:
    for name, parser in _subcommands().items():
        text = " ".join(parser.format_help().split())  # unwrapped
        assert "(default " not in text, name  # one spelling: "(default: X)"
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.help in (None, argparse.SUPPRESS):
                continue
            if isinstance(default, bool) or default in (None, "", argparse.SUPPRESS):
                continue
            assert f"(default: {default})" in text, (name, action.dest)


def test_proxy_config_help_names_its_default_admin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "proxy-config", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "(default: 127.0.0.1:15000)" in " ".join(out.stdout.split())


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["codecs"], 141),  # as a process killed by SIGPIPE
        (["validate", "examples/mesh"], 141),
        (["proxy", "--help"], 0),  # argparse ignores write errors itself
    ],
)
def test_output_into_a_closed_pipe_exits_quietly(argv: list[str], code: int) -> None:
    # `metamesh ... | head`: the reader is gone before metamesh writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "metamesh", *argv],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == code


def test_up_and_control_plane_say_when_the_directory_is_missing(tmp_path: Path) -> None:
    for args, what in (
        (["up", str(tmp_path / "nope")], "does not exist"),
        (["control-plane", "--config-dir", str(tmp_path / "f")], "is not a directory"),
    ):
        (tmp_path / "f").write_text("")
        out = subprocess.run(
            [sys.executable, "-m", "metamesh", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2, out.stderr
        assert f"metamesh {args[0]}: config directory" in out.stderr and what in out.stderr
        assert "Traceback" not in out.stderr


def _until(proc: "subprocess.Popen[str]", text: str, seconds: float = 30.0) -> str:
    """Read ``proc``'s merged output until a line holds ``text`` (or fail at the deadline)."""
    import selectors
    import time

    seen: list[str] = []
    deadline = time.monotonic() + seconds
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return "".join(seen)
    raise AssertionError(f"no {text!r} in:\n{''.join(seen)}")


@pytest.mark.parametrize(
    "argv",
    [
        ["control-plane", "--config-dir", "examples/mesh", "--xds-port", "0"],
        ["up", "examples/mesh", "--admin-port", "0", "--xds-port", "0"],
    ],
    ids=["control-plane", "up"],
)
def test_config_limit_options_reach_the_watched_directory(argv: list[str]) -> None:
    # examples/mesh holds 8 resources: with a limit of 7 the load is refused, naming the limit
    proc = subprocess.Popen(
        [sys.executable, "-m", "metamesh", *argv, "--max-config-resources", "7"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = _until(proc, "over the limit of 7 resources in one load (max_resources)")
        assert "examples/mesh/" in out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_proxy_config_file_limits(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text((ROOT / "examples" / "proxy-static.yaml").read_text() + "#" * 1024 * 1024)
    argv = ["proxy", "--config", str(config), "--admin-port", "-1", "--max-config-file-mib", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "invalid config" in out.stderr and "proxy.yaml" in out.stderr
