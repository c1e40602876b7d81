"""Istio's certificate API (``istio.v1.auth.IstioCertificateService/CreateCertificate``).

The same gRPC service istiod's CA serves to Istio's node agents, so a client written for Istio
talks to metamesh's control plane unchanged: ``IstioCertificateRequest{csr = 1,
validity_duration = 3 (seconds), metadata = 4}`` in, ``IstioCertificateResponse{cert_chain =
1}`` out (leaf first, root last). The two messages are built from their descriptor here rather
than generated, since no maintained package ships Istio's protos for Python.

**Who gets which identity (the trust model).** The endpoint is TLS with a server certificate
the CA issues to the control plane itself, so a client that trusts the mesh root knows it talks
to the real CA. A caller is then authenticated in one of two ways, and is issued a certificate
for *that* identity, whatever its CSR says:

* with a certificate it already has (a proxy renewing): the SPIFFE id in it. gRPC's Python
  server can require client certificates or not ask for them, but not ask and accept either,
  so the certificate travels as request metadata (``x-metamesh-cert``, the PEM chain) with
  ``x-metamesh-cert-proof``, an ECDSA signature over the CSR made with that certificate's key:
  the CA checks the chain against its root and the time, then the proof, which only the holder
  of the key can make and which binds it to this one request;
* with a bootstrap token (``authorization: Bearer <token>``, its first CSR): the identity the
  operator bound to that token in the tokens file (:class:`TokenBook`), so whoever can read a
  workload's token file can act as that workload, exactly as with a Kubernetes service
  account token in Istio.

Anything else is ``UNAUTHENTICATED``; a CSR that does not verify is ``INVALID_ARGUMENT``. Each
outcome is counted (:attr:`CertificateService.counts`) and logged with the identity.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

from metamesh.security.ca import DEFAULT_TTL, CertificateAuthority, CsrError
from metamesh.security.spiffe import SpiffeId, identity_of

log = logging.getLogger("metamesh.ca")

SERVICE: Final = "istio.v1.auth.IstioCertificateService"
CERT_HEADER: Final = "x-metamesh-cert"
PROOF_HEADER: Final = "x-metamesh-cert-proof"
METHOD: Final = f"/{SERVICE}/CreateCertificate"
Clock = Callable[[], dt.datetime]


def _message_classes() -> tuple[Any, Any]:
    """IstioCertificateRequest and IstioCertificateResponse, from their descriptor."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")
    except KeyError:
        f = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name="metamesh/istio/security/v1alpha1/ca.proto",
            package="istio.v1.auth",
            syntax="proto3",
            dependency=[struct_pb2.DESCRIPTOR.name],
        )
        request = proto.message_type.add(name="IstioCertificateRequest")
        request.field.add(name="csr", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        request.field.add(
            name="validity_duration", number=3, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL
        )
        request.field.add(
            name="metadata",
            number=4,
            type=f.TYPE_MESSAGE,
            type_name=".google.protobuf.Struct",
            label=f.LABEL_OPTIONAL,
        )
        response = proto.message_type.add(name="IstioCertificateResponse")
        response.field.add(name="cert_chain", number=1, type=f.TYPE_STRING, label=f.LABEL_REPEATED)
        pool.AddSerializedFile(proto.SerializeToString())
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateResponse")
        ),
    )


IstioCertificateRequest, IstioCertificateResponse = _message_classes()


@dataclass(frozen=True)
class TokenBook:
    """Bootstrap tokens and the identity each one stands for.

    File format (YAML): ``tokens: [{token: ..., namespace: ..., serviceAccount: ...}]``.
    """

    identities: Mapping[str, SpiffeId]

    @classmethod
    def load(cls, path: Path, trust_domain: str) -> TokenBook:
        data = yaml.safe_load(path.read_text()) or {}
        identities: dict[str, SpiffeId] = {}
        for i, item in enumerate(data.get("tokens") or []):
            try:
                token, ns, sa = item["token"], item["namespace"], item["serviceAccount"]
            except (TypeError, KeyError) as exc:
                raise ValueError(f"{path}: tokens[{i}]: missing {exc}") from None
            identities[str(token)] = SpiffeId(trust_domain, str(ns), str(sa))
        return cls(identities)

    def identity(self, token: str) -> SpiffeId | None:
        return self.identities.get(token)


