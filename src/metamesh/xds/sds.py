"""The SDS server of ``metamesh agent``: a workload's certificate for a local Envoy (grpc.aio).

Istio's pilot-agent gives Envoy its identity this way, and so does this: the agent holds the
key it made and the certificate the mesh CA signed for it, and serves them to Envoy as the
secrets ``default`` and ``ROOTCA`` (:mod:`metamesh.xds.sds_state`) over
``envoy.service.secret.v3.SecretDiscoveryService``: ``StreamSecrets`` and ``DeltaSecrets``
(each open stream is pushed the new certificate the moment :meth:`SdsServer.update` is called,
so Envoy rotates without a restart and without closing connections) and ``FetchSecrets``
(one answer, ``NOT_FOUND`` for a name not served).

**Only over a Unix socket.** The secret is a private key: a TCP port, even on 127.0.0.1, is
open to every local user, while the socket is a file made mode 0600 in a directory of the
agent's (shared with Envoy only, as Istio's ``/var/run/secrets/workload-spiffe-uds``).
A socket path that exists and is not a socket is refused. The socket is a
:class:`~metamesh.xds.front.GrpcFront` relaying to the gRPC server on a loopback port, so that
a client that is not gRPC is refused with a counter (``front.refused``) and a log line, and a
connection to that loopback port directly is refused (``not_through_socket``).

Each outcome is counted in :attr:`SdsServer.counts` (``streams``, ``pushes``, ``acks``,
``nacks``, ``unknown_secret``, ``fetches``) and logged: a NACK and a name not served at
WARNING with the client's node id (escaped, bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.secret.v3 import sds_pb2_grpc

from metamesh.xds.front import GrpcFront
from metamesh.xds.sanitize import printable
from metamesh.xds.sds_state import (
    SECRET_TYPE,
    SdsDeltaState,
    SdsStreamState,
    WorkloadSecrets,
)

log = logging.getLogger("metamesh.sds")
State = SdsStreamState | SdsDeltaState


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves one workload's secrets; see the module docstring."""

    def __init__(self) -> None:
        self.secrets: WorkloadSecrets | None = None
        self.counts: Counter[str] = Counter()
        self._streams: dict[State, asyncio.Queue[Any]] = {}
        self._server: grpc.aio.Server | None = None
        self._generation = 0
        self.path: Path | None = None
        self.front: GrpcFront | None = None

    async def start(self, path: Path) -> None:
        """Listen on the Unix socket ``path`` (made mode 0600; a stale socket is replaced)."""
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path}: exists and is not a socket; not replacing it")
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)
        backend = int(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        self._server, self.front = server, GrpcFront("SDS", backend)
        old = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            await self.front.start_unix(path)
        finally:
            os.umask(old)
        self.path = path

    async def stop(self, grace: float = 0.5) -> None:
        if self.front is not None:
            await self.front.stop()
        if self._server is not None:
            await self._server.stop(grace)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def update(self, chain_pem: bytes, key_pem: bytes, root_pem: bytes) -> None:
        """A new certificate: pushed at once on every open stream."""
        self._generation += 1
        self.secrets = WorkloadSecrets(chain_pem, key_pem, root_pem, str(self._generation))
        for state, queue in self._streams.items():
            for response in state.set_secrets(self.secrets):
                self.counts["pushes"] += 1
                queue.put_nowait(response)

    # --- the gRPC methods -------------------------------------------------------------

    async def _admit(self, context: Any) -> None:
        """Only connections made through the socket: the gRPC server's loopback port is not
        an SDS endpoint (see :mod:`metamesh.xds.front`)."""
        if self.front is not None and self.front.peer_of(context.peer()) is None:
            self.counts["not_through_socket"] += 1
            log.warning("SDS: refused %s: not through the socket", printable(context.peer()))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "use the SDS socket")

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        await self._admit(context)
        async for response in self._serve(request_iterator, SdsStreamState()):
            yield response

    async def DeltaSecrets(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        await self._admit(context)
        async for response in self._serve(request_iterator, SdsDeltaState()):
            yield response

    async def FetchSecrets(self, request: Any, context: Any) -> Any:
        await self._admit(context)
        self.counts["fetches"] += 1
        state = SdsStreamState()
        if self.secrets is not None:
            state.set_secrets(self.secrets)
        responses = state.on_request(request)
        self._report_unknown(state, _node(request))
        if not responses or not responses[0].resources:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, "no such secret (served: default, ROOTCA)"
            )
        return responses[0]

    async def _serve(self, requests: AsyncIterator[Any], state: State) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[state] = queue
        self.counts["streams"] += 1
        if self.secrets is not None:
            state.set_secrets(self.secrets)
        reader = asyncio.create_task(self._read(requests, state, queue))
        try:
            while (response := await queue.get()) is not None:
                yield response
        finally:
            del self._streams[state]
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(
        self, requests: AsyncIterator[Any], state: State, queue: asyncio.Queue[Any]
    ) -> None:
        node = "a client"
        try:
            async for request in requests:
                if request.type_url and request.type_url != SECRET_TYPE:
                    self.counts["wrong_type"] += 1
                    what = printable(request.type_url, 128)
                    log.warning("SDS: %s asked for %s; only secrets are served", node, what)
                    break
                node = _node(request, node)
                self._account(request, node)
                for response in state.on_request(request):
                    queue.put_nowait(response)
                self._report_unknown(state, node)
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            queue.put_nowait(None)

    def _account(self, request: Any, node: str) -> None:
        if not request.response_nonce:
            return
        if request.HasField("error_detail"):
            self.counts["nacks"] += 1
            message = printable(request.error_detail.message, 512)
            log.warning("SDS: %s rejected the secrets: %s", node, message)
        else:
            self.counts["acks"] += 1

    def _report_unknown(self, state: State, node: str) -> None:
        for name in sorted(state.unknown):
            self.counts["unknown_secret"] += 1
            log.warning(
                "SDS: %s asked for secret %s; served: default, ROOTCA", node, printable(name, 128)
            )
        state.unknown = frozenset()


def _node(request: Any, default: str = "a client") -> str:
    return printable(request.node.id, 128) if request.HasField("node") else default
