"""The proxy's workload identity at run time: the agent on the control thread, the TLS
contexts on the proxy loop.

``metamesh proxy --ca HOST:PORT ...`` runs an :class:`~metamesh.security.agent.IdentityAgent`
on the control :class:`~metamesh.runtime.loops.LoopThread` (gRPC lives there). The first
certificate becomes the proxy's :class:`~metamesh.runtime.tls.TlsCredentials` before any
listener binds; each renewal is handed to the proxy loop and swapped in there
(:meth:`TlsCredentials.update`), so handshakes never see a half-updated context and
established connections are untouched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from metamesh.runtime.loops import LoopThread, call_on
from metamesh.runtime.tls import TlsCredentials
from metamesh.security.agent import IdentityAgent
from metamesh.security.spiffe import SpiffeId


@dataclass(frozen=True)
class IdentitySettings:
    """Where the CA is and who this proxy is (``metamesh proxy --ca ...``)."""

    ca: str
    root_file: Path
    token_file: Path | None
    namespace: str
    service_account: str
    trust_domain: str = "cluster.local"
    ttl: dt.timedelta = dt.timedelta(hours=24)

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)


class ProxyIdentity:
    """Keeps a proxy's certificate current; see the module docstring."""

    def __init__(self, settings: IdentitySettings, control: LoopThread) -> None:
        self.settings = settings
        self.control = control
        self.credentials: TlsCredentials | None = None
        self.agent: IdentityAgent | None = None

    async def start(self) -> TlsCredentials:
        """Start the agent; the credentials once the first certificate is in (proxy loop)."""
        s = self.settings
        root_pem = s.root_file.read_text()
        token = s.token_file.read_text().strip() if s.token_file is not None else None
        proxy_loop = asyncio.get_running_loop()
        first: asyncio.Future[TlsCredentials] = proxy_loop.create_future()

        async def rotate(pair: tuple[bytes, bytes]) -> None:  # proxy loop
            assert self.credentials is not None
            self.credentials.update(*pair)

        swap = call_on(proxy_loop, rotate)

        def resolve(creds: TlsCredentials) -> None:
            if not first.done():
                first.set_result(creds)

        async def on_certificate(chain_pem: bytes, key_pem: bytes) -> None:  # control loop
            if self.credentials is None:
                creds = TlsCredentials(chain_pem, key_pem, root_pem.encode(), s.trust_domain)
                self.credentials = creds
                proxy_loop.call_soon_threadsafe(resolve, creds)
            else:
                await swap((chain_pem, key_pem))

        async def run_agent() -> None:
            agent = IdentityAgent(
                s.ca, root_pem, s.identity, on_certificate, token=token, ttl=s.ttl
            )
            self.agent = agent
            await agent.run()

        self.control.submit(run_agent())
        return await first

    def stop(self) -> None:
        agent = self.agent
        if agent is not None:
            self.control.call(agent.stop)
