"""Which listener an intercepted connection belongs to (Envoy's ``use_original_dst``), sans-IO.

With ``--intercept`` the proxy's listeners do not bind their addresses (Envoy's
``bind_to_port: false``): the workload dials a service's VIP:port, the kernel redirects the
connection to the capture port, and the runtime reads where it was going (``SO_ORIGINAL_DST``)
and asks :meth:`ListenerIndex.pick` for the listener, as Envoy's virtual listener hands a
connection to the listener whose address matches. An exact ``(address, port)`` wins over a
wildcard listener (``0.0.0.0``/``::`` on that port); no match is ``None`` and the runtime
passes the connection through or closes it (``outboundTrafficPolicy``, see
:mod:`metamesh.runtime.capture`).

The index is built once per config snapshot (listeners are few; a connection costs one dict
lookup); IPv6 addresses are compared in their canonical spelling.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from metamesh.proxy.config import Listener

WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class ListenerIndex:
    """Listener names by ``(address, port)`` and, for wildcard listeners, by port."""

    exact: Mapping[tuple[str, int], str]
    wildcard: Mapping[int, str]

    @staticmethod
    def build(listeners: Mapping[str, Listener]) -> ListenerIndex:
        exact: dict[tuple[str, int], str] = {}
        wildcard: dict[int, str] = {}
        for name in sorted(listeners):  # the same pick for the same config, whatever the order
            cfg = listeners[name]
            if cfg.address in WILDCARDS:
                wildcard.setdefault(cfg.port, name)
            else:
                exact.setdefault((canonical(cfg.address), cfg.port), name)
        return ListenerIndex(exact, wildcard)

    def pick(self, address: str, port: int) -> str | None:
        """The listener for a connection originally sent to ``address:port``, else None."""
        name = self.exact.get((canonical(address), port))
        if name is None:
            name = self.wildcard.get(port)
        return name


def canonical(address: str) -> str:
    """One spelling per IP address (``fd00:0::9`` and ``fd00::9`` are one VIP); a name as is."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address
