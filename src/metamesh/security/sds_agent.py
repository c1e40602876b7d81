"""``metamesh agent``: the node agent beside a real Envoy, as Istio's pilot-agent.

It makes the workload's key (it never leaves this process), gets the certificate from the
mesh CA with Istio's ``CreateCertificate`` (:class:`~metamesh.security.agent.IdentityAgent`:
bootstrap token first, the certificate itself for renewals, at half the lifetime) and serves
it with the mesh root to the local Envoy over SDS on a Unix socket
(:class:`~metamesh.xds.sds.SdsServer`, secrets ``default`` and ``ROOTCA``). Each renewal is
pushed on Envoy's open SDS streams: new handshakes use the new certificate, established
connections keep theirs.

A command of its own rather than a mode of ``metamesh proxy``: a metamesh proxy takes its
certificate in-process and needs no SDS, while an Envoy sidecar needs nothing else from
metamesh, so the agent runs no proxy loop or listener. It serves only once the first
certificate is in: Envoy connecting earlier would wait on a secret that does not exist. With
``--admin-port`` it serves ``/ready`` (LIVE once SDS is served) and its counters (SDS refusals,
pushes, certificates issued, failed requests, the certificate's expiry) on 127.0.0.1
(:mod:`metamesh.xds.monitoring`), from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from metamesh.security.agent import IdentityAgent
from metamesh.security.spiffe import SpiffeId
from metamesh.xds.monitoring import Monitored, start_monitoring
from metamesh.xds.sds import SdsServer


@dataclass(frozen=True)
class AgentSettings:
    """``metamesh agent --ca ... --sds-socket PATH``."""

    ca: str
    root_file: Path
    token_file: Path | None
    identity: SpiffeId
    socket: Path
    ttl_seconds: float = 86400.0
    #: ``/ready`` and ``/stats/prometheus`` on 127.0.0.1 (None: off; 0: any free port).
    admin_port: int | None = None


async def serve_agent(
    settings: AgentSettings, *, out: TextIO = sys.stdout, stop: asyncio.Event | None = None
) -> int:
    """Run until ``stop`` (or SIGINT/SIGTERM, set by the caller); the exit code."""
    import datetime as dt

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    root_pem = settings.root_file.read_text()
    token = settings.token_file.read_text().strip() if settings.token_file else None
    sds = SdsServer()

    async def on_certificate(chain_pem: bytes, key_pem: bytes) -> None:
        sds.update(chain_pem, key_pem, root_pem.encode())

    agent = IdentityAgent(
        settings.ca,
        root_pem,
        settings.identity,
        on_certificate,
        token=token,
        ttl=dt.timedelta(seconds=settings.ttl_seconds),
    )
    running = asyncio.create_task(agent.run())
    monitoring = None
    if settings.admin_port is not None:
        parts = Monitored(sds=sds, agent=agent, ready=lambda: sds.path is not None)
        monitoring = await start_monitoring(parts, "127.0.0.1", settings.admin_port)
        bound = monitoring.sockets[0].getsockname()[1]
        print(f"metamesh: agent admin on 127.0.0.1:{bound}", file=out, flush=True)
    try:
        waits = {asyncio.create_task(stop.wait()), asyncio.create_task(agent.ready.wait())}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        if stop.is_set():
            return 0
        try:
            await sds.start(settings.socket)
        except OSError as exc:
            print(f"metamesh agent: cannot serve SDS on {settings.socket}: {exc}", file=sys.stderr)
            return 1
        print(
            f"metamesh: agent for {settings.identity}: SDS on unix:{settings.socket} "
            f"(secrets default, ROOTCA), certificates from {settings.ca}",
            file=out,
            flush=True,
        )
        await stop.wait()
    finally:
        agent.stop()
        await asyncio.gather(running, return_exceptions=True)
        await sds.stop(0)
        if monitoring is not None:
            monitoring.close()
    return 0