class CertificateService:
    """The gRPC handler; add it to a server with :meth:`add_to`."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenBook,
        clock: Clock = lambda: dt.datetime.now(dt.UTC),
        default_ttl: dt.timedelta = DEFAULT_TTL,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.clock = clock
        self.default_ttl = default_ttl
        #: Outcomes: issued_token, issued_cert, unauthenticated, bad_csr.
        self.counts: Counter[str] = Counter()

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.create_certificate,
            request_deserializer=IstioCertificateRequest.FromString,
            response_serializer=IstioCertificateResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"CreateCertificate": handler}),)
        )

    def _caller(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> tuple[SpiffeId | None, str]:
        """Who is asking, and how they proved it ("cert" or "token")."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if CERT_HEADER in metadata and PROOF_HEADER in metadata:
            return self._certificate_holder(
                metadata[CERT_HEADER], metadata[PROOF_HEADER], request.csr.encode()
            ), "cert"
        auth = metadata.get("authorization", "")
        if auth.startswith("Bearer "):
            return self.tokens.identity(auth[len("Bearer ") :].strip()), "token"
        return None, ""

    def _certificate_holder(self, chain_b64: str, proof_b64: str, csr: bytes) -> SpiffeId | None:
        """The identity of a valid mesh certificate whose key signed ``csr``; else None."""
        try:
            chain = x509.load_pem_x509_certificates(base64.b64decode(chain_b64))
            leaf = chain[0]
            store = verification.Store([self.ca.root])
            verifier = (
                verification.PolicyBuilder().store(store).time(self.clock()).build_client_verifier()
            )
            verifier.verify(leaf, chain[1:])
            key = leaf.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return None
            key.verify(base64.b64decode(proof_b64), csr, ec.ECDSA(hashes.SHA256()))
        except (ValueError, IndexError, InvalidSignature, verification.VerificationError):
            return None
        identity = identity_of(leaf)
        if identity is None or identity.trust_domain != self.ca.trust_domain:
            return None
        return identity

    async def create_certificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity, how = self._caller(request, context)
        if identity is None:
            self.counts["unauthenticated"] += 1
            log.warning("certificate request refused: no valid client certificate or token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid certificate or token")
        assert identity is not None
        ttl = self.default_ttl
        if request.validity_duration > 0:
            ttl = dt.timedelta(seconds=request.validity_duration)
        try:
            chain = self.ca.sign(request.csr.encode(), identity, self.clock(), ttl)
        except CsrError as exc:
            self.counts["bad_csr"] += 1
            log.warning("certificate request from %s refused: %s", identity, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.counts[f"issued_{how}"] += 1
        log.info("issued a certificate to %s (%s, %s)", identity, how, ttl)
        return IstioCertificateResponse(cert_chain=chain)


async def request_certificate(
    target: str,
    root_pem: str,
    csr_pem: bytes,
    *,
    token: str | None = None,
    client_chain_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    ttl: dt.timedelta | None = None,
    server_name: str = "localhost",
    timeout: float = 10.0,
) -> list[str]:
    """Ask the CA at ``target`` to sign ``csr_pem``; the PEM chain, leaf first.

    Authenticates with ``client_chain_pem``/``client_key_pem`` (a renewal: the chain, and a
    signature over the CSR made with its key) when given, else with ``token``. The server is
    verified against ``root_pem`` and must be ``server_name``.
    """
    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem.encode())
    options = (("grpc.ssl_target_name_override", server_name),)
    metadata: tuple[tuple[str, str], ...] | None = None
    if client_chain_pem is not None and client_key_pem is not None:
        key = serialization.load_pem_private_key(client_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("only ECDSA keys are supported")
        proof = key.sign(csr_pem, ec.ECDSA(hashes.SHA256()))
        metadata = (
            (CERT_HEADER, base64.b64encode(client_chain_pem).decode()),
            (PROOF_HEADER, base64.b64encode(proof).decode()),
        )
    elif token:
        metadata = (("authorization", f"Bearer {token}"),)
    request = IstioCertificateRequest(
        csr=csr_pem.decode(), validity_duration=int(ttl.total_seconds()) if ttl else 0
    )
    async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=IstioCertificateRequest.SerializeToString,
            response_deserializer=IstioCertificateResponse.FromString,
        )
        response = await call(request, metadata=metadata, timeout=timeout)
    return list(response.cert_chain)


def control_plane_certificate(
    ca: CertificateAuthority, now: dt.datetime, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[bytes, bytes]:
    """(chain PEM without the root, key PEM) the CA issues to the control plane itself
    (``ns/metamesh-system/sa/metamesh-control-plane``), naming ``localhost`` with its loopback
    addresses (127.0.0.1, ::1) and ``hosts`` (addresses become IP SANs, names DNS SANs): what
    proxies dial it by. An unspecified address (``0.0.0.0``, ``::``: listening everywhere) is
    nobody's destination and is left out."""
    import ipaddress

    from metamesh.security.csr import new_key_and_csr

    identity = SpiffeId(ca.trust_domain, "metamesh-system", "metamesh-control-plane")
    pair = new_key_and_csr(identity)
    given = tuple(h for h in hosts if _is_ip(h))
    ips = tuple(
        dict.fromkeys(
            ("127.0.0.1", "::1", *(h for h in given if not ipaddress.ip_address(h).is_unspecified))
        )
    )
    names = tuple(dict.fromkeys(("localhost", *(h for h in hosts if h not in given))))
    chain = ca.sign(pair.csr_pem, identity, now, MAX_SERVER_TTL, names, ips)
    return "".join(chain[:-1]).encode(), pair.key_pem


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_credentials(
    ca: CertificateAuthority,
    now: dt.datetime,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    clock: Clock | None = None,
) -> grpc.ServerCredentials:
    """TLS for the CA's gRPC port with :func:`control_plane_certificate`. Clients are not
    asked for certificates at the TLS layer (see the module docstring for how a certificate
    authenticates a renewal). With ``clock``, the certificate is renewed at half its lifetime:
    grpc asks for it before each handshake (``dynamic_ssl_server_credentials``)."""
    chain_pem, key_pem = control_plane_certificate(ca, now, hosts)
    config = grpc.ssl_server_certificate_configuration([(key_pem, chain_pem)])
    if clock is None:
        return grpc.ssl_server_credentials([(key_pem, chain_pem)], require_client_auth=False)
    renew_at = [now + MAX_SERVER_TTL / 2]

    def fetch() -> Any:
        at = clock()
        if at < renew_at[0]:
            return None  # keep the current one
        chain, key = control_plane_certificate(ca, at, hosts)
        renew_at[0] = at + MAX_SERVER_TTL / 2
        log.info("the control plane's server certificate was renewed (CA port)")
        return grpc.ssl_server_certificate_configuration([(key, chain)])

    return grpc.dynamic_ssl_server_credentials(config, fetch, require_client_authentication=False)


MAX_SERVER_TTL: Final = dt.timedelta(days=7)
