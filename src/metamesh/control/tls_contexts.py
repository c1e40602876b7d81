"""Mutual TLS in standard Envoy fields: building them (translate) and reading them (to_proxy).

Both directions use ``envoy.transport_sockets.tls`` so a real Envoy reads the same resources:

- an inbound filter chain that takes mutual TLS has a ``DownstreamTlsContext`` with
  ``require_client_certificate: true``, its certificate from the SDS secret ``default`` and
  the peers' validation from the SDS secret ``ROOTCA`` (Istio's secret names and source: the
  node agent's SDS server, cluster ``sds-grpc``, which ``metamesh agent`` serves for an Envoy;
  a metamesh proxy has its certificate in-process and only checks the names),
  and ``filter_chain_match.transport_protocol: "tls"``. PERMISSIVE is Istio's shape: a second,
  plaintext chain (``transport_protocol: "raw_buffer"``) and the ``tls_inspector`` listener
  filter that tells them apart. metamesh's proxy does not run filter chain matching: it reads
  "a TLS chain and a plaintext chain" as PERMISSIVE and decides per connection from the first
  byte (a TLS handshake record is ``0x16``), which is what the inspector looks at too;
- an upstream cluster with ISTIO_MUTUAL has an ``UpstreamTlsContext`` with the same two SDS
  secrets, the SPIFFE ids the server may present as ``match_typed_subject_alt_names`` (URI),
  Istio's ALPN ``istio-peer-exchange``/``istio`` and an SNI naming the cluster
  (``outbound_.<port>_.<subset>_.<host>``, as Istio spells it); SIMPLE and MUTUAL carry file
  names (``tls_certificates``, ``trusted_ca``), ``sni`` and the SANs to match.

:class:`ClientTls` and :func:`listener_tls_mode` are what the proxy takes from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import json_format

from metamesh.control.model import UpstreamTls

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
WORKLOAD_SECRET = "default"  # Istio's name of the workload certificate's SDS secret
ROOT_SECRET = "ROOTCA"  # and of the mesh root's
SDS_CLUSTER = "sds-grpc"  # Istio's cluster of the node agent's SDS server
ISTIO_ALPN = ("istio-peer-exchange", "istio")
SAN_URI = common_pb2.SubjectAltNameMatcher.URI
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # endpoint metadata Envoy matches on
ISTIO_TLS_MODE = {"tlsMode": "istio"}  # what Istio marks a workload with a sidecar with


class TlsConfigError(ValueError):
    """A TLS setting the metamesh proxy cannot run; the message names the resource."""


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    """Istio's SDS source: the node agent's gRPC server, cluster ``sds-grpc`` (a Unix socket
    the sidecar's bootstrap defines; ``metamesh agent`` serves it)."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    api = source.api_config_source
    api.api_type = config_source_pb2.ApiConfigSource.GRPC
    api.transport_api_version = config_source_pb2.V3
    api.set_node_on_first_message_only = True
    api.grpc_services.add().envoy_grpc.cluster_name = SDS_CLUSTER
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _socket(context: Any) -> base_pb2.TransportSocket:
    socket = base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET)
    socket.typed_config.Pack(context)
    return socket


def _mesh_common(sans: tuple[str, ...]) -> tls_pb2.CommonTlsContext:
    common = tls_pb2.CommonTlsContext(alpn_protocols=list(ISTIO_ALPN))
    common.tls_certificate_sds_secret_configs.append(_sds(WORKLOAD_SECRET))
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()  # required by Envoy, even when empty
    combined.validation_context_sds_secret_config.CopyFrom(_sds(ROOT_SECRET))
    for san in sans:
        combined.default_validation_context.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=SAN_URI, matcher=string_pb2.StringMatcher(exact=san)
            )
        )
    return common


def downstream_mtls_socket() -> base_pb2.TransportSocket:
    """The inbound chain's mutual TLS: workload certificate, client certificate required."""
    context = tls_pb2.DownstreamTlsContext(common_tls_context=_mesh_common(()))
    context.require_client_certificate.value = True
    return _socket(context)


def upstream_tls_socket(tls: UpstreamTls, sni: str) -> base_pb2.TransportSocket | None:
    """The cluster's TLS origination, None for DISABLE."""
    if tls.mode == "DISABLE":
        return None
    if tls.mode == "ISTIO_MUTUAL":
        context = tls_pb2.UpstreamTlsContext(
            common_tls_context=_mesh_common(tls.subject_alt_names), sni=tls.sni or sni
        )
        return _socket(context)
    common = tls_pb2.CommonTlsContext()
    if tls.mode == "MUTUAL":
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
                private_key=base_pb2.DataSource(filename=tls.private_key),
            )
        )
    validation = common.validation_context
    if tls.ca_certificates:
        validation.trusted_ca.filename = tls.ca_certificates
    for san in tls.subject_alt_names:
        validation.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=SAN_URI if "://" in san else common_pb2.SubjectAltNameMatcher.DNS,
                matcher=string_pb2.StringMatcher(exact=san),
            )
        )
    return _socket(tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni))


