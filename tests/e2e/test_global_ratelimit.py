"""MetaRouter ``globalRateLimit`` end to end: control plane -> two proxies -> one RLS + Redis.

Real processes and peers throughout: a private ``redis-server``, ``metamesh ratelimit-server``
(a limits file allowing ``add`` :data:`LIMIT` times an hour), one ``metamesh control-plane``
watching a config dir, two ``metamesh proxy --xds`` sidecars, a real Apache Thrift server and
Apache framed/binary clients. Nothing is configured on the proxies: the filter, the rate limit
service's cluster and its endpoint all come from the manifests over xDS.

Why two namespaces: a sidecar binds its listeners on the service VIPs; in Kubernetes each
sidecar has its own network namespace, so two of them can both bind the same VIP. On one host
the loopback is shared and the second bind would fail, and metamesh's proxy does not bind with
``SO_REUSEPORT``. So the two client workloads live in namespaces ``team-a`` and ``team-b``, and
each namespace declares its own view of the shared Calc backend, as Istio users do for an
external service: a ServiceEntry ``calc`` with ``exportTo: ["."]`` on its own 127.0.10.x
address and a MetaRouter whose ``globalRateLimit`` names the same domain and the same rate
limit service. A proxy started with ``--namespace team-a`` sees only team-a's listener, the
other only team-b's; both ask the one rate limit service, whose ServiceEntry (namespace
``ratelimit``, port ``grpc-rls``, exported everywhere) gives the address behind
``outbound|<port>||ratelimit.ratelimit.svc.cluster.local``. Both proxies thus spend one budget.

Checked: across both proxies exactly :data:`LIMIT` ``add`` calls reach the server, the rest
get ``TApplicationException`` "global rate limit exceeded"; ``echo`` (no limit for it in the
limits file) always passes; each proxy's ``/stats/prometheus`` counts what it admitted and
refused and the counts add up to what the clients saw. Then the rate limit service is stopped:
with ``denyOnFail: true`` every call is refused with "rate limit service unavailable" and
counted in ``metamesh_ratelimit_errors_total``. Started again on the same port, it is used
again without any proxy restart, and ``add`` is still over the limit: the spent budget lives
in Redis, not in the service.
"""

from __future__ import annotations

import re
import types
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from functools import partial
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException

from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import Metamesh, ThriftClient, free_port, wait_until, write
from tests.ratelimit.conftest import RedisProcess, running_redis
from tests.ratelimit.support import wait_clear_of_window_end
from tests.runtime.thrift_servers import NamedCalc

pytestmark = pytest.mark.interop

LIMIT = 5  # add calls an hour, for both proxies together
CALLS = 2 * LIMIT + 2  # add calls made, half through each proxy
TEAMS = {"team-a": "127.0.10.61", "team-b": "127.0.10.62"}
RLS_HOST = "ratelimit.ratelimit.svc.cluster.local"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with running_redis() as server:
        yield server


def calc_manifests(namespace: str, address: str, port: int, upstream: int, rls: str) -> str:
    """team ``namespace``'s view of the Calc backend, with the shared global rate limit
    (``rls`` is ``domain:port`` of the rate limit service)."""
    domain, rls_port = rls.split(":")
    port_name = "tcp-metaprotocol-thrift-calc"
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: calc, namespace: {namespace}}}
spec:
  hosts: [calc]
  addresses: [{address}]
  exportTo: ["."]
  ports: [{{number: {port}, name: {port_name}}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{{port_name}: {upstream}}}}}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: calc, namespace: {namespace}}}
spec:
  hosts: [calc]
  routes:
  - name: all
    route: [{{destination: {{host: calc}}}}]
  globalRateLimit:
    domain: {domain}
    requestTimeout: 2s
    denyOnFail: true
    rateLimitService: outbound|{rls_port}||{RLS_HOST}
    descriptors: [{{property: method, descriptorKey: method}}]
"""


def rls_manifest(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: ratelimit, namespace: ratelimit}}
spec:
  hosts: [{RLS_HOST}]
  addresses: [127.0.0.1]
  ports: [{{number: {port}, name: grpc-rls}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"""


def metric(admin: str, name: str) -> float:
    """Sum of every sample of ``name`` on one proxy's ``/stats/prometheus``."""
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=10) as reply:
        text = reply.read().decode()
    pattern = re.compile(rf"^{name}(?:\{{.*\}})? (\S+)$")
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


def outcome(call: Callable[..., object], *args: object) -> object:
    """The call's answer, or the proxy's reason when it answers TApplicationException."""
    try:
        return call(*args)
    except TApplicationException as e:
        assert e.type == TApplicationException.INTERNAL_ERROR, e
        return e.message


def answers_echo(client: ThriftClient) -> bool:
    return outcome(client.echo, "back") == "v1:back"


