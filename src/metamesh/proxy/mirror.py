"""Request mirroring: copies of a routed request sent to mirror clusters (sans-IO).

A copy is fire-and-forget: its reply is dropped, it never delays or fails the original, and
it travels on connections of its own (a separate pool key), so a mirror that stops reading
only loses copies (``mirror_dropped``) instead of pausing every client through backpressure.
"""

from __future__ import annotations

from metamesh.codecs import (
    Message,
)
from metamesh.proxy.listener import Downstream
from metamesh.proxy.pool import UpstreamPool
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.upstream import ActiveRequest


class Mirroring(UpstreamPool):
    """Fire-and-forget request copies to mirror clusters."""

    def _mirror(self, d: Downstream, msg: Message, route: CompiledRoute, now: float) -> None:
        for name in route.mirror_clusters(self.rng):
            cs = self.clusters.get(name)
            if cs is None or cs.active_requests >= cs.max_requests:
                continue
            idx = cs.lb.pick(None)
            if idx is None:
                continue
            up = self._upstream_for(d, cs, idx, now, mirror=True)
            if up is None:
                continue
            if up.congested:  # a mirror that cannot keep up loses copies; clients never wait
                self.stats.mirror_dropped += 1
                continue
            self.stats.mirrored_requests += 1
            self._send(up, ActiveRequest(None, msg, route, cs, now, None, True), d.codec, idx)
