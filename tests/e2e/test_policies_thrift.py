"""Traffic policies end to end: manifests -> ``metamesh up`` (xDS) -> proxy -> real Thrift peers.

One ``metamesh up`` subprocess serves a directory with six Thrift services, each on its own
127.0.10.x address, each showing one policy written the way users write it (DestinationRule
``connectionPool``/``outlierDetection``, MetaRouter ``localRateLimit`` and metamesh's route
``timeout``/``retries``/``fault``). Clients and servers are Apache Thrift (framed, binary);
the proxy's local replies arrive as ``TApplicationException`` carrying the proxy's reason.
Every outcome is also read back from the proxy's ``/stats/prometheus``.

No assertion is on how fast anything is, except that an ejected endpoint does not come back
well before its ``baseEjectionTime`` (1 s): the lower bound is half of that.
"""

from __future__ import annotations

import math
import re
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any

import pytest
from thrift.Thrift import TApplicationException

from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import Metamesh, ThriftClient, free_address, wait_until, write
from tests.runtime.thrift_servers import NamedCalc

pytestmark = pytest.mark.interop
NS = "policies"


class FailingCalc(NamedCalc):
    """``echo`` raises, so Apache's processor answers TApplicationException INTERNAL_ERROR."""

    def echo(self, s: str) -> str:
        self._record("echo", s)
        raise RuntimeError("this endpoint is broken")


@dataclass
class Service:
    name: str
    address: str
    port: int

    @property
    def host(self) -> str:
        return f"{self.name}.{NS}.svc.cluster.local"


def service_entry(svc: Service, *endpoints: tuple[int, str]) -> str:
    port_name = f"tcp-metaprotocol-thrift-{svc.name}"
    eps = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{{port_name}: {p}}}, labels: {{version: {v}}}}}"
        for p, v in endpoints
    )
    return f"""---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {svc.name}, namespace: {NS}}}
spec:
  hosts: [{svc.host}]
  addresses: [{svc.address}]
  ports: [{{number: {svc.port}, name: {port_name}}}]
  resolution: STATIC
  endpoints:
{eps}
"""


def destination_rule(svc: Service, policy: str) -> str:
    return f"""---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {svc.name}, namespace: {NS}}}
spec:
  host: {svc.host}
  trafficPolicy:
{policy}
"""


def meta_router(svc: Service, body: str) -> str:
    return f"""---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: {svc.name}, namespace: {NS}}}
spec:
  hosts: [{svc.host}]
{body}
"""


def one_route(svc: Service, extra: str) -> str:
    return f"""  routes:
  - name: all
    route: [{{destination: {{host: {svc.host}}}}}]
{extra}"""