def test_two_proxies_share_one_global_limit_from_the_control_plane(
    calc_gen: types.ModuleType, redis: RedisProcess, tmp_path: Path
) -> None:
    domain = f"calc-{uuid.uuid4().hex[:8]}"
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        f"domain: {domain}\n"
        "descriptors:\n"
        f"- {{key: method, value: add, rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}}}\n"
    )
    config = tmp_path / "mesh"
    config.mkdir()
    handler = NamedCalc(calc_gen, "v1")
    xds = str(free_port())
    with ExitStack() as stack:
        server = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(handler), "framed", "binary")
        )
        rls = stack.enter_context(
            Metamesh(tmp_path, "rls", "ratelimit-server", "--config", str(limits), "--port", "0",
                     "--redis", redis.url)
        )  # fmt: skip
        wait_until(lambda: "rate limit service on 127.0.0.1:" in rls.stderr(), "the RLS")
        found = re.search(r"rate limit service on 127\.0\.0\.1:(\d+)", rls.stderr())
        assert found is not None
        rls_port = int(found.group(1))
        write(config / "ratelimit.yaml", rls_manifest(rls_port))
        port = free_port()
        for team, address in TEAMS.items():
            manifests = calc_manifests(team, address, port, server.port, f"{domain}:{rls_port}")
            write(config / f"{team}.yaml", manifests)

        cp = stack.enter_context(
            Metamesh(
                tmp_path, "cp", "control-plane", "--config-dir", str(config), "--xds-port", xds
            )
        )
        cp.wait_for("control plane (xDS) on")
        proxies, clients = [], []
        for team, address in TEAMS.items():
            proxy = stack.enter_context(
                Metamesh(tmp_path, team, "proxy", "--xds", f"127.0.0.1:{xds}", "--node-id", team,
                         "--namespace", team, "--admin-port", "0")
            )  # fmt: skip
            proxy.wait_for(f"{address}:{port}  thrift")
            proxies.append(proxy)
        for proxy, address in zip(proxies, TEAMS.values(), strict=True):
            assert f"{address}:{port}" in proxy.stdout()
            other = next(a for a in TEAMS.values() if a != address)
            assert other not in proxy.stdout()  # exportTo ".": only its own namespace's listener
            clients.append(stack.enter_context(closing(ThriftClient(calc_gen, address, port))))

        wait_clear_of_window_end(3600)  # one window for all the calls
        answers: list[list[object]] = [[], []]
        for i in range(CALLS):  # alternate the proxies: A, B, A, B, ...
            answers[i % 2].append(outcome(clients[i % 2].client.add, i, 1))
        over = "global rate limit exceeded"
        assert answers == [[1, 3, 5, *[over] * 3], [2, 4, *[over] * 4]]
        admitted = [3, 2]
        assert [m for m, _ in handler.calls] == ["add"] * LIMIT  # only the admitted reached it
        for k, client in enumerate(clients):  # not limited: echo's descriptor matches no limit
            assert [client.echo(f"{k}.{n}") for n in range(3)] == [f"v1:{k}.{n}" for n in range(3)]

        admins = [proxy.admin() for proxy in proxies]
        for admin in admins:  # the RLS cluster and its endpoint came from the ServiceEntry
            with urllib.request.urlopen(f"http://{admin}/clusters", timeout=10) as reply:
                text = reply.read().decode()
            assert f"outbound|{rls_port}||{RLS_HOST}::127.0.0.1:{rls_port}::" in text
        ok = [metric(admin, "metamesh_ratelimit_ok_total") for admin in admins]
        refused = [metric(admin, "metamesh_ratelimit_over_limit_total") for admin in admins]
        assert ok == [admitted[k] + 3 for k in (0, 1)]  # its admitted adds + 3 echoes
        assert refused == [CALLS // 2 - admitted[k] for k in (0, 1)]
        assert (sum(ok), sum(refused)) == (LIMIT + 6, CALLS - LIMIT)
        assert [metric(admin, "metamesh_ratelimit_errors_total") for admin in admins] == [0, 0]

        assert rls.stop() == 0  # the service is gone: denyOnFail refuses every call
        for client in clients:
            assert outcome(client.client.add, 1, 1) == "rate limit service unavailable"
            assert outcome(client.echo, "x") == "rate limit service unavailable"
            assert client.same_connection()
        assert len(handler.calls) == LIMIT + 6  # nothing more reached the server
        assert [metric(admin, "metamesh_ratelimit_errors_total") for admin in admins] == [2, 2]
        assert [metric(admin, "metamesh_ratelimit_ok_total") for admin in admins] == ok

        # back on the same port: the proxies use it again by themselves, and the budget spent
        # is still spent (the counts live in Redis, not in the service)
        rls2 = stack.enter_context(
            Metamesh(tmp_path, "rls2", "ratelimit-server", "--config", str(limits), "--port",
                     str(rls_port), "--redis", redis.url)
        )  # fmt: skip
        wait_until(lambda: "rate limit service on 127.0.0.1:" in rls2.stderr(), "the RLS again")
        for client in clients:
            wait_until(partial(answers_echo, client), "the RLS in use again")
            assert outcome(client.client.add, 1, 1) == over
        for proxy in proxies:
            assert proxy.stop() == 0
        assert cp.stop() == 0
