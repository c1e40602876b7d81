"""Starting the real Dubbo peers (dubbo-py, sofa-rpc-node, apache-dubbo-js) for interop tests.

Every peer is a subprocess bound to 127.0.0.1 that prints ``READY [port]`` when it can be used;
consumers then take one JSON command per stdin line and answer with one JSON line.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.codecs.dubbo.frames import IFACE, REPO

NODE_DIR = REPO / "tests/peers/node"
DUBBOPY_PROVIDER = REPO / "tests/peers/dubbo/dubbopy_provider.py"
STARTUP_TIMEOUT = 30.0
CALL_TIMEOUT = 20.0


class Peer:
    """A subprocess speaking the READY / JSON-lines convention of the peer scripts."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        ready = self._next_line(STARTUP_TIMEOUT)
        if not ready.startswith("READY"):
            self.stop()
            raise RuntimeError(f"{argv} did not start: {ready!r}")
        words = ready.split()
        self.port = int(words[1]) if len(words) > 1 else 0

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("peer did not answer") from None
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"peer exited: {err[-2000:]}")
        return line

    def command(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._next_line(CALL_TIMEOUT))
        return answer

    def call(self, method: str, *args: tuple[str, Any], **attachments: str) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": "call", "method": method, "args": [list(a) for a in args]}
        if attachments:
            cmd["attachments"] = attachments
        return self.command(**cmd)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def node() -> str | None:
    return shutil.which("node")


def start_dubbopy_provider() -> Peer:
    return Peer([sys.executable, str(DUBBOPY_PROVIDER), "0"], DUBBOPY_PROVIDER.parent)


def dubbopy_client(port: int) -> Any:
    """A dubbo-py consumer on one connection to 127.0.0.1:``port``."""
    from dubbo.client import DubboClient

    return DubboClient("127.0.0.1", port, dubbo_version="2.0.2")


def dubbopy_call(
    client: Any,
    method: str,
    *args: Any,
    iface: str = IFACE,
    service_version: str = "1.0.0",
    **attachment: str,
) -> Any:
    """One dubbo-py call; keyword arguments other than the two named are attachments."""
    return client.send_request_and_return_response(
        service_name=iface,
        method_name=method,
        args=list(args),
        service_version=service_version,
        attachment=dict(attachment),
    )


def start_node_provider() -> Peer:
    return Peer([node() or "node", "dubbo_provider.js", "0"], NODE_DIR)


def start_node_consumer(kind: str, port: int) -> Peer:
    return Peer([node() or "node", "dubbo_consumer.js", kind, str(port)], NODE_DIR)
