"""The processes that wire sources, the ADS server, the proxy and its xDS client together.

- ``metamesh up DIR`` (:func:`serve_up`): the embedded mesh. A :class:`FileSource` watches
  ``DIR`` and feeds an :class:`AdsServer` on 127.0.0.1; one proxy in the same event loop runs an
  :class:`XdsClient` pointed at it, so even the embedded proxy gets its config over real xDS
  (one code path for both modes). Each MetaProtocol service is served on its ServiceEntry
  address or its allocated 127.240.x.y VIP; what is served is printed at start and whenever it
  changes. With ``--zookeeper``, the Dubbo providers registered there are services too, and
  with ``--kubernetes`` a cluster's resources and Services, beside the directory's
  (:mod:`metamesh.control.sources.merge`).
- ``metamesh control-plane --config-dir DIR`` (:func:`serve_control_plane`): source + server
  (the directory, ``--zookeeper``, ``--kubernetes``, or several).
- ``metamesh proxy --xds HOST:PORT`` (:func:`serve_proxy_xds`): proxy + client, identified by
  node id, namespace and labels.

All three stop cleanly on SIGINT/SIGTERM (or when ``stop`` is set, in tests): the source and
client loops end, the proxy drains, the gRPC server stops.

**Two loops in the proxy modes.** The proxy (``up``, ``proxy --xds``) serves traffic on the main
thread's loop, uvloop when installed, exactly as ``proxy --config`` does, so the deployed modes
run the data plane the benchmarks measure. The control side (xDS client; in ``up`` also the ADS
server and the file source with its parsing and translation) runs on a
:class:`~metamesh.runtime.loops.LoopThread` with asyncio's own loop, and hands each complete,
immutable snapshot to the proxy loop (:func:`~metamesh.runtime.loops.call_on`), waiting until it
is in force before reading the next response. ``control-plane`` alone has no data plane and runs
on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

import grpc

from metamesh import logs
from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.control.model import MeshModel, MeshSettings, with_settings
from metamesh.control.scoped import ScopedTranslator
from metamesh.control.sources import FileSource
from metamesh.control.to_proxy import to_snapshot
from metamesh.proxy.config import Snapshot
from metamesh.proxy.filters.rbac import identity_rules_without_tls
from metamesh.proxy.telemetry import local_workload
from metamesh.runtime.access_log import AccessLogFile
from metamesh.runtime.admin import sources_detail
from metamesh.runtime.fd_limits import process_limits
from metamesh.runtime.identity import IdentitySettings, ProxyIdentity
from metamesh.runtime.loops import LoopThread, call_on, loop_name, proxy_loop_factory
from metamesh.runtime.server import ProxyServer
from metamesh.runtime.sidecar import Sidecar, SidecarSettings
from metamesh.runtime.tls import TlsCredentials
from metamesh.runtime.tracing import TracingSettings, enable_tracing
from metamesh.runtime.workers import WorkerSet, WorkerSpec
from metamesh.runtime.xds_client import XdsClient, XdsTls
from metamesh.runtime.xds_state import resources_to_snapshot
from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import (
    MAX_SERVER_TTL,
    CertificateService,
    TokenBook,
    control_plane_certificate,
    server_credentials,
)
from metamesh.telemetry.aggregator import mesh_dashboard
from metamesh.xds.ads_auth import AdsTls, load_certificate, server_context
from metamesh.xds.monitoring import Monitored, start_monitoring
from metamesh.xds.resources import ProxyNode
from metamesh.xds.server import AdsServer

if TYPE_CHECKING:
    from metamesh.control.sources.kubernetes import KubernetesSettings
    from metamesh.control.sources.merge import MergedSources
    from metamesh.control.sources.zookeeper import ZooKeeperSettings

log = logging.getLogger("metamesh")

SERVER_QUIET = 0.02  # s of quiet before a push (the file watcher already groups edits)
SERVER_MAX_DELAY = 0.25


# --- what the proxy serves -------------------------------------------------------------


def _short_cluster(name: str) -> str:
    parts = name.split("|")
    return (parts[2] or "all") if len(parts) == 4 else name


def serving_lines(snapshot: Snapshot) -> list[str]:
    """One line per listener: service, address:port, protocol, routes (for humans)."""
    rows = []
    for listener in sorted(snapshot.listeners.values(), key=lambda x: (x.address, x.port)):
        service = listener.route_config_name.rpartition("_")[0] or listener.name
        routes = []
        config = snapshot.route_configs.get(listener.route_config_name)
        for route in config.routes if config else ():
            action = route.route
            if action.weighted_clusters:
                total = sum(c.weight for c in action.weighted_clusters) or 1
                dest = ", ".join(
                    f"{_short_cluster(c.name)} {round(100 * c.weight / total)}%"
                    for c in action.weighted_clusters
                )
            else:
                dest = _short_cluster(action.cluster)
            routes.append(f"{route.name or '(unnamed)'} -> {dest}")
        codec = listener.codec.rpartition(".")[2]
        where = f"{listener.address}:{listener.port}"
        rows.append(f"  {service}  {where}  {codec}  {'; '.join(routes) or '(no routes)'}")
    return rows


class ServingPrinter:
    """Prints :func:`serving_lines` when they change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: list[str] | None = None

    def __call__(self, snapshot: Snapshot) -> None:
        lines = serving_lines(snapshot)
        if lines == self.last:
            return
        self.last = lines
        header = f"metamesh: serving {len(lines)} listener(s), config version {snapshot.version}"
        print("\n".join([header, *lines]), file=self.out, flush=True)


