"""The proxy's identity agent: gets a workload certificate from the mesh CA and keeps it fresh.

It makes a key and a CSR (:mod:`.csr`; the key never leaves the process), asks the CA with
the bootstrap token the first time and with its current certificate afterwards
(:func:`~metamesh.security.cert_service.request_certificate`), hands each new certificate to
``on_certificate`` (the proxy swaps it into its TLS contexts: new handshakes use it,
established connections keep theirs) and sleeps until ``renew_fraction`` of the lifetime has
passed (half, as Istio's agent). A failed request is retried with a capped exponential
back-off while the current certificate stays in use; one that fails past expiry is logged
as such, and once the certificate has expired the agent asks with the bootstrap token again
(an expired certificate authenticates nothing). Time comes from ``clock`` and every wait is
cut short by :meth:`IdentityAgent.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

import grpc
from cryptography import x509

from metamesh.security.cert_service import request_certificate
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId, identity_of

log = logging.getLogger("metamesh.identity")

OnCertificate = Callable[[bytes, bytes], Awaitable[None]]


class IdentityAgent:
    """See the module docstring."""

    def __init__(
        self,
        target: str,
        root_pem: str,
        identity: SpiffeId,
        on_certificate: OnCertificate,
        *,
        token: str | None = None,
        ttl: dt.timedelta = dt.timedelta(hours=24),
        renew_fraction: float = 0.5,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.target = target
        self.root_pem = root_pem
        self.identity = identity
        self.on_certificate = on_certificate
        self.token = token
        self.ttl = ttl
        self.renew_fraction = renew_fraction
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.clock = clock
        self.chain_pem: bytes | None = None
        self.key_pem: bytes | None = None
        self.not_after: dt.datetime | None = None
        self.issued = 0  #: certificates received (1 + rotations)
        self.failures = 0  #: requests that failed (retried)
        self.ready = asyncio.Event()  #: set once the first certificate is in use
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Get, use and renew certificates until :meth:`stop`."""
        failures = 0
        while not self._stopping.is_set():
            try:
                renew_in = await self._renew()
                failures = 0
            except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
                failures += 1
                self.failures += 1
                renew_in = min(self.retry_cap, self.retry_base * 2 ** (failures - 1))
                expired = self.not_after is not None and self.clock() >= self.not_after
                log.error(
                    "certificate for %s: request to %s failed (%s)%s; retrying in %.1fs",
                    self.identity,
                    self.target,
                    exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc,
                    ", and the current one has EXPIRED" if expired else "",
                    renew_in,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, renew_in))

    async def _renew(self) -> float:
        """Request, install; seconds until the next renewal."""
        pair = new_key_and_csr(self.identity)
        asked_at = self.clock()
        expired = self.not_after is not None and asked_at >= self.not_after
        if self.chain_pem is not None and self.key_pem is not None and not expired:
            chain = await request_certificate(
                self.target,
                self.root_pem,
                pair.csr_pem,
                client_chain_pem=self.chain_pem,
                client_key_pem=self.key_pem,
                ttl=self.ttl,
            )
        else:
            chain = await request_certificate(
                self.target, self.root_pem, pair.csr_pem, token=self.token, ttl=self.ttl
            )
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        chain_pem = "".join(chain[:-1]).encode()  # leaf and intermediates; peers hold the root
        await self.on_certificate(chain_pem, pair.key_pem)
        self.chain_pem, self.key_pem = chain_pem, pair.key_pem
        self.not_after = leaf.not_valid_after_utc
        self.issued += 1
        self.ready.set()
        # from when it was asked for: the CA backdates notBefore for clock skew
        end = leaf.not_valid_after_utc
        renew_at = asked_at + (end - asked_at) * self.renew_fraction
        issued_to = identity_of(leaf)
        log.info(
            "certificate for %s in use (#%d), valid until %s, renewal at %s",
            issued_to if issued_to is not None else self.identity,
            self.issued,
            end.isoformat(timespec="seconds"),
            renew_at.isoformat(timespec="seconds"),
        )
        return (renew_at - self.clock()).total_seconds()
