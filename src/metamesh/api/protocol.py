"""Which layer-7 protocol a service port speaks, decided from the port's name as in Aeraki.

Aeraki splits the port name on ``-`` and looks the lower-cased second part up in its protocol
list (``tcp-dubbo``, ``tcp-thrift``, ``tcp-redis``, ``tcp-kafka``, ``tcp-zookeeper``,
``tcp-mongo``, ``tcp-mysql``, ``tcp-metaprotocol``). For ``tcp-metaprotocol-<app>[-suffix]`` the
third part (case-sensitive) names an ApplicationProtocol, whose codec parses the traffic; dubbo
and thrift are pre-registered. The first part is ignored by Aeraki but should be ``tcp`` so that
Istio treats the port as opaque TCP; metamesh does the same.

Aeraki panics on a bare ``tcp-metaprotocol``; here it is a :class:`PortProtocolError`, as is an
``<app>`` no ApplicationProtocol defines. Names that are not Aeraki protocols (``http``,
``grpc-web``, ``tcp``) give ``None``: metamesh leaves such ports alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from metamesh.api.metaprotocol import ApplicationProtocol
from metamesh.codecs.registry import canonical_name

METAPROTOCOL = "metaprotocol"
KNOWN_PROTOCOLS = frozenset(
    {"dubbo", "thrift", "mongo", "redis", "mysql", "kafka", "zookeeper", METAPROTOCOL}
)
BUILTIN_APPLICATION_CODECS: Mapping[str, str] = {"dubbo": "dubbo", "thrift": "thrift"}


class PortProtocolError(ValueError):
    """A port name claims a protocol that cannot be resolved."""


@dataclass(frozen=True, slots=True)
class PortProtocol:
    """``protocol`` is the Aeraki family (``metaprotocol``, ``dubbo``, ``redis``, ...).

    For MetaProtocol ports ``application`` is the ``<app>`` part and ``codec`` the canonical
    codec name; for the other families both are None.
    """

    protocol: str
    application: str | None = None
    codec: str | None = None


def application_codecs(protocols: Iterable[ApplicationProtocol]) -> dict[str, str]:
    """``{protocol: canonical codec name}``: built-ins first, then every ApplicationProtocol."""
    table = dict(BUILTIN_APPLICATION_CODECS)
    for ap in protocols:
        if ap.spec.protocol and ap.spec.codec:
            table[ap.spec.protocol] = canonical_name(ap.spec.codec)
    return table


def protocol_for_port(port_name: str, app_protocols: Mapping[str, str]) -> PortProtocol | None:
    """The protocol a port named ``port_name`` selects, or None if it is no Aeraki protocol.

    ``app_protocols`` maps ApplicationProtocol names to codec names (see
    :func:`application_codecs`). Raises :class:`PortProtocolError` for a MetaProtocol port
    without an application part or with an undefined one.
    """
    parts = port_name.split("-")
    if len(parts) < 2 or parts[1].lower() not in KNOWN_PROTOCOLS:
        return None
    family = parts[1].lower()
    if family != METAPROTOCOL:
        return PortProtocol(family)
    if len(parts) < 3 or not parts[2]:
        raise PortProtocolError(
            f"port name {port_name!r} selects MetaProtocol but names no application protocol "
            f"(expected tcp-metaprotocol-<app>[-suffix])"
        )
    app = parts[2]
    codec = app_protocols.get(app)
    if codec is None:
        known = ", ".join(sorted(app_protocols)) or "none"
        raise PortProtocolError(
            f"port name {port_name!r} selects application protocol {app!r}, which no "
            f"ApplicationProtocol defines (defined: {known})"
        )
    return PortProtocol(METAPROTOCOL, app, canonical_name(codec))