@dataclass
class Mesh:
    up: Metamesh
    gen: types.ModuleType
    services: dict[str, Service]
    handlers: dict[str, NamedCalc]
    servers: dict[str, ApacheServer]

    def client(self, name: str) -> ThriftClient:
        svc = self.services[name]
        return ThriftClient(self.gen, svc.address, svc.port)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.up.admin()}/stats/prometheus") as r:
            text: str = r.read().decode()
        return text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (labels must all match); 0 when absent."""
        for line in self.metrics().splitlines():
            m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
            if m is None or m.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        return 0.0


@pytest.fixture(scope="module")
def mesh(calc_gen: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("policies")
    config = tmp / "mesh"
    config.mkdir()
    with ExitStack() as stack:
        handlers = {
            name: NamedCalc(calc_gen, name)
            for name in ("slow", "retry-a", "retry-b", "good", "busy", "limited", "chaos")
        }
        handlers["bad"] = FailingCalc(calc_gen, "bad")
        for name in ("slow", "busy"):
            handlers[name].release.clear()  # echo is held until the test releases it
            stack.callback(handlers[name].release.set)
        servers = {
            name: stack.enter_context(ApacheServer(calc_gen.Calc.Processor(h), "framed", "binary"))
            for name, h in handlers.items()
        }
        names = ("slow", "retry", "flaky", "busy", "limited", "chaos")
        services = {n: Service(n, *free_address()) for n in names}
        port = {n: s.port for n, s in servers.items()}
        docs = [
            _application_protocol(),
            service_entry(services["slow"], (port["slow"], "v1")),
            meta_router(services["slow"], one_route(services["slow"], "    timeout: 300ms")),
            service_entry(services["retry"], (port["retry-a"], "v1"), (port["retry-b"], "v1")),
            meta_router(
                services["retry"],
                one_route(
                    services["retry"],
                    "    retries: {attempts: 2, retryOn: [connect-failure, reset],"
                    " retryNonIdempotent: true}",
                ),
            ),
            service_entry(services["flaky"], (port["good"], "v1"), (port["bad"], "v1")),
            destination_rule(
                services["flaky"],
                "    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, "
                "baseEjectionTime: 1s, maxEjectionPercent: 50}",
            ),
            service_entry(services["busy"], (port["busy"], "v1")),
            destination_rule(services["busy"], "    connectionPool: {http: {http2MaxRequests: 2}}"),
            service_entry(services["limited"], (port["limited"], "v1")),
            meta_router(
                services["limited"],
                "  localRateLimit:\n"
                "    tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 300s}",
            ),
            service_entry(services["chaos"], (port["chaos"], "v1")),
            meta_router(
                services["chaos"],
                one_route(
                    services["chaos"],
                    "    fault: {abort: {errorKind: fault_abort, message: chaos monkey,"
                    " percentage: {value: 30}}}",
                ),
            ),
        ]
        write(config / "mesh.yaml", "".join(docs))
        up = stack.enter_context(
            Metamesh(tmp, "up", "up", str(config), "--admin-port", "0", "--log-level", "ERROR")
        )
        for svc in services.values():
            up.wait_for(f"{svc.address}:{svc.port}")
        yield Mesh(up, calc_gen, services, handlers, servers)


def _application_protocol() -> str:
    return """---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {name: thrift}
