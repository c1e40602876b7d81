"""The incremental (delta) xDS protocol for one ADS stream, without I/O.

:class:`DeltaStreamState` is the delta twin of :class:`~metamesh.xds.streams.StreamState`:
fed :class:`DeltaDiscoveryRequest` s and new snapshots, it returns the
:class:`DeltaDiscoveryResponse` s to send. Its per-type reporting is the same
:class:`~metamesh.xds.streams.TypeStatus` (with ``delta=True``), so the server's ``status()``
and ``nacks()`` show delta and state-of-the-world nodes alike.

- **Per-resource versions.** A resource's version is the first 16 hex digits of the SHA-256 of
  its deterministic serialization: equal content, equal version, across snapshots, restarts
  and control planes. ``system_version_info`` is the server's snapshot version (``"1"``, ...).
- **What the client has.** Per type, ``known`` maps each name to the version the client was
  last sent (or declared in ``initial_resource_versions`` when it reconnects). A resource is
  sent only when its version differs from that; a name the client has that left the snapshot
  is listed in ``removed_resources``. A name explicitly subscribed that does not exist is
  also listed there once (the protocol's "does not exist" signal), remembered as ``ABSENT``.
  ``known`` is updated when a response is sent, not when it is ACKed: a NACKed resource is not
  resent until its content changes again (reported, never retried blindly).
- **Subscriptions.** CDS and LDS are wildcard when the first request of the type subscribes to
  nothing (legacy wildcard); any type is wildcard while ``*`` is subscribed (until it is
  unsubscribed). Newly subscribed names are answered at once; unsubscribed names are forgotten
  and need no answer. The first request of a type is always answered (possibly with an empty
  response) so that a client waiting for its first update can finish initialising.
- **ACK / NACK.** Each response carries a fresh nonce; several may be in flight per type. A
  request naming one of them ACKs it (``acked_version`` := that response's system version)
  or, with ``error_detail``, NACKs it; older in-flight nonces of the type are dropped. An
  unknown nonce is ignored; the request's subscription changes still apply.
- **Shared work.** Versions and the encoded ``Resource`` entries come from
  :mod:`metamesh.xds.encoded` (computed once per snapshot for every stream); a snapshot
  that is the very object the stream already has is not compared, and a stream that holds
  all of the previous snapshot looks only at the names the two differ by (the difference is
  computed once for all streams), not at every name it subscribes to.
- **Ordering.** A snapshot change is sent as CDS, EDS, LDS, RDS, one response per type with
  something added, changed or removed.
- **Re-warming.** Envoy replaces an updated EDS cluster by a new one that waits for its
  ClusterLoadAssignment (up to ``initial_fetch_timeout``, 15 s) although the name stays
  subscribed; so when a cluster the client holds changes, its assignment is resent after it
  even if the assignment itself did not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metamesh.xds.encoded import EncodedTable, delta_response, encoded, table_diff
from metamesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, TYPE_URLS, XdsResources
from metamesh.xds.sanitize import MAX_ERROR_DETAIL, bounded
from metamesh.xds.streams import WILDCARD_TYPES, TypeStatus

DeltaDiscoveryRequest = Any  # envoy.service.discovery.v3.DeltaDiscoveryRequest (untyped)
DeltaDiscoveryResponse = Any
WILDCARD = "*"
ABSENT = ""  # in ``known``: the client was told this explicitly subscribed name does not exist


def resource_version(message: Any) -> str:
    """A resource's delta version: a hash of its deterministic serialization."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(slots=True)
class DeltaType:
    """One type URL on a delta stream: subscription, what the client has, nonces in flight."""

    status: TypeStatus
    answered: bool = False
    known: dict[str, str] = field(default_factory=dict)
    in_flight: dict[int, str] = field(default_factory=dict)  # nonce -> system version
    #: The table ``known`` mirrors for every subscribed name (after a full comparison); the
    #: next snapshot is then compared through the shared table difference (None: compare all).
    synced: EncodedTable | None = None

    def subscribe(self, names: Iterable[str], first: bool, type_url: str) -> bool:
        """Apply subscribe names; True when something new was subscribed."""
        names = set(names)
        new = False
        if WILDCARD in names or (first and not names and type_url in WILDCARD_TYPES):
            new = not self.status.wildcard
            self.status.wildcard = True
        added = names - {WILDCARD} - self.status.names
        for name in added:
            if not first:
                self.known.pop(name, None)  # a fresh subscription: the client has nothing
        self.status.names = self.status.names | added
        return new or bool(added)

    def unsubscribe(self, names: Iterable[str]) -> None:
        names = set(names)
        if names:
            self.synced = None
        if WILDCARD in names:
            self.status.wildcard = False
        self.status.names = self.status.names - names
        for name in names:
            if not self.status.wildcard or self.known.get(name) == ABSENT:
                self.known.pop(name, None)


