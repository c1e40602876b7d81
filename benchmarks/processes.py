"""Child processes of a benchmark run: started in their own session, bound to the harness's
lifetime, stopped with escalation, waited on until they listen.

Every child gets its own session (the shell-job SIGTERM gotcha that ``setsid -f`` works around
for Envoy) and ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the harness even if the harness is
killed; :func:`stop_process` terminates it and waits, escalating to SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


class Unavailable(RuntimeError):
    """The target cannot run on this machine or tree (yet); the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the harness process exits."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, bound to our lifetime, stdout+stderr to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            **kw,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def wait_listening(
    port: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fail_if_exited(proc, log, "listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise Unavailable(f"port {port} not accepting after {timeout:.0f}s (log: {log})")


def fail_if_exited(proc: subprocess.Popen[bytes] | None, log: Path, before: str) -> None:
    """Raise :class:`Unavailable` with the tail of ``log`` if ``proc`` has exited."""
    if proc is not None and proc.poll() is not None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise Unavailable(f"exited with code {proc.returncode} before {before}:\n{tail}")


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = (run.stderr or run.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {run.returncode}"


def save_results(stem: str, text: str, report: dict[str, Any]) -> Path:
    """Write ``results/<local time>-<stem>.md`` (``text``) and the ``.json`` beside it."""
    import json

    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    base = Path(__file__).resolve().parent / "results" / f"{stamp}-{stem}"
    base.with_suffix(".md").write_text(text)
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    return base
