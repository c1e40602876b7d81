"""``metamesh.filters.command_stats``: requests, outcomes and latency per command (sans-IO).

Envoy's redis_proxy keeps ``command.<name>.total / success / error / latency`` when
``enable_command_stats`` is set; this filter keeps the same for any protocol, keyed by one
metadata value (``command`` by default: the Redis codec's; a Dubbo or Thrift listener could
use ``method``). The counters live in :attr:`ProxyStats.commands` keyed by (destination
service, request protocol, command) and the admin endpoint renders them as
``metamesh_command_requests_total`` (every request, local replies included) and
``metamesh_command_duration_milliseconds`` with ``response_code`` ``0``/``1`` (upstream
replies: a Redis error reply is ``1``).

The values come from configuration (the listener's service) and the codec's command names.
A protocol whose command names come from clients (Redis: any word) is bounded by
``max_commands`` (default 256): further names are counted under ``other``.
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs import Message, ResponseStatus
from metamesh.codecs.message import metadata_get
from metamesh.proxy.filters.base import CONTINUE, Filter, FilterContext, FilterResult
from metamesh.proxy.listener import ListenerState
from metamesh.proxy.stats import CommandStats, ProxyStats
from metamesh.proxy.upstream import ActiveRequest

COMMAND_STATS: Final = "metamesh.filters.command_stats"
OTHER: Final = "other"


class CommandStatsFilter(Filter):
    """Counts each request under its command; see the module docstring."""

    __slots__ = ("key", "max_commands", "stats")

    encoder = True

    def __init__(self, stats: ProxyStats, key: str = "command", max_commands: int = 256) -> None:
        self.stats = stats
        self.key = key
        self.max_commands = max_commands

    def _row(self, req: ActiveRequest) -> CommandStats:
        return self.row(req.downstream.listener, req.request)

    def row(self, listener: ListenerState, request: Message) -> CommandStats:
        """The counters of ``request``'s command on ``listener`` (also used by
        :mod:`metamesh.proxy.runs`, which counts pipelined requests without a filter pass)."""
        command = metadata_get(request.metadata, self.key) or OTHER
        labels = (listener.config.service or "unknown", listener.protocol, command)
        table = self.stats.commands
        row = table.get(labels)
        if row is None:
            if len(table) >= self.max_commands:
                labels = (*labels[:2], OTHER)
                row = table.get(labels)
            if row is None:
                row = table[labels] = CommandStats(labels)
        return row

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        self._row(req).requests += 1
        return CONTINUE

    def on_response(self, req: ActiveRequest, response: Message, now: float) -> None:
        code = 0 if response.status is ResponseStatus.OK else 1
        self._row(req).observe(code, (now - req.start) * 1000.0)


def create_command_stats(config: object | None, ctx: FilterContext) -> Filter:
    key = "command"
    if isinstance(config, dict) and isinstance(config.get("metadataKey"), str):
        key = config["metadataKey"]
    return CommandStatsFilter(ctx.stats, key)