@dataclass(slots=True)
class DeltaStreamState:
    """One delta ADS stream: per-type subscriptions, client versions and ACK state."""

    node_id: str
    version: str = ""
    resources: XdsResources = field(default_factory=XdsResources)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    on_nack: Callable[[str, str, str, str], None] | None = None
    _delta: dict[str, DeltaType] = field(default_factory=dict)
    _versions: dict[str, dict[str, str]] = field(default_factory=dict)
    _nonce: int = 0

    def status(self, type_url: str) -> TypeStatus:
        return self._type(type_url).status

    def client_versions(self, type_url: str) -> Mapping[str, str]:
        """The versions the client is believed to hold (after what was sent), by name."""
        return dict(self._type(type_url).known)

    def set_snapshot(self, version: str, resources: XdsResources) -> list[DeltaDiscoveryResponse]:
        """Adopt a new snapshot; a response for every subscribed type with a difference."""
        unchanged = resources is self.resources and bool(self.version)
        self.version, self.resources = version, resources
        if unchanged:
            return []  # the same snapshot object (an unchanged scope): no difference
        self._versions = {url: encoded(resources, url).versions for url in TYPE_URLS}
        self._resend_assignments_of_updated_clusters()
        out = []
        for type_url in TYPE_URLS:
            state = self._delta.get(type_url)
            if state is not None and state.status.subscribed:
                response = self._respond(type_url, state, since_synced=True)
                if response is not None:
                    out.append(response)
        return out

    def on_request(self, request: DeltaDiscoveryRequest) -> list[DeltaDiscoveryResponse]:
        """Handle one request (see the module docstring); the responses to send."""
        type_url = request.type_url
        state = self._type(type_url)
        if request.response_nonce:
            self._ack_or_nack(type_url, state, request)
        first = not state.status.subscribed
        if first:
            state.known.update(request.initial_resource_versions)
        state.status.subscribed = True
        state.unsubscribe(request.resource_names_unsubscribe)
        wants_more = state.subscribe(request.resource_names_subscribe, first, type_url)
        if not (first or wants_more):
            return []
        response = self._respond(type_url, state)
        return [response] if response is not None else []

    def _resend_assignments_of_updated_clusters(self) -> None:
        """Envoy re-warms an updated EDS cluster and waits for its assignment: resend it."""
        clusters, endpoints = self._delta.get(CLUSTER_TYPE), self._delta.get(ENDPOINT_TYPE)
        if clusters is None or endpoints is None:
            return
        current = self._versions[CLUSTER_TYPE]
        if clusters.synced is not None:  # only the clusters that changed since
            diff = table_diff(clusters.synced, encoded(self.resources, CLUSTER_TYPE))
            candidates: Iterable[str] = diff.changed
        else:
            candidates = list(clusters.known)
        for name in candidates:
            held = clusters.known.get(name)
            if held is not None and held not in (ABSENT, current.get(name, held)):
                cluster = self.resources.clusters[name]
                endpoints.known.pop(cluster.eds_cluster_config.service_name or name, None)
                endpoints.synced = None

    def _type(self, type_url: str) -> DeltaType:
        state = self._delta.get(type_url)
        if state is None:
            status = self.types.setdefault(type_url, TypeStatus(delta=True))
            state = self._delta[type_url] = DeltaType(status)
        return state

    def _ack_or_nack(self, type_url: str, state: DeltaType, request: Any) -> None:
        try:
            nonce = int(request.response_nonce)
        except ValueError:
            return
        version = state.in_flight.get(nonce)
        if version is None:
            return  # unknown or superseded nonce
        state.in_flight = {n: v for n, v in state.in_flight.items() if n > nonce}
        status = state.status
        if request.HasField("error_detail"):
            status.nack_version, status.nack_error = (
                version,
                bounded(request.error_detail.message, MAX_ERROR_DETAIL),
            )
            if self.on_nack is not None:
                self.on_nack(self.node_id, type_url, version, status.nack_error)
        else:
            status.acked_version = version
            status.nack_version = status.nack_error = ""

    def _respond(
        self, type_url: str, state: DeltaType, *, since_synced: bool = False
    ) -> DeltaDiscoveryResponse | None:
        if not self.version:
            return None  # no snapshot yet: answer once the first one arrives
        table = encoded(self.resources, type_url)
        if since_synced and state.synced is not None:
            changed, removed = self._diff_since(state, table)
        else:
            changed, removed = self._diff(type_url, state)
        state.synced = table
        if not changed and not removed and state.answered:
            return None
        self._nonce += 1
        state.answered = True
        state.in_flight[self._nonce] = self.version
        status = state.status
        status.sent_version, status.sent_nonce = self.version, str(self._nonce)
        status.sent_names = tuple(sorted(n for n, v in state.known.items() if v != ABSENT))
        table = encoded(self.resources, type_url)
        entries = [table.delta_entry(name) for name, _ in changed]
        return delta_response(self.version, type_url, status.sent_nonce, entries, removed)

    def _diff_since(
        self, state: DeltaType, table: EncodedTable
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """:meth:`_diff` when ``known`` mirrors ``state.synced``: only the names that differ
        between the two tables (computed once for all streams) are looked at."""
        assert state.synced is not None
        diff = table_diff(state.synced, table)
        explicit, wildcard, known = state.status.names, state.status.wildcard, state.known
        changed, removed = [], []
        for name in diff.changed:
            if wildcard or name in explicit:
                version = table.versions[name]
                if known.get(name) != version:
                    changed.append((name, version))
                    known[name] = version
        for name in diff.gone:
            if (wildcard or name in explicit) and known.get(name) != ABSENT:
                removed.append(name)
                if name in explicit:
                    known[name] = ABSENT
                else:
                    known.pop(name, None)
        return changed, removed

    def _diff(self, type_url: str, state: DeltaType) -> tuple[list[tuple[str, str]], list[str]]:
        """What to send (name, version) and remove; updates ``known`` as if sent."""
        versions = self._versions.get(type_url, {})
        explicit = state.status.names
        known = state.known
        changed, removed = [], []
        if state.status.wildcard:  # versions are in name order already (XdsResources)
            current_names: Iterable[str] = versions
            gone = sorted(n for n in (known.keys() | explicit) if n not in versions)
        else:
            current_names = sorted(n for n in explicit if n in versions)
            gone = sorted(n for n in explicit if n not in versions)
        for name in current_names:
            current = versions[name]
            if known.get(name) != current:
                changed.append((name, current))
                known[name] = current
        for name in gone:
            if known.get(name) != ABSENT:
                removed.append(name)
                if name in explicit:
                    known[name] = ABSENT
                else:
                    known.pop(name, None)
        return changed, removed
