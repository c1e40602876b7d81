"""Dubbo providers as a ZooKeeper registry lists them, turned into ServiceEntries (pure).

A Dubbo 2.x provider registers itself as a znode
``<root>/<interface>/providers/<URL-encoded provider URL>`` (ephemeral, so it goes when the
provider's session ends), for example, as Dubbo 2.7 writes it::

    /dubbo/org.apache.dubbo.demo.DemoService/providers/dubbo%3A%2F%2F10.0.0.7%3A20880%2F
        org.apache.dubbo.demo.DemoService%3Fanyhost%3Dtrue%26application%3Ddemo%26...

:func:`parse_provider` decodes one such name (``URLDecoder``'s form decoding, the inverse of
Dubbo's ``URL.encode``) into a :class:`Provider`; :func:`interface_services` turns the providers
of one interface into ServiceEntry resources, the same models a YAML file gives, so the rest of
the control plane (validation, the model, translation) cannot tell where a service came from.
No I/O happens here: :mod:`metamesh.control.sources.zookeeper` reads the znodes.

Naming (what a hand-written DestinationRule or MetaRouter refers to):

- one service per interface and Dubbo ``group``: the host is the interface lower-cased
  (``org.apache.dubbo.demo.demoservice``), as Aeraki's dubbo2istio names it, followed by
  ``-<group>`` when the provider has a non-empty group; any character outside ``a-z 0-9 . -``
  becomes ``-``. Unlike dubbo2istio the Dubbo ``version`` is *not* part of the host: it is a
  label, so one service holds every version and a DestinationRule subset by ``version`` (and a
  MetaRouter split between them, or a match on the request's ``version`` attribute) moves
  traffic between versions;
- the ServiceEntry is ``zk-<host with dots as dashes>`` in the control plane's namespace;
- one port, :data:`DEFAULT_SERVICE_PORT` (20880) unless told, named :data:`PORT_NAME` (the
  built-in ``dubbo`` application protocol); it has no address, so the model allocates one from
  127.240.0.0/16 as for any ServiceEntry without ``addresses``; each endpoint serves it on the
  port its URL names. Resolution is STATIC; a service whose providers all left keeps its
  ServiceEntry with no endpoints and resolution NONE (validation wants endpoints for STATIC;
  both are an EDS cluster to metamesh), so routes that name it stay valid.

Labels of an endpoint: every URL parameter whose key and value are valid Kubernetes label
syntax (``,`` in a value becomes ``-``, as dubbo2istio does; empty values are left out): so
``version``, ``group``, ``application``, ``side``, ``weight``, ``revision``, ... Then
``aeraki_meta_app_version=V`` sets ``version`` (dubbo2istio's convention for the application's
version when the Dubbo version stays the same), and ``metamesh.<key>=V`` sets ``<key>``.
``weight`` (a positive integer) is also the endpoint's load-balancing weight.

Skipped providers (each with its reason, for the source to log): a name that does not decode to
``scheme://ip:port...`` or names another interface is *malformed*; a valid URL of another
protocol (``tri://``, ``rest://``), with ``enabled=false`` or a ``category`` other than
``providers`` is *skipped*. Two providers on one address and port (a restart before the old
session expired) give one endpoint: the one with the latest ``timestamp``/``startTime``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlsplit

from metamesh.api.base import Metadata
from metamesh.api.istio import ServiceEntry, ServiceEntrySpec, ServicePort, WorkloadEntry
from metamesh.api.loader import Loaded, Origin, ResourceSet

DEFAULT_SERVICE_PORT = 20880
PORT_NAME = "tcp-metaprotocol-dubbo-zookeeper"
_LABEL_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_NOT_HOST = re.compile(r"[^a-z0-9.-]")


class UnusableProvider(ValueError):
    """A provider znode that gives no endpoint; ``malformed`` tells garbage from a choice."""

    def __init__(self, reason: str, malformed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed


@dataclass(frozen=True, slots=True)
class Provider:
    """One decoded provider URL."""

    node: str  #: the znode name, as registered
    protocol: str
    address: str
    port: int
    parameters: Mapping[str, str] = field(default_factory=dict)

    def param(self, key: str, default: str = "") -> str:
        return self.parameters.get(key, default)


@dataclass(frozen=True, slots=True)
class Skipped:
    node: str
    reason: str
    malformed: bool


@dataclass(frozen=True, slots=True)
class InterfaceServices:
    """What one interface's providers give: its ServiceEntries and the providers left out."""

    resources: ResourceSet
    hosts: tuple[str, ...]
    groups: frozenset[str]
    providers: int
    skipped: tuple[Skipped, ...] = ()


def parse_provider(node: str, interface: str) -> Provider:
    """The provider a znode name under ``<root>/<interface>/providers`` registers.

    Raises :class:`UnusableProvider` (see the module docstring for which cases are malformed).
    """
    url = unquote_plus(node)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnusableProvider(f"not a provider URL ({exc})", malformed=True) from None
    if not parts.scheme or not parts.netloc:
        raise UnusableProvider("not a provider URL (no scheme://host:port)", malformed=True)
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UnusableProvider(f"host {host!r} is not an IP address", malformed=True) from None
    if address.is_unspecified:
        raise UnusableProvider(f"host {host} is not an address to connect to", malformed=True)
    if port is None or port == 0:
        raise UnusableProvider("no port", malformed=True)
    parameters = _parameters(parts.query)
    named = parameters.get("interface") or parts.path.strip("/")
    if named and named != interface:
        message = f"registered under {interface} but its URL names interface {named}"
        raise UnusableProvider(message, malformed=True)
    provider = Provider(node, parts.scheme, str(address), port, parameters)
    if provider.protocol != "dubbo":
        raise UnusableProvider(f"{provider.protocol}:// is not Dubbo", malformed=False)
    if provider.param("enabled", "true") == "false":
        raise UnusableProvider("enabled=false", malformed=False)
    if provider.param("category", "providers") != "providers":
        raise UnusableProvider(f"category={provider.param('category')}", malformed=False)
    return provider


