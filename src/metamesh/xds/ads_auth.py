"""Who is on an ADS stream, and which node it may claim to be (the TLS ADS port's rules).

The ADS port of a control plane that is the mesh CA is TLS (:class:`~metamesh.xds.front.
GrpcFront`, the control plane's own certificate). Each stream is then authenticated, before
anything is sent, by :meth:`AdsAuthenticator.authenticate`:

- a client certificate, verified against the mesh root by the TLS handshake, with a SPIFFE id
  of the mesh's trust domain: that identity (a proxy that has its workload certificate);
- else a bootstrap token in the gRPC metadata (``authorization: Bearer <token>``, as for the
  CA): the identity the operator bound to that token (a proxy before its first certificate);
- else the stream is refused ``UNAUTHENTICATED``.

:func:`bind_node` then holds the node to its identity: a node that claims another namespace
or service account than its certificate's (Istio's ``NAMESPACE`` / ``SERVICE_ACCOUNT``
metadata) is refused ``PERMISSION_DENIED``; one that claims none is given its identity's, so
the config it is translated for is always its own workload's (a proxy cannot ask for all
namespaces, or for another workload's inbound side, by leaving them out or naming them).
Labels and addresses stay the node's word: within its own namespace and service account a
proxy may describe its workload, as Istio's agent does.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metamesh.security.spiffe import SpiffeId, identity_of
from metamesh.xds.front import GrpcFront
from metamesh.xds.resources import ProxyNode

TokenLookup = Callable[[str], SpiffeId | None]


def server_context(chain_pem: bytes, key_pem: bytes, root_pem: bytes) -> ssl.SSLContext:
    """The TLS server context of the ADS port: the control plane's certificate; client
    certificates asked for, optional, verified against the mesh root when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=root_pem.decode())
    load_certificate(context, chain_pem, key_pem)
    return context


def load_certificate(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Put ``chain_pem``/``key_pem`` in ``context``: handshakes from now on use it
    (a renewal of the control plane's certificate; established connections keep theirs)."""
    with tempfile.TemporaryDirectory(prefix="metamesh-ads-") as tmp:  # load_cert_chain reads files
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert, chain_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(cert, key)


@dataclass(frozen=True)
class AdsTls:
    """What the TLS ADS port needs: its server context, the mesh's trust domain, the
    bootstrap tokens."""

    context: ssl.SSLContext
    trust_domain: str
    tokens: TokenLookup


class AdsAuthenticator:
    """See the module docstring; ``front`` is the port's :class:`GrpcFront`."""

    def __init__(self, settings: AdsTls, front: GrpcFront) -> None:
        self.settings = settings
        self.front = front

    def authenticate(self, context: Any) -> tuple[SpiffeId | None, str]:
        """(identity, how: "certificate" / "token") or (None, why not)."""
        peer = self.front.peer_of(context.peer())
        if peer is None:
            return None, "did not come through the TLS port"
        if peer.certificate is not None:
            identity = identity_of(peer.certificate)
            if identity is None or identity.trust_domain != self.settings.trust_domain:
                return None, "client certificate without a SPIFFE id of this trust domain"
            return identity, "certificate"
        metadata = dict(context.invocation_metadata() or ())
        auth = metadata.get("authorization", "")
        if not isinstance(auth, str) or not auth.startswith("Bearer "):
            return None, "no client certificate and no bootstrap token"
        identity = self.settings.tokens(auth[len("Bearer ") :].strip())
        if identity is None:
            return None, "unknown bootstrap token"
        return identity, "token"


def bind_node(node: ProxyNode, identity: SpiffeId) -> tuple[ProxyNode, str]:
    """``node`` held to ``identity`` (see the module docstring); "" or why it is refused."""
    if node.namespace is not None and node.namespace != identity.namespace:
        return node, f"claims namespace {node.namespace!r}, authenticated as {identity}"
    if node.service_account is not None and node.service_account != identity.service_account:
        return node, f"claims service account {node.service_account!r}, authenticated as {identity}"
    bound = dataclasses.replace(
        node, namespace=identity.namespace, service_account=identity.service_account
    )
    return bound, ""