def add_auto_mtls_matches(cluster: Any, socket: base_pb2.TransportSocket) -> None:
    """Istio's auto mTLS shape: ``tlsMode-istio`` (endpoints marked ``tlsMode: istio``) gets
    ``socket``, ``tlsMode-disabled`` (every other endpoint) plaintext."""
    istio = cluster.transport_socket_matches.add(name="tlsMode-istio")
    istio.match.update(ISTIO_TLS_MODE)
    istio.transport_socket.CopyFrom(socket)
    plain = cluster.transport_socket_matches.add(name="tlsMode-disabled")
    plain.match.SetInParent()
    plain.transport_socket.name = RAW_BUFFER
    plain.transport_socket.typed_config.Pack(raw_buffer_pb2.RawBuffer())


# --- reading them back (the proxy side) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a cluster's ``UpstreamTlsContext`` asks of the proxy."""

    mode: str  # ISTIO_MUTUAL, MUTUAL or SIMPLE
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    #: Only for endpoints whose ``envoy.transport_socket_match`` metadata has these pairs
    #: (a ``transport_socket_matches`` entry); empty: every endpoint.
    endpoint_match: tuple[tuple[str, str], ...] = ()


def _unpack(socket: Any, cls: Any, where: str) -> Any:
    if socket.name != TLS_TRANSPORT_SOCKET and not socket.typed_config.Is(cls.DESCRIPTOR):
        raise TlsConfigError(f"{where}: transport socket {socket.name!r} is not supported")
    context = cls()
    if not socket.typed_config.Unpack(context):
        raise TlsConfigError(
            f"{where}: transport socket config is {socket.typed_config.type_url}, "
            f"expected {cls.DESCRIPTOR.full_name}"
        )
    return context


def _is_sds(configs: Any, name: str) -> bool:
    return any(c.name == name for c in configs)


def _sans(validation: Any) -> tuple[str, ...]:
    typed = [m.matcher.exact for m in validation.match_typed_subject_alt_names if m.matcher.exact]
    return tuple(typed or [m.exact for m in validation.match_subject_alt_names if m.exact])


def client_tls(cluster: Any) -> ClientTls | None:
    """The cluster's TLS origination (None: plaintext): its ``transport_socket``, or the
    first ``transport_socket_matches`` entry with TLS, for the endpoints it matches (the
    metamesh proxy runs one TLS setting per cluster; the other entries must be plaintext)."""
    where = f"Cluster {cluster.name!r}"
    matches = cluster.transport_socket_matches
    matched = [m for m in matches if m.transport_socket.name != RAW_BUFFER]
    if matched:
        if len(matched) > 1 or cluster.HasField("transport_socket"):
            raise TlsConfigError(f"{where}: one TLS transport socket per cluster is supported")
        entry = matched[0]
        pairs = json_format.MessageToDict(entry.match) if entry.HasField("match") else {}
        found = _client_tls(entry.transport_socket, where)
        return replace(found, endpoint_match=tuple(sorted((k, str(v)) for k, v in pairs.items())))
    if not cluster.HasField("transport_socket"):
        return None
    return _client_tls(cluster.transport_socket, where)


def _client_tls(socket: Any, where: str) -> ClientTls:
    context = _unpack(socket, tls_pb2.UpstreamTlsContext, where)
    common = context.common_tls_context
    combined = common.combined_validation_context
    if _is_sds(common.tls_certificate_sds_secret_configs, WORKLOAD_SECRET):
        if combined.validation_context_sds_secret_config.name != ROOT_SECRET:
            raise TlsConfigError(f"{where}: the workload certificate needs the {ROOT_SECRET} root")
        sans = _sans(combined.default_validation_context)
        return ClientTls("ISTIO_MUTUAL", context.sni, sans)
    if common.tls_certificate_sds_secret_configs or common.HasField(
        "validation_context_sds_secret_config"
    ):
        raise TlsConfigError(f"{where}: only the SDS secrets {WORKLOAD_SECRET!r}/{ROOT_SECRET!r}")
    mutual = len(common.tls_certificates) > 0
    chain = common.tls_certificates[0] if mutual else None
    if chain is not None and not (chain.certificate_chain.filename and chain.private_key.filename):
        raise TlsConfigError(f"{where}: a client certificate must be given as files")
    validation = common.validation_context
    return ClientTls(
        "MUTUAL" if mutual else "SIMPLE",
        context.sni,
        _sans(validation),
        chain.certificate_chain.filename if chain is not None else "",
        chain.private_key.filename if chain is not None else "",
        validation.trusted_ca.filename,
    )


def listener_tls_mode(listener: Any, chains: list[Any]) -> str:
    """ "" (plaintext), "STRICT" or "PERMISSIVE" from the chains that carry the MetaProtocol
    filter (see the module docstring)."""
    where = f"Listener {listener.name!r}"
    tls = plain = 0
    for chain in chains:
        if not chain.HasField("transport_socket"):
            plain += 1
            continue
        context = _unpack(chain.transport_socket, tls_pb2.DownstreamTlsContext, where)
        if not context.require_client_certificate.value:
            raise TlsConfigError(f"{where}: only mutual TLS (require_client_certificate) is served")
        if not _is_sds(
            context.common_tls_context.tls_certificate_sds_secret_configs, WORKLOAD_SECRET
        ):
            raise TlsConfigError(f"{where}: the certificate must be the SDS secret 'default'")
        tls += 1
    if not tls:
        return ""
    return "PERMISSIVE" if plain else "STRICT"
