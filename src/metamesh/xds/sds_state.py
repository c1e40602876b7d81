"""The secret discovery protocol (SDS) for one stream, without I/O.

An Envoy sidecar asks a local agent for its certificate by name over
``envoy.service.secret.v3.SecretDiscoveryService``, one stream per secret it uses, state of
the world (``StreamSecrets``) or incremental (``DeltaSecrets``) as its ``api_config_source``
says. The names are Istio's (what its pilot-agent serves and what Istio's generated Envoy
configs ask for): ``default``, the workload's certificate chain and private key
(``tls_certificate``), and ``ROOTCA``, the mesh root to verify peers with
(``validation_context.trusted_ca``). :class:`WorkloadSecrets` builds both from PEM.

The state objects here are fed requests and new secrets and return what to send; the gRPC
adapter (:mod:`metamesh.xds.sds`) only moves messages:

- **State of the world** (:class:`SdsStreamState`): each response carries every subscribed
  secret that exists, with the secrets' version (one number per certificate, bumped on each
  rotation) and a fresh nonce. A request answering the last nonce ACKs (or NACKs, with
  ``error_detail``: counted, kept, not resent until the secrets change); a stale nonce is
  ignored; a request whose names changed is answered at once.
- **Delta** (:class:`SdsDeltaState`): a secret's version is a hash of its content
  (:func:`~metamesh.xds.delta.resource_version`), so a rotation resends ``default`` and not
  the unchanged ``ROOTCA``; a secret is sent when the version the client holds (sent, or
  declared in ``initial_resource_versions``) differs from the current one; an
  unsubscribed name is forgotten; a subscribed name that is not served is listed in
  ``removed_resources`` once, the protocol's "does not exist".
- A name other than ``default`` / ``ROOTCA`` is never served and is reported through
  ``unknown`` (the adapter counts and logs it): Envoy then waits on it until its initial fetch
  timeout, as it would with Istio's agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from metamesh.xds.delta import resource_version
from metamesh.xds.sanitize import MAX_ERROR_DETAIL, bounded

SECRET_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DEFAULT_SECRET: Final = "default"
ROOT_SECRET: Final = "ROOTCA"
SERVED: Final = frozenset({DEFAULT_SECRET, ROOT_SECRET})
MAX_IN_FLIGHT: Final = 16  #: delta responses not yet answered that are remembered


@dataclass(frozen=True, slots=True)
class WorkloadSecrets:
    """The workload's certificate (``chain_pem``: leaf first, no root), key and mesh root;
    ``version`` changes with every certificate."""

    chain_pem: bytes
    key_pem: bytes
    root_pem: bytes
    version: str

    def messages(self) -> dict[str, Any]:
        """``{name: Secret}`` for ``default`` and ``ROOTCA``."""
        certificate = common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=self.chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=self.key_pem),
        )
        root = common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=self.root_pem)
        )
        return {
            DEFAULT_SECRET: secret_pb2.Secret(name=DEFAULT_SECRET, tls_certificate=certificate),
            ROOT_SECRET: secret_pb2.Secret(name=ROOT_SECRET, validation_context=root),
        }


def _pack(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(slots=True, eq=False)
class SdsStreamState:
    """One ``StreamSecrets`` stream (see the module docstring)."""

    secrets: WorkloadSecrets | None = None
    names: frozenset[str] = frozenset()
    subscribed: bool = False
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nack_error: str = ""
    unknown: frozenset[str] = frozenset()
    _nonce: int = 0

    def set_secrets(self, secrets: WorkloadSecrets) -> list[Any]:
        self.secrets = secrets
        if not self.subscribed or secrets.version == self.sent_version:
            return []
        return self._respond()

    def on_request(self, request: Any) -> list[Any]:
        if request.response_nonce:
            if request.response_nonce != self.sent_nonce:
                return []  # answers a superseded response
            if request.HasField("error_detail"):
                self.nack_error = bounded(request.error_detail.message, MAX_ERROR_DETAIL)
            else:
                self.acked_version, self.nack_error = request.version_info, ""
        names = frozenset(request.resource_names)
        if self.subscribed and names == self.names:
            return []
        self.subscribed, self.names = True, names
        self.unknown = names - SERVED
        return self._respond()

    def _respond(self) -> list[Any]:
        if self.secrets is None:
            return []
        table = self.secrets.messages()
        self._nonce += 1
        self.sent_version, self.sent_nonce = self.secrets.version, str(self._nonce)
        response = discovery_pb2.DiscoveryResponse(
            version_info=self.sent_version, type_url=SECRET_TYPE, nonce=self.sent_nonce
        )
        response.resources.extend(_pack(table[n]) for n in sorted(self.names & table.keys()))
        return [response]


@dataclass(slots=True, eq=False)
class SdsDeltaState:
    """One ``DeltaSecrets`` stream (see the module docstring)."""

    secrets: WorkloadSecrets | None = None
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  #: name -> version the client holds
    acked_version: str = ""
    nack_error: str = ""
    unknown: frozenset[str] = frozenset()
    _nonce: int = 0
    _in_flight: dict[str, str] = field(default_factory=dict)  #: nonce -> system version

    def set_secrets(self, secrets: WorkloadSecrets) -> list[Any]:
        self.secrets = secrets
        return self._respond(force=False)

    def on_request(self, request: Any) -> list[Any]:
        version = self._in_flight.pop(request.response_nonce, None)
        if version is not None:
            if request.HasField("error_detail"):
                self.nack_error = bounded(request.error_detail.message, MAX_ERROR_DETAIL)
            else:
                self.acked_version, self.nack_error = version, ""
        first = not self.names and not self.known
        self.known.update(_versions(request.initial_resource_versions))
        added = set(request.resource_names_subscribe) - self.names
        self.names |= added
        for name in request.resource_names_unsubscribe:
            self.names.discard(name)
            self.known.pop(name, None)
        self.unknown = frozenset(self.names - SERVED)
        return self._respond(force=first or bool(added))

    def _respond(self, *, force: bool) -> list[Any]:
        if self.secrets is None:
            return []
        table = self.secrets.messages()
        versions = {name: resource_version(message) for name, message in table.items()}
        send = sorted(n for n in self.names & table.keys() if self.known.get(n) != versions[n])
        absent = sorted(n for n in self.names - table.keys() if n not in self.known)
        if not send and not absent and not force:
            return []
        self._nonce += 1
        nonce, version = str(self._nonce), self.secrets.version
        self._in_flight[nonce] = version
        while len(self._in_flight) > MAX_IN_FLIGHT:  # a client that never answers
            del self._in_flight[next(iter(self._in_flight))]
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=SECRET_TYPE, nonce=nonce
        )
        for name in send:
            response.resources.add(name=name, version=versions[name], resource=_pack(table[name]))
            self.known[name] = versions[name]
        for name in absent:
            response.removed_resources.append(name)
            self.known[name] = ""
        return [response]


def _versions(initial: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in initial.items()}