def _parameters(query: str) -> dict[str, str]:
    """``a=1&b=2`` as Dubbo's ``URL.valueOf`` reads it: no second decoding, last one wins."""
    parameters: dict[str, str] = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key:
            parameters[key] = value
    return parameters


def service_host(interface: str, group: str = "") -> str:
    """The mesh host of ``interface`` (and ``group``); see the module docstring."""
    host = interface.lower() + (f"-{group.lower()}" if group else "")
    return _NOT_HOST.sub("-", host)


def service_entry_name(host: str) -> str:
    return "zk-" + host.replace(".", "-")[:250]


def is_label(key: str, value: str) -> bool:
    """Kubernetes label syntax (a key's ``prefix/`` is not accepted), both at most 63 long."""
    return (
        len(key) <= 63
        and len(value) <= 63
        and bool(_LABEL_PART.match(key))
        and bool(_LABEL_PART.match(value))
    )


def provider_labels(provider: Provider) -> dict[str, str]:
    """The endpoint labels of ``provider`` (see the module docstring)."""
    labels: dict[str, str] = {}
    for key, raw in provider.parameters.items():
        value = raw.replace(",", "-")
        if value and is_label(key, value):
            labels[key] = value
    app_version = provider.param("aeraki_meta_app_version")
    if app_version and is_label("version", app_version):
        labels["version"] = app_version
    for key, value in provider.parameters.items():
        name = key.removeprefix("metamesh.")
        if name != key and value and is_label(name, value):
            labels[name] = value
    return labels


def _weight(provider: Provider) -> int | None:
    text = provider.param("weight")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _started(provider: Provider) -> tuple[int, str]:
    stamp = provider.param("timestamp") or provider.param("startTime")
    return (int(stamp) if stamp.isdigit() else 0, provider.node)


def _one_per_address(providers: Iterable[Provider]) -> list[Provider]:
    latest: dict[tuple[str, int], Provider] = {}
    for provider in providers:
        key = (provider.address, provider.port)
        if key not in latest or _started(provider) > _started(latest[key]):
            latest[key] = provider
    return sorted(latest.values(), key=lambda p: (p.address, p.port))


def interface_services(
    origin: str,
    interface: str,
    nodes: Sequence[str],
    *,
    namespace: str,
    service_port: int = DEFAULT_SERVICE_PORT,
    known_groups: Iterable[str] = (),
) -> InterfaceServices:
    """The ServiceEntries of ``interface`` given its provider znode names.

    ``origin`` names where they came from (the pseudo-file of every resource and problem).
    ``known_groups``: groups seen before for this interface; each keeps its service, with no
    endpoints, after its last provider left (so routes that name it stay valid). With no group
    known and no provider, the interface still gives its group-less service.
    """
    providers: list[Provider] = []
    skipped: list[Skipped] = []
    for node in sorted(nodes):
        try:
            providers.append(parse_provider(node, interface))
        except UnusableProvider as exc:
            skipped.append(Skipped(node, exc.reason, exc.malformed))
    by_group: dict[str, list[Provider]] = {group: [] for group in known_groups}
    for provider in providers:
        by_group.setdefault(provider.param("group"), []).append(provider)
    if not by_group:
        by_group[""] = []
    result = ResourceSet()
    hosts = []
    for document, group in enumerate(sorted(by_group)):
        host = service_host(interface, group)
        hosts.append(host)
        entry = _service_entry(host, interface, group, by_group[group], namespace, service_port)
        result.items.append(Loaded(entry, Origin(origin, document)))
    return InterfaceServices(
        result, tuple(hosts), frozenset(by_group), len(providers), tuple(skipped)
    )


def _service_entry(
    host: str,
    interface: str,
    group: str,
    providers: list[Provider],
    namespace: str,
    service_port: int,
) -> ServiceEntry:
    endpoints = [
        WorkloadEntry(
            address=p.address,
            ports={PORT_NAME: p.port},
            labels=provider_labels(p),
            weight=_weight(p),
        )
        for p in _one_per_address(providers)
    ]
    annotations = {"metamesh.io/dubbo-interface": interface}
    if group:
        annotations["metamesh.io/dubbo-group"] = group
    return ServiceEntry(
        apiVersion="networking.istio.io/v1beta1",
        kind="ServiceEntry",
        metadata=Metadata(
            name=service_entry_name(host),
            namespace=namespace,
            labels={"registry": "zookeeper"},
            annotations=annotations,
        ),
        spec=ServiceEntrySpec(
            hosts=[host],
            ports=[ServicePort(number=service_port, name=PORT_NAME)],
            # STATIC needs endpoints; with none, NONE (served the same way: an empty cluster)
            resolution="STATIC" if endpoints else "NONE",
            endpoints=endpoints,
        ),
    )
