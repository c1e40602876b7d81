"""``metamesh demo``: an embedded mesh routing real Thrift and Dubbo traffic, shown live.

Order of events (:func:`run_live_demo`):

1. pick ports: the admin port (15000 unless taken, or ``--admin-port``) and the two service
   addresses 127.0.10.1:9090 (Thrift) and 127.0.10.2:20880 (Dubbo), any free port on the same
   address if those are taken;
2. bind the sample servers (:mod:`metamesh.demo.services`: Apache thrift and dubbo-py, v1 and
   v2 each, on 127.0.20.x); their threads start right after ``metamesh up`` is spawned, so that
   the child is forked from a process with one thread;
3. write the config directory (packaged manifests) and start ``metamesh up`` on it
   (:mod:`metamesh.demo.mesh`), waiting until it serves the first step's routes;
4. open one connection per client (thriftpy2, dubbo-py) to the service addresses and start the
   traffic loops (:mod:`metamesh.demo.traffic`);
5. walk through :data:`metamesh.demo.steps.STEPS`: put the step's MetaRouter in force, wait
   until the proxy applied it, then show the step's counts live (redrawn in place on a
   terminal, one line per update otherwise) and the final table with the step's check;
6. say where the metrics and config are, and stop, or stay up with ``--keep-running``.

Every reading at the end of a step is taken with the traffic paused (no call in flight), so
proxy, servers and clients must count exactly the same; traffic resumes right after, on the
same connections. Whatever happens, ``finally`` stops the loops, the clients, ``metamesh up``
and the servers and removes the config directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from metamesh.demo import configure_demo_logging
from metamesh.demo.counts import PROTOCOLS, VERSIONS, Reading, summary_line, table
from metamesh.demo.mesh import ConfigDir, DemoError, MeshProcess, free_port, port_is_free, scrape
from metamesh.demo.services import DubboDemoProvider, SampleServer, ThriftHelloServer
from metamesh.demo.steps import STEPS, Step
from metamesh.demo.traffic import DubboConsumer, ThriftHelloClient, TrafficLoop

DEFAULT_ADMIN_PORT = 15000
SERVICE_ADDRESSES = {"thrift": ("127.0.10.1", 9090), "dubbo": ("127.0.10.2", 20880)}
SERVER_HOSTS = {
    ("thrift", "v1"): "127.0.20.1",
    ("thrift", "v2"): "127.0.20.2",
    ("dubbo", "v1"): "127.0.20.3",
    ("dubbo", "v2"): "127.0.20.4",
}
DESTINATIONS = {
    "thrift": "hello-thrift.demo.svc.cluster.local",
    "dubbo": "org.apache.dubbo.demo.demoservice",
}
SETTLE = 0.1  # s after a change is in force, for requests routed just before it to finish


@dataclass
class DemoOptions:
    step_seconds: float = 5.0
    keep_running: bool = False
    admin_port: int | None = None  # None: 15000, or any free port if 15000 is taken
    rate: float = 120.0  # calls per second per client
    live_tty: bool | None = None  # None: redraw in place when the output is a terminal


@dataclass
class Pieces:
    """Everything started, so that ``finally`` can stop it in reverse order."""

    servers: dict[tuple[str, str], SampleServer] = field(default_factory=dict)
    loops: dict[str, TrafficLoop] = field(default_factory=dict)
    config: ConfigDir | None = None
    mesh: MeshProcess | None = None


def _pick_admin_port(requested: int | None) -> int:
    if requested is None:
        return DEFAULT_ADMIN_PORT if port_is_free("127.0.0.1", DEFAULT_ADMIN_PORT) else 0
    if requested and not port_is_free("127.0.0.1", requested):
        raise DemoError(f"--admin-port {requested}: that port is taken on 127.0.0.1; pick another")
    return requested


def _pick_service_addresses() -> dict[str, tuple[str, int]]:
    picked = {}
    for protocol, (address, port) in SERVICE_ADDRESSES.items():
        try:
            free = port_is_free(address, port)
        except OSError as exc:  # pragma: no cover - lo holds all of 127/8 on Linux
            raise DemoError(f"cannot use loopback address {address}: {exc}") from exc
        picked[protocol] = (address, port if free else free_port(address))
    return picked


class LiveDemo:
    """One run of the demo; see the module docstring."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self.options = options
        self.out = out
        tty = options.live_tty
        self.tty = out.isatty() if tty is None else tty
        self.pieces = Pieces()
        self.admin_port = 0
        self.addresses: dict[str, tuple[str, int]] = {}
        self.failures: list[str] = []

    def say(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    # --- start and stop --------------------------------------------------------------

    def start_servers(self) -> None:
        for (protocol, version), host in SERVER_HOSTS.items():
            server: SampleServer = (
                ThriftHelloServer(version, host)
                if protocol == "thrift"
                else DubboDemoProvider(version, host)
            )
            self.pieces.servers[protocol, version] = server
        self.say("Sample services (real libraries, two versions each, on loopback):")
        for protocol, label in (("thrift", "Apache thrift"), ("dubbo", "dubbo-py provider")):
            where = "  ".join(
                f"{v} {s.host}:{s.port}"
                for (p, v), s in self.pieces.servers.items()
                if p == protocol
            )
            self.say(f"  {protocol:<7} {where}   ({label})")

    def start_mesh(self) -> None:
        admin = _pick_admin_port(self.options.admin_port)
        self.addresses = _pick_service_addresses()
        values: dict[str, object] = {}
        for protocol, (address, port) in self.addresses.items():
            values[f"{protocol}_address"], values[f"{protocol}_port"] = address, port
        for (protocol, version), server in self.pieces.servers.items():
            values[f"{protocol}_{version}_host"] = server.host
            values[f"{protocol}_{version}_port"] = server.port
        config = self.pieces.config = ConfigDir(values)
        config.set_routes(STEPS[0].manifest)
        mesh = self.pieces.mesh = MeshProcess(config.path, admin)
        for server in self.pieces.servers.values():  # threads only now: see MeshProcess
            server.start()
        self.say("", f"The mesh: metamesh up {config.path} --admin-port {admin}")
        self.admin_port = mesh.admin_port()
        mesh.wait_serving(self._expected(STEPS[0]), after=0)
        picked = set(self.addresses.values())
        for protocol, (address, port) in self.addresses.items():
            self.say(f"  {protocol:<7} {DESTINATIONS[protocol]}  served on {address}:{port}")
        self.say(f"  proxy admin on 127.0.0.1:{self.admin_port}")
        taken = [f"{a}:{p}" for a, p in SERVICE_ADDRESSES.values() if (a, p) not in picked]
        if self.options.admin_port is None and self.admin_port != DEFAULT_ADMIN_PORT:
            taken.append(f"127.0.0.1:{DEFAULT_ADMIN_PORT}")
        if taken:
            self.say(f"  ({', '.join(taken)} taken on this machine: free ports picked instead)")

    def start_traffic(self) -> None:
        for protocol, (address, port) in self.addresses.items():
            client = (
                ThriftHelloClient(address, port)
                if protocol == "thrift"
                else DubboConsumer(address, port)
            )
            loop = TrafficLoop(protocol, client, self.options.rate)
            loop.start()
            self.pieces.loops[protocol] = loop
        self.say(
            "",
            "Traffic: a thriftpy2 client and a dubbo-py consumer, one connection each, call",
            f"sayHello and echo in turn through the addresses above (~{self.options.rate:.0f}"
            " calls/s each).",
            "Each table counts one step's requests per service version, three ways:",
            "  proxy   istio_requests_total{destination_service, destination_version} from the",
            "          proxy admin's /stats/prometheus",
            "  server  calls the server itself handled (sayHello, echo: per method)",
            "  client  replies that named that version (every reply starts with it)",
        )

    def stop(self) -> None:
        for loop in self.pieces.loops.values():
            loop.stop()
        if self.pieces.mesh is not None:
            self.pieces.mesh.stop()
        for server in self.pieces.servers.values():
            server.stop()
        if self.pieces.config is not None:
            self.pieces.config.remove()

    # --- counting ------------------------------------------------------------------------

    def read(self) -> Reading:
        proxy = scrape(self.admin_port)
        served = {key: s.counters.snapshot() for key, s in self.pieces.servers.items()}
        answered: dict[tuple[str, str], int] = {}
        client_errors = 0
        for protocol, loop in self.pieces.loops.items():
            replies, errors = loop.tally.snapshot()
            client_errors += errors
            for version in VERSIONS:
                answered[protocol, version] = sum(
                    n for (_m, v), n in replies.items() if v == version
                )
        return Reading(
            proxy={(p, v): proxy.requests(DESTINATIONS[p], v) for p in PROTOCOLS for v in VERSIONS},
            served=served,
            answered=answered,
            client_errors=client_errors,
            proxy_errors=proxy.errors(),
        )

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No call in flight inside the block: proxy, servers and clients count the same."""
        for loop in self.pieces.loops.values():
            loop.pause()
        try:
            yield
        finally:
            for loop in self.pieces.loops.values():
                loop.resume()

    def quiet_read(self) -> Reading:
        with self.paused():
            return self.read()

    # --- steps ----------------------------------------------------------------------------

    def _expected(self, step: Step) -> list[str]:
        return [
            f"{address}:{port}  {protocol}  {step.served_routes}"
            for protocol, (address, port) in self.addresses.items()
        ]

    def apply(self, step: Step) -> float:
        """Write the step's MetaRouter; seconds until ``metamesh up`` serves it."""
        assert self.pieces.mesh is not None and self.pieces.config is not None
        mark = self.pieces.mesh.blocks()
        start = time.monotonic()
        self.pieces.config.set_routes(step.manifest)
        self.pieces.mesh.wait_serving(self._expected(step), after=mark)
        return time.monotonic() - start

    def watch(self, base: Reading, seconds: float) -> Reading:
        """Show the counts since ``base`` live for ``seconds``; the final (paused) reading."""
        interval = 0.5 if self.tty else 1.0
        start = time.monotonic()
        drawn = 0
        while (elapsed := time.monotonic() - start) < seconds:
            time.sleep(min(interval, max(seconds - elapsed, 0.05)))
            now = self.read().minus(base)
            if self.tty:
                drawn = self._redraw(table(now), drawn)
            else:
                self.say(summary_line(now, time.monotonic() - start))
        final = self.quiet_read().minus(base)
        if self.tty:
            self._redraw(table(final), drawn)
        else:
            self.say(*table(final))
        return final

    def _redraw(self, lines: list[str], drawn: int) -> int:
        if drawn:
            self.out.write(f"\x1b[{drawn}F")
        self.out.write("".join(f"\x1b[K{line}\n" for line in lines))
        self.out.flush()
        return len(lines)

    def verdict(self, step: Step, counts: Reading) -> None:
        problems = step.check(counts) + counts.disagreements()
        if counts.errors():
            problems.append(f"{counts.errors()} errors")
        if problems:
            self.failures += [f"step {step.number}: {p}" for p in problems]
            self.say("  check: UNEXPECTED: " + "; ".join(problems))
        else:
            self.say("  check: as routed; proxy, servers and clients count the same; no errors")

    def run_step(self, step: Step) -> None:
        self.say("", f"== Step {step.number}/{len(STEPS)}: {step.title} ==")
        self.say(*(f"  {line}" for line in step.explanation))
        before = self.quiet_read()
        if step.number > 1:
            took = self.apply(step)
            during = self.read().minus(before)
            self.say(
                f"  metarouter.yaml rewritten; the proxy applied it {took * 1000:.0f} ms later,"
                f" with {sum(during.proxy.values())} requests on the way and"
                f" {during.errors()} errors"
            )
            time.sleep(SETTLE)
            before = self.quiet_read()
        self.say(f"  requests during the next {self.options.step_seconds:g} s:")
        counts = self.watch(before, self.options.step_seconds)
        self.verdict(step, counts)

    def connections(self) -> None:
        for protocol, loop in self.pieces.loops.items():
            client = loop.client
            same = client.same_connection()
            address, port = self.addresses[protocol]
            local = f"{client.local[0]}:{client.local[1]}"
            state = "the connection it opened at the start" if same else "A NEW CONNECTION"
            self.say(f"  {protocol} client {local} -> {address}:{port}: {state}")
            if not same:
                self.failures.append(f"{protocol} client changed connection")

    def outro(self, total: Reading) -> None:
        admin = f"127.0.0.1:{self.admin_port}"
        assert self.pieces.config is not None
        config_hint = (
            "edit metarouter.yaml: it is live"
            if self.options.keep_running
            else "removed on exit; run with --keep-running to keep the mesh up and edit it"
        )
        self.say(
            "",
            "== Where to look ==",
            f"  proxy admin     http://{admin}/",
            f"  live dashboard  http://{admin}/dashboard  (service graph, rates, routes in force)",
            f"  metrics         curl -s http://{admin}/stats/prometheus | grep istio_requests",
            f"  config dump     curl -s http://{admin}/config_dump",
            f"  routes          metamesh proxy-config routes --admin {admin}",
            f"  config dir      {self.pieces.config.path}  ({config_hint})",
            "",
            f"In all: {sum(total.proxy.values())} requests through the mesh, "
            f"{total.errors()} errors.",
        )

    def keep_running(self, start: Reading) -> None:
        self.say("", "The mesh and the traffic keep running; press Ctrl-C to stop.")
        drawn, began = 0, time.monotonic()
        try:
            while True:
                time.sleep(1.0 if self.tty else 5.0)
                now = self.read().minus(start)
                if self.tty:
                    drawn = self._redraw(table(now), drawn)
                else:
                    self.say(summary_line(now, time.monotonic() - began))
        except KeyboardInterrupt:
            self.say("", "metamesh demo: stopping")

    def run(self) -> int:
        self.say("metamesh demo: an embedded mesh routing real Thrift and Dubbo traffic, live.", "")
        self.start_servers()
        self.start_mesh()
        self.start_traffic()
        start = self.quiet_read()
        for step in STEPS:
            self.run_step(step)
        self.say("", "Connections after the route changes:")
        self.connections()
        total = self.quiet_read().minus(start)
        self.outro(total)
        if self.options.keep_running:
            self.keep_running(start)
        if self.failures:
            self.say("", "metamesh demo: unexpected results:", *(f"  {f}" for f in self.failures))
            return 1
        self.say("metamesh demo: done.")
        return 0


def _stop_on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(143)


def run_live_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """``metamesh demo``: returns the exit code (0: every step showed what it should)."""
    configure_demo_logging()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    demo = LiveDemo(options, out)
    try:
        return demo.run()
    except DemoError as exc:
        print(f"metamesh demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        demo.say("", "metamesh demo: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `metamesh demo | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, previous)