# --- building blocks --------------------------------------------------------------------


def _on_signals(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


async def start_control_plane(
    directory: Path | None,
    host: str,
    port: int,
    namespace: str,
    *,
    zookeeper: ZooKeeperSettings | None = None,
    limits: LoadLimits = DEFAULT_LIMITS,
    mesh: MeshSettings | None = None,
    kubernetes: KubernetesSettings | None = None,
    xds_tls: AdsTls | None = None,
) -> tuple[AdsServer, FileSource | MergedSources, int]:
    """The ADS server fed by the directory and, with ``zookeeper``, the Dubbo registry too
    (control/sources/merge.py; its first read is awaited for a bounded time); ``mesh``: the
    root namespace and trust domain the models are translated under."""
    # one translation per proxy scope, reused across models (control/scoped.py)
    ads = AdsServer(ScopedTranslator(), MeshModel(), quiet=SERVER_QUIET, max_delay=SERVER_MAX_DELAY)
    settings = mesh or MeshSettings()

    def on_model(model: MeshModel) -> None:
        ads.set_model(with_settings(model, settings))

    source: FileSource | MergedSources
    if zookeeper is None and kubernetes is None:
        assert directory is not None, "a config directory, a registry, or both"
        source = FileSource(directory, on_model, namespace=namespace, limits=limits)
    else:
        from metamesh.control.sources.merge import MergedSources

        source = MergedSources(
            directory,
            on_model,
            namespace=namespace,
            zookeeper=zookeeper,
            kubernetes=kubernetes,
            limits=limits,
        )
        await source.start()
    if source.load() is not None:
        ads.flush()
    bound = await ads.start(host, port, tls=xds_tls)
    return ads, source, bound


def _watching(
    directory: str | Path | None,
    zookeeper: ZooKeeperSettings | None,
    kubernetes: KubernetesSettings | None = None,
) -> str:
    """What the control plane follows, for its first stdout line."""
    what = [] if directory is None else [str(directory)]
    what += [zookeeper.where] if zookeeper is not None else []
    return " and ".join([*what, *([kubernetes.where] if kubernetes is not None else [])])


async def start_proxy(
    target: str,
    node: ProxyNode,
    admin_port: int | None,
    on_applied: Callable[[Snapshot], None],
    access_log: IO[str] | AccessLogFile | None,
    reconnect_max: float = 1.0,
    limits: dict[str, Any] | None = None,
    tls: TlsCredentials | None = None,
    sidecar: SidecarSettings | None = None,
    tracing: TracingSettings | None = None,
    workers: WorkerSpec | None = None,
) -> tuple[ProxyServer, XdsClient]:
    """The proxy on the running (proxy) loop and its xDS client, to be run on a control loop.

    The client's ``apply`` runs on the proxy loop (see the module docstring): it swaps the
    snapshot in, marks the proxy ready once the first config is in force, and tells
    ``on_applied``.
    """
    proxy = ProxyServer(
        Snapshot(),
        admin_port=admin_port,
        access_log=access_log,
        limits=process_limits(**(limits or {})),
        tls=tls,
        sidecar=Sidecar(sidecar) if sidecar is not None else None,
        workers=WorkerSet(workers) if workers is not None else None,  # started by start()
    )
    proxy.core.stats.local = local_workload(
        node.node_id, node.namespace, node.labels, node.service_account
    )
    if tracing is not None:
        enable_tracing(proxy, tracing)
    await proxy.start()
    proxy.ready = False  # ready once the first config from the control plane is in force
    if proxy.bound_admin_port is not None:  # told to the control plane (its mesh dashboard)
        node = dataclasses.replace(node, admin=f"127.0.0.1:{proxy.bound_admin_port}")

    warned: set[tuple[str, str]] = set()

    async def apply(snapshot: Snapshot) -> None:
        try:
            await proxy.apply_snapshot(snapshot)
        finally:  # a listener that cannot bind is retried; the rest is in force
            if not proxy.draining:
                proxy.ready = True
            on_applied(snapshot)
            warn_identity_rules(snapshot, warned)

    convert = resources_to_snapshot(to_snapshot)
    on_proxy_loop = call_on(asyncio.get_running_loop(), apply)
    client = XdsClient(target, node, convert, on_proxy_loop, backoff_cap=reconnect_max)
    proxy.last_nack = lambda: client.last_nack  # the dashboard's NACK per proxy
    return proxy, client


def warn_identity_rules(snapshot: Snapshot, warned: set[tuple[str, str]]) -> None:
    """The xDS proxy's counterpart of the static proxy's startup warning: a policy with a
    principals/namespaces source on a plaintext listener (an inbound port a PeerAuthentication
    DISABLEs, or the outbound listener of a service without mesh workloads) can never match.
    Logged once per listener and policy (``warned`` remembers them)."""
    for listener in snapshot.listeners.values():
        for policy in identity_rules_without_tls(listener):
            if (listener.name, policy) not in warned:
                warned.add((listener.name, policy))
                log.warning(
                    "listener %s: %s has a source with principals/namespaces, which can never "
                    "match on a plaintext listener (no peer identity is verified there)",
                    listener.name,
                    policy,
                )


def _print_startup(out: TextIO) -> None:
    """Which loop and build serve traffic; on the pure build, once, how to get the native one."""
    print(_startup_line(), file=out, flush=True)
    from metamesh import build_info

    notice = build_info.pure_build_notice()
    if notice is not None:
        print(f"metamesh: {notice}", file=out, flush=True)


def _startup_line() -> str:
    from metamesh import build_info

    return f"metamesh: proxy loop {loop_name()}, {build_info.describe()} build"


async def _stop_proxy_side(
    control: LoopThread,
    client: XdsClient,
    running: list[asyncio.Future[Any]],
    proxy: ProxyServer,
    drain_timeout: float,
) -> None:
    """Stop the control loops' work, drain the proxy, end the control thread."""
    control.call(client.stop)
    await asyncio.gather(*running, return_exceptions=True)
    await proxy.drain(drain_timeout)


# --- the three processes ------------------------------------------------------------------


async def serve_up(
    directory: str | Path,
    *,
    xds_port: int = 0,
    admin_port: int | None = 15000,
    namespace: str = "default",
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    drain_timeout: float = 5.0,
    access_log: IO[str] | AccessLogFile | None = None,
    limits: dict[str, Any] | None = None,
    config_limits: LoadLimits = DEFAULT_LIMITS,
    zookeeper: ZooKeeperSettings | None = None,
    kubernetes: KubernetesSettings | None = None,
    sidecar: SidecarSettings | None = None,
    tracing: TracingSettings | None = None,
    workers: WorkerSpec | None = None,
) -> int:
    """``metamesh up``: the proxy on this loop, the control plane on a thread (module doc)."""
    stop = stop or asyncio.Event()
    remove_signals = _on_signals(stop)
    control = LoopThread("metamesh-control")
    control.start()
    try:
        ads, source, port = await control.run(
            start_control_plane(
                Path(directory),
                "127.0.0.1",
                xds_port,
                namespace,
                zookeeper=zookeeper,
                limits=config_limits,
                kubernetes=kubernetes,
            )
        )
    except BaseException:
        await control.stop()
        remove_signals()
        raise
    watching = _watching(directory, zookeeper, kubernetes)
    print(f"metamesh: control plane (xDS) on 127.0.0.1:{port}, watching {watching}", file=out)
    printer = ServingPrinter(out)
    try:
        proxy, client = await start_proxy(
            f"127.0.0.1:{port}",
            ProxyNode("metamesh-up"),
            admin_port,
            printer,
            access_log,
            limits=limits,
            sidecar=sidecar,
            tracing=tracing,
            workers=workers,
        )
    except OSError as exc:
        print(f"metamesh up: cannot start the proxy: {exc}", file=sys.stderr)
        await control.run(ads.stop(0))
        await control.stop()
        remove_signals()
        return 1
    _print_startup(out)
    if not isinstance(source, FileSource):  # a registry or a cluster: say how it is doing
        proxy.config_sources = source.status
    if proxy.bound_admin_port is not None:
        print(f"metamesh: proxy admin on 127.0.0.1:{proxy.bound_admin_port}", file=out, flush=True)
    running = [
        asyncio.wrap_future(control.submit(source.run())),
        asyncio.wrap_future(control.submit(client.run())),
    ]
    try:
        await stop.wait()
    finally:
        print("metamesh: stopping", file=out, flush=True)
        control.call(source.stop)
        await _stop_proxy_side(control, client, running, proxy, drain_timeout)
        await control.run(ads.stop(0))
        await control.stop()
        remove_signals()
    return 0


async def serve_control_plane(
    directory: str | Path | None,
    *,
    host: str = "127.0.0.1",
    xds_port: int = 15010,
    namespace: str = "default",
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    ca: CaSettings | None = None,
    zookeeper: ZooKeeperSettings | None = None,
    config_limits: LoadLimits = DEFAULT_LIMITS,
    mesh: MeshSettings | None = None,
    kubernetes: KubernetesSettings | None = None,
    admin_port: int | None = None,
) -> int:
    """``metamesh control-plane``: the watched directory (and/or, with ``zookeeper``, the Dubbo
    registry) served over ADS (and, with ``ca``, the mesh CA's certificate API over TLS);
    with ``admin_port``, ``/ready`` and the refusal counters on 127.0.0.1
    (:mod:`metamesh.xds.monitoring`)."""
    stop = stop or asyncio.Event()
    remove_signals = _on_signals(stop)
    path = Path(directory) if directory is not None else None
    xds_tls = ads_tls(ca, host) if ca is not None and ca.xds_tls else None
    ads, source, port = await start_control_plane(
        path,
        host,
        xds_port,
        namespace,
        zookeeper=zookeeper,
        limits=config_limits,
        mesh=mesh,
        kubernetes=kubernetes,
        xds_tls=xds_tls,
    )
    watching = _watching(directory, zookeeper, kubernetes)
    how = " (TLS: workload certificate or bootstrap token)" if xds_tls is not None else ""
    print(f"metamesh: control plane (xDS) on {host}:{port}{how}, watching {watching}", file=out)
    ca_server, certificates = await start_ca(ca, host, out) if ca is not None else (None, None)
    monitoring = None
    if admin_port is not None:
        monitoring = await start_monitoring(
            Monitored(
                ads=ads,
                certificates=certificates,
                dashboard=mesh_dashboard(ads),
                ready_detail=(
                    (lambda: "")
                    if isinstance(source, FileSource)
                    else (lambda: sources_detail(source.status()))
                ),
            ),
            "127.0.0.1",
            admin_port,
        )
        bound = monitoring.sockets[0].getsockname()[1]
        print(f"metamesh: control plane admin on 127.0.0.1:{bound}", file=out)
    out.flush()
    task = asyncio.create_task(source.run())
    renewing = None
    if ca is not None and xds_tls is not None:
        renewing = asyncio.create_task(renew_ads_certificate(ca, host, xds_tls, stop))
    try:
        await stop.wait()
    finally:
        source.stop()
        await asyncio.gather(task, *filter(None, [renewing]), return_exceptions=True)
        await ads.stop(0)
        if ca_server is not None:
            await ca_server.stop(0)
        if monitoring is not None:
            monitoring.close()
        remove_signals()
    return 0


@dataclass(frozen=True)
class CaSettings:
    """``metamesh control-plane --ca-dir DIR ...``: where the root lives, the bootstrap tokens,
    the port of the certificate API."""

    directory: Path
    tokens_file: Path | None
    port: int = 15012
    trust_domain: str = "cluster.local"
    #: ADS over TLS, streams authenticated (docs/security.md); False: plaintext ADS.
    xds_tls: bool = True
    #: More names (DNS or IP) proxies dial the control plane by, for its certificate.
    names: tuple[str, ...] = ()


async def renew_ads_certificate(
    settings: CaSettings, host: str, tls: AdsTls, stop: asyncio.Event
) -> None:
    """Renew the ADS port's server certificate at half its lifetime until ``stop``."""
    every = MAX_SERVER_TTL.total_seconds() / 2
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        now = datetime.datetime.now(datetime.UTC)
        ca = CertificateAuthority.load_or_create(settings.directory, settings.trust_domain, now)
        load_certificate(tls.context, *control_plane_certificate(ca, now, (host, *settings.names)))
        logging.getLogger("metamesh.ca").info("the control plane's server certificate was renewed")


def ads_tls(settings: CaSettings, host: str) -> AdsTls:
    """The TLS ADS port's settings: a server certificate from the CA (naming ``host`` and
    ``settings.names``), the mesh root for client certificates, the bootstrap tokens."""
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.load_or_create(settings.directory, settings.trust_domain, now)
    tokens = (
        TokenBook.load(settings.tokens_file, settings.trust_domain)
        if settings.tokens_file is not None
        else TokenBook({})
    )
    chain, key = control_plane_certificate(ca, now, (host, *settings.names))
    context = server_context(chain, key, ca.root_pem.encode())
    return AdsTls(context, settings.trust_domain, tokens.identity)


async def start_ca(
    settings: CaSettings, host: str, out: TextIO
) -> tuple[grpc.aio.Server, CertificateService]:
    """The CA (root made on first start in ``settings.directory``) serving Istio's
    CreateCertificate over TLS on ``host:settings.port``, and its service (the counters)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.load_or_create(settings.directory, settings.trust_domain, now)
    tokens = (
        TokenBook.load(settings.tokens_file, settings.trust_domain)
        if settings.tokens_file is not None
        else TokenBook({})
    )
    server = grpc.aio.server()
    service = CertificateService(ca, tokens)
    service.add_to(server)
    hosts = (host, *settings.names)
    credentials = server_credentials(
        ca, now, hosts, clock=lambda: datetime.datetime.now(datetime.UTC)
    )
    port = server.add_secure_port(f"{host}:{settings.port}", credentials)
    await server.start()
    root = settings.directory / "root-cert.pem"
    print(
        f"metamesh: CA on {host}:{port} (TLS), trust domain {settings.trust_domain}, root {root}, "
        f"{len(tokens.identities)} bootstrap token(s)",
        file=out,
    )
    return server, service


def proxy_xds_tls(agent: ProxyIdentity) -> XdsTls:
    """ADS over TLS for a proxy with a workload identity: the control plane verified against
    the mesh root; the current certificate (mutual TLS), or the bootstrap token before one."""
    s = agent.settings

    def certificate() -> tuple[bytes, bytes] | None:
        current = agent.agent
        if current is None or current.chain_pem is None or current.key_pem is None:
            return None
        return current.chain_pem, current.key_pem

    token = s.token_file.read_text().strip() if s.token_file is not None else None
    return XdsTls(s.root_file.read_bytes(), certificate, token)


async def serve_proxy_xds(
    target: str,
    node: ProxyNode,
    *,
    admin_port: int | None = 15000,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    drain_timeout: float = 10.0,
    access_log: IO[str] | AccessLogFile | None = None,
    reconnect_max: float = 1.0,
    limits: dict[str, Any] | None = None,
    identity: IdentitySettings | None = None,
    sidecar: SidecarSettings | None = None,
    tracing: TracingSettings | None = None,
    xds_tls: bool | None = None,
    workers: WorkerSpec | None = None,
) -> int:
    """``metamesh proxy --xds``: a proxy configured by the control plane at ``target``; with
    ``identity``, its workload certificate comes from (and is renewed by) the mesh CA first,
    and ADS is TLS authenticated by it (``xds_tls`` None or True; False: plaintext)."""
    stop = stop or asyncio.Event()
    remove_signals = _on_signals(stop)
    control = LoopThread("metamesh-xds")
    control.start()
    agent = ProxyIdentity(identity, control) if identity is not None else None
    try:
        tls = await agent.start() if agent is not None else None
        proxy, client = await start_proxy(
            target,
            node,
            admin_port,
            ServingPrinter(out),
            access_log,
            reconnect_max,
            limits,
            tls,
            sidecar,
            tracing,
            workers,
        )
    except OSError as exc:
        print(f"metamesh proxy: cannot start: {exc}", file=sys.stderr)
        await control.stop()
        remove_signals()
        return 1
    if agent is not None and xds_tls is not False:
        client.tls = proxy_xds_tls(agent)
    _print_startup(out)
    admin = proxy.bound_admin_port
    print(
        f"metamesh: proxy {node.node_id} following {target}, "
        + (f"admin on 127.0.0.1:{admin}" if admin is not None else "no admin"),
        file=out,
        flush=True,
    )
    running = [asyncio.wrap_future(control.submit(client.run()))]
    try:
        await stop.wait()
    finally:
        await _stop_proxy_side(control, client, running, proxy, drain_timeout)
        if agent is not None:
            agent.stop()
        await control.stop()
        remove_signals()
    return 0


def run(main: Coroutine[Any, Any, int], log_level: str = "INFO", *, proxy_loop: bool = True) -> int:
    """Run an async entry point with logging to stderr; its exit code.

    ``proxy_loop``: run on :func:`~metamesh.runtime.loops.proxy_loop_factory`'s loop (uvloop),
    as every mode with a data plane does; ``control-plane`` alone passes False.
    """
    logs.configure(log_level)
    factory = proxy_loop_factory() if proxy_loop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """``app=a,version=v1`` -> sorted pairs; raises ValueError on a malformed item."""
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not key=value")
        pairs.append((key, value))
    return tuple(sorted(pairs))


__all__ = [
    "ServingPrinter",
    "parse_labels",
    "serve_control_plane",
    "serve_proxy_xds",
    "serve_up",
    "serving_lines",
    "start_control_plane",
    "start_proxy",
]
