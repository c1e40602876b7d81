"""Connection caps: a listener's clients, and which of them to close at the cap (sans-IO).

Two caps bound client connections: a listener's own ``max_connections`` (static YAML or xDS
``MetaProtocolProxy.maxConnections``) and the process-wide ``--max-connections``
(``ConnectionLimits.max_downstreams``, sized below the open-file limit by default). A new client
over a cap takes the place of the client idle longest (nothing owed, nothing half-received) of
its listener, or, for the process cap, of any listener; it is refused when none is idle.

Finding that client must not cost a scan of every connection per new client (at the cap, every
new client asks). :class:`ListenerClients` keeps a heap of ``(idle_since, id, client)``, one
entry per open client, and the request path keeps updating ``Downstream.idle_since`` with a
plain store as before (no heap work per request): the heap is repaired lazily when a victim is
looked for. An entry whose key is out of date is pushed back with the current one, an entry of
a closed client is dropped, a client with a request in flight is set aside for this search.
Each entry is repaired at most once per search, so a search costs O(log n) per client that was
active since the last search or is busy right now, amortised over the requests that made it
stale; entries of closed clients are purged in bulk when they outnumber the open ones (O(1)
amortised per connection).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush, heapreplace

from metamesh.proxy.listener import Downstream


class ListenerClients:
    """The open clients of one listener (by name: survives a codec change) and its counters."""

    __slots__ = ("count", "evicted", "heap", "refused")

    def __init__(self) -> None:
        #: Open client connections of this listener.
        self.count = 0
        #: Clients closed to make room for a new one / new clients refused (none was idle).
        self.evicted = 0
        self.refused = 0
        self.heap: list[tuple[float, int, Downstream]] = []

    def add(self, d: Downstream) -> None:
        self.count += 1
        heap = self.heap
        heappush(heap, (d.idle_since, d.id, d))
        if len(heap) > 2 * self.count + 16:  # mostly closed clients: purge them
            self.heap = heap = [e for e in heap if not e[2].closed]
            heapify(heap)

    def removed(self) -> None:
        """A client of this listener closed (its entry goes lazily)."""
        self.count -= 1

    def longest_idle(self, exclude: Downstream | None = None) -> Downstream | None:
        """The open client idle longest (not ``exclude``), or None when none is idle."""
        heap = self.heap
        aside: list[tuple[float, int, Downstream]] = []
        found: Downstream | None = None
        while heap:
            since, cid, d = heap[0]
            if d.closed:
                heappop(heap)
            elif d.idle_since != since:
                heapreplace(heap, (d.idle_since, cid, d))
            elif d.owed or d.inbuf or d is exclude:
                aside.append(heappop(heap))
            else:
                found = d
                break
        for entry in aside:
            heappush(heap, entry)
        return found
