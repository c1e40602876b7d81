"""Wire encodings shared by every stream: each resource serialized and hashed once.

Two hundred proxies that share a scope get the same :class:`XdsResources` object
(:mod:`metamesh.control.scoped`). Serializing its 80,000 resources once per stream, hashing
them once per stream for delta versions and comparing them per stream to decide what changed
is what made a push cost seconds. Here each is done once:

- :func:`encoded` returns the :class:`EncodedTable` of one type of one ``XdsResources``
  (kept for the last :data:`MAX_SNAPSHOTS` snapshot objects): every resource's deterministic
  serialization and its delta version (the first 16 hex digits of its SHA-256). A resource
  *message* that reappears in a later snapshot (the translation reuses unchanged services'
  messages) is not serialized again: encodings are also kept per message object, in two
  generations (:class:`_MessageCache`).
- The bodies of responses are built once per table and name list and shared: a state of the
  world response is its per-stream head (version, type URL, nonce) followed by the shared
  encoded ``resources`` field; a delta response joins the per-resource ``Resource`` entries,
  each encoded once. :class:`EncodedResponse` carries those bytes to gRPC (the ADS method
  handlers' serializer, :func:`ads_service_handler`, calls ``SerializeToString`` on whatever
  it is given, so plain protobuf responses still work) and parses itself only when someone
  reads a field (tests, logs): streams never pay for that.

Field order on the wire does not matter to protobuf parsers, which is what allows the per-stream
head to be followed by the shared body.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from metamesh.xds.resources import XdsResources

#: Snapshot objects whose encodings are kept (scopes x recent versions).
MAX_SNAPSHOTS = 256
#: Resource messages kept per generation of the message cache.
MAX_MESSAGES = 400_000
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (strings, bytes, messages)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def text_field(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode()) if text else b""


class _MessageCache:
    """Serialization and version per message object, in two generations: a message used by
    the latest snapshots stays, one no snapshot has used for a generation is dropped."""

    def __init__(self, limit: int = MAX_MESSAGES) -> None:
        self.limit = limit
        self._current: dict[int, tuple[Any, bytes, str]] = {}
        self._previous: dict[int, tuple[Any, bytes, str]] = {}

    def get(self, message: Any) -> tuple[bytes, str]:
        key = id(message)
        entry = self._current.get(key)
        if entry is None or entry[0] is not message:
            entry = self._previous.get(key)
            if entry is None or entry[0] is not message:
                data = message.SerializeToString(deterministic=True)
                entry = (message, data, hashlib.sha256(data).hexdigest()[:16])
            if len(self._current) >= self.limit:
                self._previous, self._current = self._current, {}
            self._current[key] = entry
        return entry[1], entry[2]


_messages = _MessageCache()


class EncodedTable:
    """One resource type of one snapshot, encoded: names in order, bytes, versions."""

    __slots__ = (
        "_anys",
        "_bodies",
        "_entries",
        "_selected",
        "names",
        "serialized",
        "type_url",
        "versions",
    )

    def __init__(self, type_url: str, table: Mapping[str, Any]) -> None:
        self.type_url = type_url
        self.names = tuple(table)
        self.serialized: dict[str, bytes] = {}
        self.versions: dict[str, str] = {}
        for name, message in table.items():
            self.serialized[name], self.versions[name] = _messages.get(message)
        self._anys: dict[str, bytes] = {}
        self._entries: dict[str, bytes] = {}
        self._bodies: dict[tuple[str, ...], bytes] = {}
        self._selected: dict[frozenset[str], tuple[str, ...]] = {}

    def selected(self, names: frozenset[str]) -> tuple[str, ...]:
        """The subscribed ``names`` this table has, in order (shared: streams of one scope
        subscribe to the same names)."""
        hit = self._selected.get(names)
        if hit is None:
            if len(self._selected) >= 8:
                self._selected.clear()
            hit = self._selected[names] = tuple(sorted(n for n in names if n in self.versions))
        return hit

    def _any(self, name: str) -> bytes:
        packed = self._anys.get(name)
        if packed is None:
            packed = self._anys[name] = text_field(1, self.type_url) + length_delimited(
                2, self.serialized[name]
            )
        return packed

    def sotw_body(self, names: tuple[str, ...]) -> bytes:
        """The ``resources`` field (2) of a DiscoveryResponse holding ``names``, in order."""
        body = self._bodies.get(names)
        if body is None:
            if len(self._bodies) >= 8:
                self._bodies.clear()
            body = self._bodies[names] = b"".join(
                length_delimited(2, self._any(name)) for name in names
            )
        return body

    def delta_entry(self, name: str) -> bytes:
        """One ``resources`` entry (field 2) of a DeltaDiscoveryResponse: a ``Resource`` with
        name, version and the packed resource."""
        entry = self._entries.get(name)
        if entry is None:
            resource = (
                text_field(3, name)
                + text_field(1, self.versions[name])
                + length_delimited(2, self._any(name))
            )
            entry = self._entries[name] = length_delimited(2, resource)
        return entry


_tables: OrderedDict[int, tuple[XdsResources, dict[str, EncodedTable]]] = OrderedDict()


def encoded(resources: XdsResources, type_url: str) -> EncodedTable:
    """The shared encoding of one type of ``resources`` (see the module docstring)."""
    key = id(resources)
    hit = _tables.get(key)
    if hit is None or hit[0] is not resources:
        hit = (resources, {})
        _tables[key] = hit
        while len(_tables) > MAX_SNAPSHOTS:
            _tables.popitem(last=False)
    else:
        _tables.move_to_end(key)
    table = hit[1].get(type_url)
    if table is None:
        table = hit[1][type_url] = EncodedTable(type_url, resources.of(type_url))
    return table


_diffs: OrderedDict[tuple[int, int], tuple[EncodedTable, EncodedTable, TableDiff]] = OrderedDict()


class TableDiff(NamedTuple):
    """What differs from one table to the next: names new or with another version (sorted),
    and names gone (sorted)."""

    changed: tuple[str, ...]
    gone: tuple[str, ...]


def table_diff(old: EncodedTable, new: EncodedTable) -> TableDiff:
    """The difference between two tables, computed once for every stream that moves from
    ``old`` to ``new`` (a stream then handles only the names that changed)."""
    key = (id(old), id(new))
    hit = _diffs.get(key)
    if hit is not None and hit[0] is old and hit[1] is new:
        return hit[2]
    before, after = old.versions, new.versions
    diff = TableDiff(
        tuple(n for n, v in after.items() if before.get(n) != v),
        tuple(sorted(n for n in before if n not in after)),
    )
    _diffs[key] = (old, new, diff)
    while len(_diffs) > MAX_SNAPSHOTS:
        _diffs.popitem(last=False)
    return diff


class EncodedResponse:
    """A discovery response in wire form: ``head`` (this stream's fields) + ``body`` (shared).

    gRPC sends :meth:`SerializeToString`; reading any other attribute parses the bytes once
    into the protobuf message (``DiscoveryResponse`` or ``DeltaDiscoveryResponse``)."""

    __slots__ = ("_body", "_head", "_kind", "_parsed")

    def __init__(self, kind: Any, head: bytes, body: bytes) -> None:
        self._kind, self._head, self._body = kind, head, body
        self._parsed: Any = None

    def SerializeToString(self) -> bytes:
        return self._head + self._body

    def ByteSize(self) -> int:
        return len(self._head) + len(self._body)

    def __getattr__(self, name: str) -> Any:
        if self._parsed is None:
            self._parsed = self._kind.FromString(self.SerializeToString())
        return getattr(self._parsed, name)


def sotw_response(version: str, type_url: str, nonce: str, body: bytes) -> EncodedResponse:
    head = text_field(1, version) + text_field(4, type_url) + text_field(5, nonce)
    return EncodedResponse(discovery_pb2.DiscoveryResponse, head, body)


def delta_response(
    version: str, type_url: str, nonce: str, entries: Iterable[bytes], removed: Iterable[str]
) -> EncodedResponse:
    head = text_field(1, version) + text_field(4, type_url) + text_field(5, nonce)
    head += b"".join(length_delimited(6, name.encode()) for name in removed)
    return EncodedResponse(discovery_pb2.DeltaDiscoveryResponse, head, b"".join(entries))


def _wire(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def ads_service_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """The ADS methods of ``servicer``, with a serializer that sends :class:`EncodedResponse`
    bytes as they are (and any protobuf response as usual)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_wire,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_wire,
        ),
    }
    return grpc.method_handlers_generic_handler(ADS_SERVICE, handlers)
