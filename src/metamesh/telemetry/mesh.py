"""The mesh view: several proxies' dashboard readings merged into one (``metamesh dashboard``).

Each proxy's admin serves what it sees at ``/dashboard/data`` (:mod:`.view`); a mesh is many
proxies, and the page should show all of them at once: one service graph, every proxy's
health, and the config pushes as each proxy took them. :class:`MeshView` merges one round of
readings (one per proxy, or the error that stood for it) into the same JSON shape the page
reads from a single proxy, plus ``proxies`` and ``pushes``:

- **edges** are summed across proxies by (reporter, source, service, version, workload,
  protocol). A request that crosses two proxies is counted by both (the client side reports
  ``source``, the server side ``destination``), so the graph keeps the client side's edge and
  a server side's edge only where no client-side proxy reported that (source, service,
  version), as Kiali's graph does: a client without a proxy still shows, nothing twice;
- **routes** are the same tables on every proxy of one control plane: kept once per
  (listener, address);
- **proxies**: each one's health as its admin said it, or ``unreachable`` with the reason;
- **pushes**: the view remembers, across rounds, when each proxy's config version changed
  (applied: the proxy ACKed it) and each new NACK, newest first, bounded: as the proxies report
  them (their xDS client's last rejection), or as the control plane saw them (:meth:`note`).

Pure: no I/O and no clock (``now`` is an argument); :mod:`.aggregator` fetches the readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

#: How many config push events the view keeps (newest first).
MAX_PUSHES: Final = 30
_EDGE_KEY: Final = ("reporter", "source", "service", "version", "workload", "protocol")


@dataclass(frozen=True, slots=True)
class Reading:
    """One proxy's ``/dashboard/data`` (``data``), or why it could not be read (``error``)."""

    address: str
    data: dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class _Seen:
    """What the view last saw of one proxy: its config version and its last NACK."""

    version: str | None = None
    nack: str | None = None


@dataclass(slots=True)
class MeshView:
    """Merges rounds of readings; remembers config versions and NACKs per proxy."""

    seen: dict[str, _Seen] = field(default_factory=dict)
    pushes: list[dict[str, Any]] = field(default_factory=list)

    def merge(
        self, readings: list[Reading], now: float, wall: str, told: bool = True
    ) -> dict[str, Any]:
        """The page's data for one round; ``now``: seconds (monotonic, for rates), ``wall``:
        the time of day shown for pushes seen this round; ``told``: take the pushes from what
        the proxies say (else the caller records them with :meth:`note`, as the control plane
        does from its own ACK/NACK bookkeeping)."""
        live = [r for r in readings if r.data is not None]
        for r in live if told else ():
            assert r.data is not None
            proxy = r.data.get("proxy", {})
            name = f"{proxy.get('workload', '?')} ({r.address})"
            version = str(proxy.get("config_version", ""))
            self.note(r.address, name, version, r.data.get("xds", {}).get("last_nack"), wall)
        return {
            "time": now,
            "mesh": True,
            "bounds_ms": next((r.data["bounds_ms"] for r in live if r.data), []),
            "edges": merge_edges([e for r in live if r.data for e in r.data.get("edges", [])]),
            "routes": merge_routes([t for r in live if r.data for t in r.data.get("routes", [])]),
            "proxies": [_health(r) for r in readings],
            "pushes": list(self.pushes),
        }

    def note(self, key: str, name: str, version: str, nack: str | None, wall: str) -> None:
        """One proxy's config version and last NACK now: a push event when either changed."""
        seen = self.seen.setdefault(key, _Seen())
        if version != seen.version:
            seen.version = version
            self._push({"version": version, "time": wall, "proxy": name, "status": "ACK"})
        if nack and nack != seen.nack:
            seen.nack = nack
            self._push({"version": version, "time": wall, "proxy": name, "status": f"NACK: {nack}"})

    def _push(self, event: dict[str, Any]) -> None:
        self.pushes.insert(0, event)
        del self.pushes[MAX_PUSHES:]


def merge_edges(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Edges summed by key; a server side's edge only where no client side reported it."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for e in edges:
        k = tuple(str(e[n]) for n in _EDGE_KEY)
        into = out.get(k)
        if into is None:
            out[k] = {**e, "buckets": list(e["buckets"])}
            continue
        into["ok"] += e["ok"]
        into["errors"] += e["errors"]
        into["buckets"] = [a + b for a, b in zip(into["buckets"], e["buckets"], strict=True)]
    client_side = {(k[1], k[2], k[3]) for k in out if k[0] == "source"}
    return [e for k, e in out.items() if k[0] == "source" or (k[1], k[2], k[3]) not in client_side]


def merge_routes(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (listener, address) route table once, in the order first seen."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for t in tables:
        out.setdefault((t["listener"], t["address"]), t)
    return list(out.values())


def _health(r: Reading) -> dict[str, Any]:
    if r.data is None:
        return {"address": r.address, "state": "unreachable", "error": r.error or "?"}
    return {"address": r.address, **r.data.get("proxy", {}), "xds": r.data.get("xds", {})}
