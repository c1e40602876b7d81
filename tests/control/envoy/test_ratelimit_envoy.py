"""A MetaRouter's globalRateLimit on an Envoy node: thrift rate limit -> ``metamesh
ratelimit-server``, with the real binary.

Real peers: a private ``redis-server``, ``metamesh ratelimit-server`` (limits file: ``add`` 3
times an hour in a fresh domain), a real Apache Thrift server and client, metamesh's ADS server
and a real Envoy. The rate limit service's cluster comes from its ServiceEntry (as for a
metamesh proxy); the limit from the MetaRouter (``descriptors: [{property: method,
descriptorKey: method}]``), which an Envoy node gets as ``envoy.filters.thrift.rate_limit`` and
route ``rate_limits`` (:mod:`metamesh.control.envoy.thrift`). Checked: exactly 3 ``add`` calls
reach the server, the others are refused with a TApplicationException ("over limit");
``echo`` (no limit) passes; Envoy counts the refusals (``ratelimit.over_limit``). Envoy 1.40's
thrift_proxy answers nothing more on a connection after that refusal (seen with the Apache
framed client), so each call over the limit is made on a new connection (docs/envoy.md).
"""

from __future__ import annotations

import re
import types
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TTransportException

from tests.codecs.thrift.apache_peer import ApacheServer
from tests.control.cases import model_of
from tests.control.envoy.envoy_node import EnvoyNode
from tests.e2e.mesh import Metamesh, ThriftClient, free_address, wait_until
from tests.ratelimit.conftest import RedisProcess, running_redis
from tests.ratelimit.support import wait_clear_of_window_end
from tests.runtime.thrift_servers import NamedCalc
from tests.xds.test_envoy import ServerThread

pytestmark = pytest.mark.interop
LIMIT = 3
RLS_HOST = "ratelimit.ratelimit.svc.cluster.local"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with running_redis() as server:
        yield server


def manifests(address: tuple[str, int], upstream: int, domain: str, rls_port: int) -> str:
    name = "tcp-metaprotocol-thrift-calc"
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: calc, namespace: demo}}
spec:
  hosts: [calc.demo.svc.cluster.local]
  addresses: [{address[0]}]
  ports: [{{number: {address[1]}, name: {name}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{{name}: {upstream}}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: calc, namespace: demo}}
spec:
  hosts: [calc.demo.svc.cluster.local]
  routes:
  - name: all
    route: [{{destination: {{host: calc.demo.svc.cluster.local}}}}]
  globalRateLimit:
    domain: {domain}
    requestTimeout: 2s
    rateLimitService: outbound|{rls_port}||{RLS_HOST}
    descriptors: [{{property: method, descriptorKey: method}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: ratelimit, namespace: ratelimit}}
spec:
  hosts: [{RLS_HOST}]
  addresses: [127.0.0.1]
  ports: [{{number: {rls_port}, name: grpc-rls}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"""


def serves_echo(gen: types.ModuleType, address: tuple[str, int]) -> bool:
    """One echo on a new connection (False while Envoy is still loading its routes)."""
    try:
        with closing(ThriftClient(gen, *address)) as client:
            return client.echo("up") == "v1:up"
    except (TApplicationException, TTransportException, ConnectionError):
        return False


def outcome(client: ThriftClient, i: int) -> object:
    try:
        return client.client.add(i, 1)
    except TApplicationException as e:
        return f"refused: {e.message}"


@pytest.mark.slow
def test_envoy_enforces_the_global_rate_limit_through_metamesh_ratelimit_server(
    calc_gen: types.ModuleType, redis: RedisProcess, tmp_path: Path
) -> None:
    domain = f"calc-{uuid.uuid4().hex[:8]}"
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        f"domain: {domain}\ndescriptors:\n"
        f"- {{key: method, value: add, rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}}}\n"
    )
    handler = NamedCalc(calc_gen, "v1")
    address = free_address()
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
        model = model_of(manifests(address, server.port, domain, int(found.group(1))))
        ads = ServerThread(model)
        stack.callback(ads.close)
        envoy = EnvoyNode(ads.port, tmp_path, "envoy-rls")
        stack.callback(envoy.close)
        where = f"{address[0]}:{address[1]}"
        wait_until(lambda: where in envoy.get("/listeners"), "Envoy's listener", 20)
        wait_until(lambda: serves_echo(calc_gen, address), "Envoy serving", 20)
        client = stack.enter_context(closing(ThriftClient(calc_gen, *address)))

        wait_clear_of_window_end(3600)  # every call in one window
        answers = [outcome(client, i) for i in range(LIMIT)]
        for i in range(2):  # over the limit: refused; the connection then serves no more
            fresh = stack.enter_context(closing(ThriftClient(calc_gen, *address)))
            answers.append(outcome(fresh, LIMIT + i))
        assert answers == [*range(1, LIMIT + 1), "refused: over limit", "refused: over limit"]
        assert [m for m, _ in handler.calls if m == "add"] == ["add"] * LIMIT
        fresh = stack.enter_context(closing(ThriftClient(calc_gen, *address)))
        assert [fresh.echo(str(n)) for n in range(3)] == [f"v1:{n}" for n in range(3)]
        over = envoy.stats("cluster.outbound|")
        assert sum(n for k, n in over.items() if k.endswith(".ratelimit.over_limit")) == 2
        assert ads.call(lambda: ads.server.nacks()) == []
