"""What makes a proxy a transparent sidecar: interception and the DNS responder, as one part.

:class:`Sidecar` is what :class:`~metamesh.runtime.server.ProxyServer` is given with
``--intercept`` and/or ``--dns``. The server calls :meth:`Sidecar.start` once its own
listeners are bound (with interception they are not: the capture ports take their traffic),
:meth:`Sidecar.release` first thing when it starts to drain (the rules go, so nothing is
redirected to a proxy that stops accepting), and :meth:`Sidecar.stop` when it closes. The
proxy's upstream connections carry :attr:`Sidecar.mark` so the rules let them out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from metamesh.runtime.capture import Interceptor
from metamesh.runtime.dnsproxy.responder import DnsResponder, resolv_conf_nameservers
from metamesh.runtime.dnsproxy.table import NameTable
from metamesh.runtime.intercept import InterceptSettings

if TYPE_CHECKING:
    from metamesh.proxy.config import Snapshot
    from metamesh.runtime.server import ProxyServer


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """``intercept``: capture traffic (None: no); ``dns_port``: run the DNS responder on
    127.0.0.1 there (None: no); ``dns_upstreams``: where other names go (None: the
    nameservers of /etc/resolv.conf); ``namespace``: for short names."""

    intercept: InterceptSettings | None = None
    dns_port: int | None = None
    dns_upstreams: tuple[tuple[str, int], ...] | None = None
    namespace: str | None = None
    #: ``own``: install the rules at start and remove them at exit; ``external``: they were
    #: installed by ``metamesh intercept`` (a pod's init step) and are left alone.
    rules: str = "own"


class Sidecar:
    """Interception and DNS of one proxy; see the module docstring."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.interceptor = (
            Interceptor(settings.intercept, install_rules=settings.rules == "own")
            if settings.intercept is not None
            else None
        )
        self.dns: DnsResponder | None = None
        self._table: tuple[Snapshot | None, NameTable] = (None, NameTable({}))
        self.server: ProxyServer | None = None

    @property
    def binds_listeners(self) -> bool:
        """Listeners bind their own addresses unless traffic is captured."""
        return self.interceptor is None

    @property
    def mark(self) -> int | None:
        """The socket mark of the proxy's outgoing connections (None: none needed)."""
        return self.interceptor.mark if self.interceptor is not None else None

    def name_table(self) -> NameTable:
        assert self.server is not None
        snapshot = self.server.core.snapshot
        built_for, table = self._table
        if built_for is not snapshot:
            table = NameTable.from_snapshot(snapshot, self.settings.namespace)
            self._table = (snapshot, table)
        return table

    async def start(self, server: ProxyServer) -> None:
        self.server = server
        s = self.settings
        if s.dns_port is not None:
            upstreams = s.dns_upstreams
            if upstreams is None:
                upstreams = resolv_conf_nameservers()
            self.dns = DnsResponder(
                self.name_table, port=s.dns_port, upstreams=upstreams, mark=self.mark
            )
            await self.dns.start()
        if self.interceptor is not None:
            await self.interceptor.start(server)

    def release(self) -> None:
        if self.interceptor is not None:
            self.interceptor.release()

    async def stop(self) -> None:
        if self.interceptor is not None:
            await self.interceptor.stop()
        if self.dns is not None:
            await self.dns.stop()

    def metrics(self) -> Iterator[Metric]:
        if self.interceptor is not None:
            yield from self.interceptor.metrics()
        if self.dns is not None:
            yield from self.dns.metrics()
