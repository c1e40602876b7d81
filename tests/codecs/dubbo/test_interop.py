"""DubboCodec between real Dubbo implementations, through the codec-driven test relay.

real consumer -> Relay(DubboCodec) -> real provider, all on 127.0.0.1:

* dubbo-py 0.2.2 consumer -> dubbo-py provider;
* sofa-rpc-node 2.10.0 + dubbo-remoting 2.1.4 consumer -> sofa-rpc-node provider;
* apache-dubbo-js 3.0.0-rc6 ``DirectlyDubbo`` consumer -> sofa-rpc-node provider.

Checked: calls succeed, the relay saw the right metadata, an attachment mutation reaches the
provider (each provider script has ``getAttachment(key)``), local error replies surface in the
consumer as errors carrying the message and the connection keeps working, heartbeats are
answered by the codec and accepted.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from metamesh.codecs import ErrorKind, LocalError, Message, MessageType, Mutation, ResponseStatus
from metamesh.codecs.dubbo import DubboCodec
from tests.codecs.dubbo import peers
from tests.codecs.dubbo.frames import IFACE
from tests.codecs.dubbo.peers import dubbopy_call, dubbopy_client
from tests.support.relay import Relay

pytestmark = pytest.mark.interop

needs_node = pytest.mark.skipif(peers.node() is None, reason="node is not on PATH")


@contextlib.contextmanager
def relay_to(port: int, **options: Any) -> Iterator[Relay]:
    relay = Relay(DubboCodec, ("127.0.0.1", port), **options).__enter__()
    try:
        yield relay
    finally:
        close_relay(relay)


def close_relay(relay: Relay) -> None:
    # Relay.close() closes its listener, which does not wake a thread blocked in accept() on
    # Linux, then waits 5 s for it; shutting the listener down first wakes it at once.
    with contextlib.suppress(OSError):
        relay._listener.shutdown(socket.SHUT_RDWR)
    relay.close()


def only(requests: list[Message], method: str) -> Message:
    found = [m for m in requests if m.type is not MessageType.HEARTBEAT]
    found = [m for m in found if m.metadata["method"] == method]
    assert len(found) == 1, found
    return found[0]


def mutate_when(method: str, mutation: Mutation) -> Any:
    return lambda m: mutation if m.metadata.get("method") == method else None


def refuse_when(method: str, error: LocalError) -> Any:
    return lambda m: error if m.metadata.get("method") == method else None


# -- dubbo-py ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dubbopy_provider() -> Iterator[peers.Peer]:
    provider = peers.start_dubbopy_provider()
    yield provider
    provider.stop()


def test_dubbopy_calls_and_metadata(dubbopy_provider: peers.Peer) -> None:
    with relay_to(dubbopy_provider.port) as relay:
        client = dubbopy_client(relay.port)
        r = dubbopy_call(client, "sayHello", "world", application="py-consumer", group="g1")
        assert (r.status, r.data) == (20, "Hello world")
        assert dubbopy_call(client, "add", 2, 40).data == 42
        md = only(relay.requests, "sayHello").metadata
        assert md == {
            "interface": IFACE,
            "method": "sayHello",
            "version": "1.0.0",
            "dubbo_version": "2.0.2",
            "application": "py-consumer",
            "group": "g1",
        }
        # dubbo-py's periodic heartbeats may cross the relay too; the two calls' replies are OK
        replies = [m for m in relay.responses if m.type is not MessageType.HEARTBEAT]
        assert [m.status for m in replies] == [ResponseStatus.OK] * 2
        assert relay.errors == []


def test_dubbopy_provider_sees_attachment_mutation(dubbopy_provider: peers.Peer) -> None:
    mutation = {"x-mesh": "metamesh", "application": "rewritten"}
    with relay_to(
        dubbopy_provider.port,
        on_request=mutate_when("getAttachment", mutation),
    ) as relay:
        client = dubbopy_client(relay.port)
        assert dubbopy_call(client, "getAttachment", "x-mesh", application="a").data == "metamesh"
        assert dubbopy_call(client, "getAttachment", "application", application="a").data == (
            "rewritten"
        )
        assert relay.errors == []


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.ROUTE_NOT_FOUND, 60),
        (ErrorKind.TIMEOUT, 31),
        (ErrorKind.OVER_LIMIT, 100),
        (ErrorKind.BAD_REQUEST, 40),
        (ErrorKind.NO_HEALTHY_UPSTREAM, 80),
    ],
)
def test_dubbopy_consumer_surfaces_error_replies(
    dubbopy_provider: peers.Peer, kind: ErrorKind, status: int
) -> None:
    error = LocalError(kind, f"metamesh: {kind.value} for sayHello")
    with relay_to(
        dubbopy_provider.port,
        on_request=refuse_when("sayHello", error),
    ) as relay:
        client = dubbopy_client(relay.port)
        r = dubbopy_call(client, "sayHello", "world")
        assert (r.ok, r.status, r.error) == (False, status, error.message)
        assert dubbopy_call(client, "add", 1, 2).data == 3  # same connection still works
        assert relay.errors == []


def test_dubbopy_heartbeat_is_answered_by_the_codec(dubbopy_provider: peers.Peer) -> None:
    with relay_to(dubbopy_provider.port) as relay:
        client = dubbopy_client(relay.port)
        client.send_heartbeat_request(99)
        assert dubbopy_call(client, "add", 20, 22).data == 42
        beats = [m for m in relay.requests if m.type is MessageType.HEARTBEAT]
        assert [m.request_id for m in beats] == [99]
        assert all(m.type is not MessageType.HEARTBEAT for m in relay.responses)
        assert relay.errors == []


# -- Node: sofa-rpc-node / dubbo-remoting and apache-dubbo-js ------------------------------------


@pytest.fixture(scope="module")
def node_provider() -> Iterator[peers.Peer]:
    if peers.node() is None:
        pytest.skip("node is not on PATH")
    provider = peers.start_node_provider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def node_consumers(node_provider: peers.Peer) -> Iterator[dict[str, tuple[Relay, peers.Peer]]]:
    """One relay + one long-lived consumer per Node client; tests swap the relay's policy."""
    relays: list[Relay] = []
    consumers: list[peers.Peer] = []
    try:
        started: dict[str, tuple[Relay, peers.Peer]] = {}
        for kind in ("sofa", "adj"):
            relays.append(Relay(DubboCodec, ("127.0.0.1", node_provider.port)).__enter__())
            consumers.append(peers.start_node_consumer(kind, relays[-1].port))
            started[kind] = (relays[-1], consumers[-1])
        yield started
    finally:
        for consumer in consumers:
            consumer.stop()
        for relay in relays:
            close_relay(relay)


