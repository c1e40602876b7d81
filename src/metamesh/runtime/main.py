"""``metamesh proxy``: load a static config and serve it until SIGTERM/SIGINT.

Runs on :func:`~metamesh.runtime.loops.proxy_loop_factory`'s loop (uvloop when installed), as
``up`` and ``proxy --xds`` do. :func:`open_access_log` is the ``--access-log`` of every mode;
``--tracing-*`` traces here as in the other modes (the spans' ``service.name`` is ``metamesh``:
a static proxy has no workload identity).
Exit codes: 0 after a clean drain, 2 for an invalid config (the message names the file,
resource and field), 1 when a listener cannot bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import IO, Any

from metamesh import build_info, logs
from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.proxy.config_yaml import ConfigError, load_snapshot
from metamesh.proxy.filters.rbac import identity_rules_without_tls
from metamesh.runtime.access_log import AccessLogFile, FormatError, compile_format
from metamesh.runtime.fd_limits import process_limits
from metamesh.runtime.identity import IdentitySettings, ProxyIdentity
from metamesh.runtime.loops import LoopThread, loop_name, proxy_loop_factory
from metamesh.runtime.server import ProxyServer
from metamesh.runtime.sidecar import Sidecar, SidecarSettings
from metamesh.runtime.tls import TlsCredentials
from metamesh.runtime.tracing import TracingSettings, enable_tracing
from metamesh.runtime.workers import WorkerSet, WorkerSpec


def open_access_log(
    path: str | None, stack: contextlib.ExitStack, line_format: str | None = None
) -> IO[str] | AccessLogFile | None:
    """``--access-log PATH|-``: a line-buffered-enough file (flushed by the proxy's timer);
    ``--access-log-format``: its lines as that Envoy-style format string (else JSON). Raises
    :class:`~metamesh.runtime.access_log.FormatError` for a format that does not compile."""
    if path is None:
        if line_format is not None:
            raise FormatError("--access-log-format needs --access-log PATH|-")
        return None
    line = None if line_format is None else compile_format(line_format)
    file = _log_file(path, stack)
    return file if line is None else AccessLogFile(file, line)


def _log_file(path: str, stack: contextlib.ExitStack) -> IO[str]:
    if path == "-":
        return sys.stdout
    return stack.enter_context(open(path, "a", buffering=1 << 16))


def load_tls(files: tuple[str, str, str, str] | None) -> TlsCredentials | None:
    """The workload certificate from ``(chain, key, root, trust domain)`` files."""
    if files is None:
        return None
    chain, key, root, trust_domain = files
    with open(chain, "rb") as c, open(key, "rb") as k, open(root, "rb") as r:
        return TlsCredentials(c.read(), k.read(), r.read(), trust_domain)


def run_proxy(
    config: str,
    *,
    admin_port: int | None = 15000,
    access_log: str | None = None,
    drain_timeout: float = 10.0,
    log_level: str = "INFO",
    limits: dict[str, Any] | None = None,
    config_limits: LoadLimits = DEFAULT_LIMITS,
    tls_files: tuple[str, str, str, str] | None = None,
    identity: IdentitySettings | None = None,
    sidecar: SidecarSettings | None = None,
    tracing: TracingSettings | None = None,
    workers: WorkerSpec | None = None,
    access_log_format: str | None = None,
) -> int:
    logs.configure(log_level)
    try:
        snapshot = load_snapshot(config, config_limits)
    except ConfigError as e:
        print(f"metamesh proxy: invalid config:\n{e}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            log_file = open_access_log(access_log, stack, access_log_format)
        except FormatError as e:
            print(f"metamesh proxy: {e}", file=sys.stderr)
            return 2
        server = ProxyServer(
            snapshot,
            admin_port=admin_port,
            access_log=log_file,
            limits=process_limits(**(limits or {})),
            tls=load_tls(tls_files),
            sidecar=Sidecar(sidecar) if sidecar is not None else None,
            workers=WorkerSet(workers) if workers is not None else None,
        )
        if tracing is not None:  # spans flushed by server.close(), after the drain
            enable_tracing(server, tracing)
        with asyncio.Runner(loop_factory=proxy_loop_factory()) as runner:
            control = LoopThread("metamesh-identity") if identity is not None else None
            agent = ProxyIdentity(identity, control) if identity and control else None
            try:
                if agent is not None and control is not None:
                    control.start()  # the certificate from the mesh CA, before any listener
                    server.tls = runner.run(agent.start())
                return _serve(runner, server, drain_timeout)
            finally:
                if agent is not None and control is not None:
                    agent.stop()
                    runner.run(control.stop())


def _serve(runner: asyncio.Runner, server: ProxyServer, drain_timeout: float) -> int:
    try:
        runner.run(server.start())
    except OSError as e:
        print(f"metamesh proxy: cannot listen: {e}", file=sys.stderr)
        runner.run(server.close())
        return 1
    log = logging.getLogger("metamesh.proxy")
    log.info(
        "metamesh proxy, loop %s, %s build", loop_name(runner.get_loop()), build_info.describe()
    )
    build_info.log_pure_build_notice(log)
    captured = server.sidecar is not None and not server.sidecar.binds_listeners
    for name, state in server.core.listeners.items():
        if captured:  # reached by redirect, picked by original destination (docs/sidecar.md)
            cfg = state.config
            log.info("listener %s for %s:%d (intercepted)", name, cfg.address, cfg.port)
        else:
            log.info("listener %s on port %d", name, server.listener_port(name))
        for policy in identity_rules_without_tls(state.config):
            log.warning(
                "listener %s: %s has a source with principals/namespaces, which can never "
                "match on a plaintext listener (give it tls_mode STRICT or PERMISSIVE)",
                name,
                policy,
            )
    if server.bound_admin_port is not None:
        log.info("admin on 127.0.0.1:%d", server.bound_admin_port)
    runner.run(server.serve_forever(drain_timeout))
    return 0
