"""The state-of-the-world xDS protocol for one ADS stream, without I/O.

:class:`StreamState` is fed :class:`DiscoveryRequest` s and new snapshots and returns the
:class:`DiscoveryResponse` s to send; the gRPC adapter (:mod:`metamesh.xds.server`) only moves
messages. Keeping the protocol here makes every rule testable without a socket:

- **Nonces.** Every response carries a fresh nonce. A request whose ``response_nonce`` is not
  the last one sent for its type is stale (Envoy may still be answering an older response) and
  is ignored, as go-control-plane does.
- **ACK / NACK.** A request answering the latest nonce ACKs when ``error_detail`` is empty
  (``acked_version`` := its ``version_info``) and NACKs otherwise: the rejected version and the
  error are kept in :class:`TypeStatus` and nothing is resent until the snapshot changes (a
  NACKed config is reported, never retried blindly).
- **Subscriptions.** CDS and LDS are wildcard when ``resource_names`` is empty (or holds
  ``*``); EDS and RDS return only the names asked for. A request that changes the names is
  answered with the current resources even when they did not change.
- **Shared work.** Serialization, the comparison with what was sent and the response body
  come from :mod:`metamesh.xds.encoded`, computed once per snapshot and shared by every
  stream with that snapshot; a snapshot that is the very object the stream already has (its
  scope did not change) is not even compared.
- **Ordering.** A snapshot change is sent as CDS, EDS, LDS, RDS (only the types the client
  subscribed to whose content changed), the order Envoy's ADS documentation asks for so that
  clusters exist before endpoints and listeners before routes. When a cluster already sent
  changes, the endpoints are resent after it even if they did not change: Envoy re-warms the
  updated cluster and waits for its ClusterLoadAssignment (up to ``initial_fetch_timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metamesh.xds.encoded import EncodedTable, encoded, sotw_response, table_diff
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    TYPE_URLS,
    XdsResources,
)
from metamesh.xds.sanitize import MAX_ERROR_DETAIL, bounded

WILDCARD_TYPES = frozenset({CLUSTER_TYPE, LISTENER_TYPE})
DiscoveryRequest = Any  # envoy.service.discovery.v3.DiscoveryRequest (untyped generated code)
DiscoveryResponse = Any


@dataclass(slots=True)
class TypeStatus:
    """What one node holds of one resource type (shown by admin/CLI)."""

    subscribed: bool = False
    delta: bool = False
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    sent_names: tuple[str, ...] = ()
    acked_version: str = ""
    nack_version: str = ""
    nack_error: str = ""
    #: What was last sent, shared with the other streams (:mod:`metamesh.xds.encoded`): the
    #: encoded table it came from and the encoded ``resources`` field.
    sent_table: EncodedTable | None = field(default=None, repr=False)
    sent_body: bytes = field(default=b"", repr=False)

    def view(self) -> dict[str, object]:
        return {
            "delta": self.delta,
            "subscribed": sorted(self.names) if not self.wildcard else ["*"],
            "sent_version": self.sent_version,
            "sent_names": list(self.sent_names),
            "acked_version": self.acked_version,
            "nack": {"version": self.nack_version, "error": self.nack_error}
            if self.nack_error
            else None,
        }


@dataclass(slots=True)
class StreamState:
    """One ADS stream: subscriptions, sent versions and ACK state per type URL."""

    node_id: str
    version: str = ""
    resources: XdsResources = field(default_factory=XdsResources)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    on_nack: Callable[[str, str, str, str], None] | None = None
    _nonce: int = 0

    def status(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())

    def set_snapshot(self, version: str, resources: XdsResources) -> list[DiscoveryResponse]:
        """Adopt a new snapshot; the responses for every subscribed type whose content changed."""
        unchanged = resources is self.resources and bool(self.version)
        self.version, self.resources = version, resources
        if unchanged:
            return []  # the same snapshot object (an unchanged scope): nothing to compare
        rewarm = self._assignments_of_updated_clusters()
        out = []
        for type_url in TYPE_URLS:
            status = self.types.get(type_url)
            if status is not None and status.subscribed:
                force = type_url == ENDPOINT_TYPE and bool(rewarm & set(status.sent_names))
                response = self._respond(type_url, force=force)
                if response is not None:
                    out.append(response)
        return out

    def _assignments_of_updated_clusters(self) -> set[str]:
        """The assignments of sent clusters whose content changes (Envoy re-warms them)."""
        status = self.types.get(CLUSTER_TYPE)
        if status is None or status.sent_table is None:
            return set()
        now = encoded(self.resources, CLUSTER_TYPE)
        sent = status.sent_table.versions
        out = set()
        for name in table_diff(status.sent_table, now).changed:  # shared by the streams
            if name in sent:
                cluster = self.resources.clusters[name]
                out.add(cluster.eds_cluster_config.service_name or name)
        return out

    def on_request(self, request: DiscoveryRequest) -> list[DiscoveryResponse]:
        """Handle one request (see the module docstring); the responses to send."""
        type_url = request.type_url
        status = self.status(type_url)
        if request.response_nonce:
            if request.response_nonce != status.sent_nonce:
                return []  # stale: answers a response that has since been superseded
            if request.HasField("error_detail"):
                status.nack_version = status.sent_version
                status.nack_error = bounded(request.error_detail.message, MAX_ERROR_DETAIL)
                if self.on_nack is not None:
                    self.on_nack(self.node_id, type_url, status.sent_version, status.nack_error)
            else:
                status.acked_version = request.version_info
                status.nack_version = status.nack_error = ""
        names = frozenset(request.resource_names)
        wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        changed = not status.subscribed or names != status.names or wildcard != status.wildcard
        status.subscribed, status.names, status.wildcard = True, names, wildcard
        if not changed:
            return []
        response = self._respond(type_url, force=True)
        return [response] if response is not None else []

    def _respond(self, type_url: str, *, force: bool) -> DiscoveryResponse | None:
        status = self.status(type_url)
        table = encoded(self.resources, type_url)
        names = table.names if status.wildcard else table.selected(status.names)
        body = table.sotw_body(names)
        unchanged = body is status.sent_body or body == status.sent_body
        if not force and unchanged and status.sent_version:
            return None
        if not self.version:
            return None  # no snapshot yet: answer once the first one arrives
        self._nonce += 1
        status.sent_version, status.sent_nonce = self.version, str(self._nonce)
        status.sent_names, status.sent_table, status.sent_body = names, table, body
        return sotw_response(self.version, type_url, status.sent_nonce, body)