@pytest.fixture
def relay_factory(node_consumers: dict[str, tuple[Relay, peers.Peer]]) -> Any:
    def configure(kind: str, **policy: Any) -> tuple[Relay, peers.Peer]:
        relay, consumer = node_consumers[kind]
        relay.on_request = policy.get("on_request", lambda _m: None)
        relay.response_mutation = policy.get("response_mutation")
        relay.requests.clear()
        relay.responses.clear()
        return relay, consumer

    return configure


@needs_node
def test_sofa_consumer_calls_and_metadata(relay_factory: Any) -> None:
    relay, consumer = relay_factory("sofa")
    answer = consumer.call("sayHello", ("string", "world"), application="node-app", team="t1")
    assert answer == {"ok": True, "result": "Hello world"}
    assert consumer.call("add", ("int", 2), ("int", 40)) == {"ok": True, "result": 42}
    md = only(relay.requests, "sayHello").metadata
    assert {k: md.get(k) for k in ("interface", "method", "version", "application", "team")} == {
        "interface": IFACE,
        "method": "sayHello",
        "version": "0.0.0",
        "application": "node-app",
        "team": "t1",
    }
    assert md["path"] == IFACE
    assert relay.errors == []


@needs_node
def test_sofa_provider_sees_attachment_mutation(relay_factory: Any) -> None:
    relay, consumer = relay_factory(
        "sofa", on_request=mutate_when("getAttachment", {"x-mesh": "metamesh", "team": "new"})
    )
    assert consumer.call("getAttachment", ("string", "x-mesh")) == {
        "ok": True,
        "result": "metamesh",
    }
    assert consumer.call("getAttachment", ("string", "team"), team="old") == {
        "ok": True,
        "result": "new",
    }
    assert relay.errors == []


@needs_node
@pytest.mark.parametrize("kind", ["sofa", "adj"])
def test_node_consumers_accept_response_mutation(relay_factory: Any, kind: str) -> None:
    relay, consumer = relay_factory(kind, response_mutation={"x-served-by": "relay"})
    assert consumer.call("sayHello", ("string", "world")) == {"ok": True, "result": "Hello world"}
    assert consumer.call("add", ("int", 1), ("int", 2)) == {"ok": True, "result": 3}
    assert relay.errors == []


@needs_node
@pytest.mark.parametrize("kind", ["sofa", "adj"])
@pytest.mark.parametrize(
    "error_kind",
    [ErrorKind.ROUTE_NOT_FOUND, ErrorKind.TIMEOUT, ErrorKind.OVER_LIMIT, ErrorKind.BAD_REQUEST],
)
def test_node_consumers_surface_error_replies(
    relay_factory: Any, kind: str, error_kind: ErrorKind
) -> None:
    error = LocalError(error_kind, f"metamesh: {error_kind.value} for sayHello")
    relay, consumer = relay_factory(kind, on_request=refuse_when("sayHello", error))
    answer = consumer.call("sayHello", ("string", "world"))
    assert answer["ok"] is False
    assert error.message in answer["error"]
    assert consumer.call("add", ("int", 2), ("int", 3)) == {"ok": True, "result": 5}
    assert relay.errors == []


@needs_node
def test_apache_dubbo_js_metadata(relay_factory: Any) -> None:
    relay, consumer = relay_factory("adj")
    assert consumer.call("sayHello", ("string", "js")) == {"ok": True, "result": "Hello js"}
    md = only(relay.requests, "sayHello").metadata
    assert (md["interface"], md["version"], md["application"]) == (IFACE, "0.0.0", "dubbo-js")
    assert md["dubbo_version"] == "2.0.2"


@needs_node
def test_sofa_heartbeat_is_answered_by_the_codec(relay_factory: Any) -> None:
    relay, consumer = relay_factory("sofa")
    assert consumer.call("add", ("int", 1), ("int", 1))["ok"]
    answer = consumer.command(op="heartbeat")
    assert answer["ok"] is True, answer
    assert consumer.call("add", ("int", 2), ("int", 2)) == {"ok": True, "result": 4}
    beats = [m for m in relay.requests if m.type is MessageType.HEARTBEAT]
    assert [m.request_id for m in beats] == [answer["ack"]]
    assert all(m.type is not MessageType.HEARTBEAT for m in relay.responses)
    assert relay.errors == []
