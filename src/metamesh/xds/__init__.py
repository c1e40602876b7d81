"""metamesh's xDS v3 layer: the ADS server and its per-stream protocol state.

:mod:`~metamesh.xds.streams` is the sans-IO state-of-the-world protocol (nonces, ACK/NACK,
subscriptions, ordering), :mod:`~metamesh.xds.delta` its incremental twin (per-resource
versions, removals); :mod:`~metamesh.xds.server` is the grpc.aio adapter with debounced,
versioned per-node snapshots. Resources come from :mod:`metamesh.control.translate`.
"""

from metamesh.xds.delta import DeltaStreamState
from metamesh.xds.server import AdsServer, Debouncer, node_identity
from metamesh.xds.streams import StreamState, TypeStatus

__all__ = [
    "AdsServer",
    "Debouncer",
    "DeltaStreamState",
    "StreamState",
    "TypeStatus",
    "node_identity",
]