spec: {protocol: thrift, codec: aeraki.meta_protocol.codec.thrift}
"""


def app_error(call: Any) -> TApplicationException:
    with pytest.raises(TApplicationException) as info:
        call()
    return info.value


# --- route timeout -----------------------------------------------------------------------


def test_slow_upstream_hits_the_route_timeout(mesh: Mesh) -> None:
    client = mesh.client("slow")
    try:
        error = app_error(lambda: client.echo("late"))
        assert error.type == TApplicationException.INTERNAL_ERROR
        assert error.message == "route timeout"
        assert mesh.handlers["slow"].echoes() == ["late"]  # it did reach the server
        assert mesh.metric("metamesh_timeouts_total") >= 1
        assert mesh.metric("metamesh_local_replies_total", reason="timeout") >= 1
        mesh.handlers["slow"].release.set()  # the late reply must not reach the client
        wait_until(lambda: mesh.metric("metamesh_late_responses_total") >= 1, "late reply")
        assert client.client.add(1, 1) == 2  # same client connection, still good
    finally:
        client.close()


# --- retries -----------------------------------------------------------------------------


def test_retry_succeeds_on_the_second_endpoint_after_the_first_is_killed(mesh: Mesh) -> None:
    client = mesh.client("retry")
    try:
        answers = {client.echo(str(i)).split(":")[0] for i in range(10)}
        assert answers == {"retry-a", "retry-b"}  # both endpoints serve
        before = mesh.metric("metamesh_retries_total")
        mesh.servers["retry-a"].__exit__(None, None, None)  # kill endpoint a
        served = [client.echo(f"after-{i}") for i in range(20)]
        assert all(s.startswith("retry-b:") for s in served)  # no client saw an error
        assert mesh.metric("metamesh_retries_total") > before
        assert mesh.metric("metamesh_upstream_connect_failures_total") >= 1
    finally:
        client.close()


# --- outlier detection -------------------------------------------------------------------


def test_failing_endpoint_is_ejected_and_returns_after_base_ejection_time(mesh: Mesh) -> None:
    bad = mesh.handlers["bad"]
    client = mesh.client("flaky")
    try:
        errors = 0
        while mesh.metric("metamesh_outlier_ejections_total") < 1:
            assert len(bad.echoes()) <= 3, "3 consecutive errors must eject"
            try:
                client.echo("x")
            except TApplicationException as e:
                assert e.type == TApplicationException.INTERNAL_ERROR
                errors += 1
        ejected_at = time.monotonic()
        assert errors == 3 == len(bad.echoes())
        # while ejected, every request goes to the good endpoint
        for i in range(20):
            assert client.echo(f"e{i}") == f"good:e{i}"
        assert len(bad.echoes()) == 3

        def bad_is_back() -> bool:
            with suppress(TApplicationException):
                client.echo("probe")
            return len(bad.echoes()) > 3

        wait_until(bad_is_back, "the ejected endpoint's return", timeout=10)
        assert time.monotonic() - ejected_at >= 0.5  # baseEjectionTime is 1 s
    finally:
        client.close()


# --- circuit breaker ---------------------------------------------------------------------


def test_max_requests_breaker_answers_over_limit_under_a_burst(mesh: Mesh) -> None:
    busy = mesh.handlers["busy"]
    held = [mesh.client("busy") for _ in range(2)]
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda c=c, i=i: results.append(c.echo(f"held{i}")))
        for i, c in enumerate(held)
    ]
    burst = [mesh.client("busy") for _ in range(6)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: mesh.metric("metamesh_active_requests") == 2, "2 requests in flight")
        for i, c in enumerate(burst):
            error = app_error(lambda c=c, i=i: c.echo(f"burst{i}"))
            assert (error.type, error.message) == (
                TApplicationException.INTERNAL_ERROR,
                "max_requests reached",
            )
        assert mesh.metric("metamesh_local_replies_total", reason="over_limit") >= 6
        busy.release.set()
        for t in threads:
            t.join(10)
        assert sorted(results) == ["busy:held0", "busy:held1"]
        assert all(c.echo("again") == "busy:again" for c in burst)  # below the limit again
    finally:
        busy.release.set()
        for c in held + burst:
            c.close()


# --- local rate limit --------------------------------------------------------------------


def test_local_rate_limit_admits_exactly_the_bucket(mesh: Mesh) -> None:
    clients = [mesh.client("limited") for _ in range(2)]  # one bucket per listener
    try:
        outcomes = []
        for i in range(12):
            try:
                outcomes.append(clients[i % 2].echo(str(i)))
            except TApplicationException as e:
                outcomes.append(e.message)
        assert outcomes[:5] == [f"limited:{i}" for i in range(5)]
        assert outcomes[5:] == ["local rate limit exceeded"] * 7
        assert len(mesh.handlers["limited"].echoes()) == 5
        assert mesh.metric("metamesh_ratelimit_over_limit_total") == 7
        assert mesh.metric("metamesh_ratelimit_ok_total") == 5
    finally:
        for c in clients:
            c.close()


# --- fault injection ---------------------------------------------------------------------


def test_30_percent_abort_fault_within_5_sigma(mesh: Mesh) -> None:
    client = mesh.client("chaos")
    n, p = 600, 0.3
    try:
        aborted = 0
        for i in range(n):
            try:
                assert client.echo(str(i)) == f"chaos:{i}"
            except TApplicationException as e:
                assert (e.type, e.message) == (TApplicationException.INTERNAL_ERROR, "chaos monkey")
                aborted += 1
        assert abs(aborted - n * p) <= 5 * math.sqrt(n * p * (1 - p)), aborted
        assert len(mesh.handlers["chaos"].echoes()) == n - aborted  # aborts never went up
        assert mesh.metric("metamesh_fault_aborts_total") == aborted
    finally:
        client.close()


def test_snapshot_on_the_proxy_carries_the_policies(mesh: Mesh) -> None:
    """The admin's config dump shows what xDS delivered, in the proxy's own fields."""
    import json

    with urllib.request.urlopen(f"http://{mesh.up.admin()}/config_dump") as r:
        dump = json.loads(r.read())
    clusters = {c["name"]: c for c in dump["clusters"]}
    flaky = clusters[f"outbound|{mesh.services['flaky'].port}||{mesh.services['flaky'].host}"]
    assert flaky["outlier_detection"] == {
        "consecutive_errors": 3,
        "interval": 1.0,
        "base_ejection_time": 1.0,
        "max_ejection_percent": 50.0,
    }
    busy = clusters[f"outbound|{mesh.services['busy'].port}||{mesh.services['busy'].host}"]
    assert busy["circuit_breakers"]["max_requests"] == 2
