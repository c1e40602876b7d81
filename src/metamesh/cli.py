"""The ``metamesh`` command line.

Each subcommand lives in its own small function and imports what it needs lazily, so
``metamesh --help`` stays instant and a subcommand's dependencies are only loaded when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from metamesh import __version__, build_info

if TYPE_CHECKING:
    import contextlib

    from metamesh.api.limits import LoadLimits
    from metamesh.control.embedded import CaSettings
    from metamesh.control.model import MeshSettings
    from metamesh.control.sources.kubernetes import KubernetesSettings
    from metamesh.control.sources.zookeeper import ZooKeeperSettings
    from metamesh.runtime.access_log import AccessLogFile
    from metamesh.runtime.identity import IdentitySettings
    from metamesh.runtime.intercept import InterceptSettings
    from metamesh.runtime.sidecar import SidecarSettings
    from metamesh.runtime.tracing import TracingSettings
    from metamesh.runtime.workers import WorkerSpec


def _cmd_demo(args: argparse.Namespace) -> int:
    from metamesh.demo import run_demo, run_live

    if args.codecs:
        return run_demo(out=sys.stdout)
    return run_live(
        step_seconds=args.step_seconds, keep_running=args.keep_running, admin_port=args.admin_port
    )


def _cmd_demo_backends(args: argparse.Namespace) -> int:
    from metamesh.demo import missing_libraries

    if problem := missing_libraries():
        print(f"metamesh demo backends: {problem}", file=sys.stderr)
        return 1
    from metamesh.demo.backends import run_backends

    return run_backends(args.directory)


def _cmd_demo_client(args: argparse.Namespace) -> int:
    from metamesh.demo import missing_libraries

    if problem := missing_libraries():
        print(f"metamesh demo client: {problem}", file=sys.stderr)
        return 1
    from metamesh.demo.client import run_client

    return run_client(args.protocol, args.directory, args.count, args.wait)


def _cmd_codecs(args: argparse.Namespace) -> int:
    from metamesh.codecs import available_codecs

    for name in available_codecs():
        print(name)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from metamesh.api.validate import report

    code = report(
        args.paths,
        sys.stdout,
        default_namespace=args.namespace,
        strict=args.strict,
        limits=_config_limits(args),
    )
    if args.data_plane == "envoy":  # what Envoy nodes cannot be given (docs/envoy.md)
        from metamesh.control.envoy.validate import envoy_report

        strict, limits = args.strict, _config_limits(args)
        found = envoy_report(args.paths, sys.stdout, args.namespace, strict=strict, limits=limits)
        code = max(code, found)
    return code


def _config_limits(args: argparse.Namespace) -> LoadLimits:
    """What loading a config may cost (api/limits.py), from the ``--max-config-*`` options."""
    from metamesh.api.limits import LoadLimits

    for option in ("max_config_file_mib", "max_config_documents", "max_config_resources"):
        if getattr(args, option) < 1:
            raise SystemExit(f"metamesh: --{option.replace('_', '-')} must be at least 1")
    if args.yaml_alias_ratio < 1:
        raise SystemExit("metamesh: --yaml-alias-ratio must be at least 1")
    return LoadLimits(
        max_file_bytes=args.max_config_file_mib * 1024 * 1024,
        max_documents=args.max_config_documents,
        max_resources=args.max_config_resources,
        alias_ratio=args.yaml_alias_ratio,
    )


def _add_config_limit_options(parser: argparse.ArgumentParser) -> None:
    from metamesh.api.limits import DEFAULT_LIMITS as limits

    group = parser.add_argument_group(
        "config limits", "what loading the config may cost (docs/operations.md)"
    )
    group.add_argument(
        "--max-config-file-mib",
        type=int,
        default=limits.max_file_bytes // (1024 * 1024),
        metavar="MIB",
        help="a larger config file is refused, not read",
    )
    group.add_argument(
        "--max-config-documents",
        type=int,
        default=limits.max_documents,
        metavar="N",
        help="YAML documents per file",
    )
    group.add_argument(
        "--max-config-resources",
        type=int,
        default=limits.max_resources,
        metavar="N",
        help="metamesh resources per load; past it the whole load is refused and the last "
        "good config stays",
    )
    group.add_argument(
        "--yaml-alias-ratio",
        type=int,
        default=limits.alias_ratio,
        metavar="N",
        help="a YAML document may expand (aliases) to N times its own nodes",
    )


def _limits(args: argparse.Namespace) -> dict[str, object]:
    """The client connection limits of ``proxy`` and ``up`` (runtime/fd_limits.py)."""
    return {
        "idle_timeout": args.idle_timeout,
        "frame_timeout": args.frame_timeout,
        "max_connections": args.max_connections,
        "unread_timeout": args.unread_timeout,
        "max_unread_bytes": args.max_unread_bytes,
    }


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="close a client with nothing in flight this long, for listeners that set no "
        "idle_timeout of their own (0: never)",
    )
    parser.add_argument(
        "--frame-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a client whose started frame is not complete this long (0: off)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="client connections held at once; at the cap a new client replaces the one idle "
        "longest (default: the open-file limit less a reserve; 0: no cap)",
    )
    parser.add_argument(
        "--unread-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close a client that leaves its replies unread (its reads paused) this long (0: off)",
    )
    parser.add_argument(
        "--max-unread-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="N",
        help="close a client whose reads are paused when its unread replies would pass N bytes "
        "(0: off)",
    )


def _cmd_proxy(args: argparse.Namespace) -> int:
    if args.xds is not None:
        return _proxy_xds(args)
    if args.config is None:
        print("metamesh proxy: give --config FILE or --xds HOST:PORT", file=sys.stderr)
        return 2
    from metamesh.runtime.main import run_proxy

    return run_proxy(
        args.config,
        admin_port=None if args.admin_port < 0 else args.admin_port,
        access_log=args.access_log,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
        limits=_limits(args),
        config_limits=_config_limits(args),
        tls_files=_tls_files(args),
        identity=_identity(args),
        sidecar=_sidecar(args),
        tracing=_tracing(args),
        workers=_workers(args, "proxy"),
        access_log_format=args.access_log_format,
    )


def _workers(args: argparse.Namespace, command: str) -> WorkerSpec | None:
    """``--workers N`` (docs/workers.md): None for one process."""
    from metamesh.runtime.workers import WorkerSpec

    if args.workers < 1:
        raise SystemExit(f"metamesh {command}: --workers must be at least 1")
    if args.workers == 1:
        return None
    if args.intercept or args.dns:
        raise SystemExit(f"metamesh {command}: --workers cannot be combined with --intercept/--dns")
    return WorkerSpec(
        count=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
        limits=_limits(args),
        tls_files=_tls_files(args) if hasattr(args, "tls_cert") else None,
        tracing=_tracing(args),
        drain_timeout=args.drain_timeout,
        accept=args.worker_accept,
        access_log_format=args.access_log_format,
        identity=_identity(args) if hasattr(args, "ca") else None,
    )


def _add_workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="proxy processes sharing every listener (SO_REUSEPORT); raise it when one core "
        "is saturated, up to the cores available (docs/workers.md)",
    )
    parser.add_argument(
        "--worker-accept",
        choices=("reuseport", "handover"),
        default="reuseport",
        help="with --workers: each worker binds every listener (reuseport), or the first "
        "accepts and hands connections out round robin (handover)",
    )


def _sidecar(args: argparse.Namespace) -> SidecarSettings | None:
    """``--intercept`` / ``--dns`` and their options (docs/sidecar.md); None: neither."""
    from metamesh.runtime.sidecar import SidecarSettings

    dns = args.intercept if args.dns is None else args.dns
    if not args.intercept and not dns:
        return None
    upstreams = None
    if args.dns_upstream:
        upstreams = tuple(_host_port(x, 53, "--dns-upstream") for x in args.dns_upstream)
    targets = [getattr(args, "xds", None), getattr(args, "ca", None)]
    return SidecarSettings(
        intercept=_intercept_settings(args, targets) if args.intercept else None,
        dns_port=args.dns_port if dns else None,
        dns_upstreams=upstreams,
        namespace=getattr(args, "namespace", None),
        rules=args.intercept_rules,
    )


def _host_port(text: str, default: int, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:  # no port, or a bare IPv6 address
        return text.strip("[]"), default
    if not port.isdigit():
        raise SystemExit(f"metamesh: {option} {text!r}: {port!r} is not a port")
    return host.strip("[]"), int(port)


def _intercept_settings(
    args: argparse.Namespace, dialled: Sequence[str | None] = ()
) -> InterceptSettings:
    """The rules' settings; ``dialled``: HOST:PORTs the proxy itself connects to (``--xds``,
    ``--ca``), left alone by the rules when HOST is an IPv4 address."""
    from metamesh.runtime.intercept import InterceptSettings, exclusion_for, parse_exclusion

    try:
        excluded = [parse_exclusion(x) for x in args.intercept_exclude or ()]
        inbound_ports = tuple(
            int(x) for x in args.intercept_exclude_inbound_ports.split(",") if x.strip()
        )
    except ValueError as e:
        raise SystemExit(f"metamesh: --intercept-exclude: {e}") from None
    excluded += [x for x in map(exclusion_for, filter(None, dialled)) if x is not None]
    return InterceptSettings(
        outbound_port=args.intercept_outbound_port,
        inbound_port=max(args.intercept_inbound_port, 0),
        dns_port=args.dns_port if args.dns is not False else None,
        exclude_outbound=tuple(dict.fromkeys(excluded)),
        exclude_inbound_ports=inbound_ports,
        inbound=args.intercept_inbound_port >= 0,
        exclude_uid=args.intercept_exclude_uid,
        allow_any=args.outbound_traffic_policy == "ALLOW_ANY",
    )


def _add_intercept_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("interception rules (docs/sidecar.md)")
    group.add_argument(
        "--intercept-outbound-port",
        type=int,
        default=15001,
        metavar="PORT",
        help="where the workload's outbound TCP is redirected (on 127.0.0.1)",
    )
    group.add_argument(
        "--intercept-inbound-port",
        type=int,
        default=15006,
        metavar="PORT",
        help="where inbound TCP is redirected (-1: inbound traffic is not captured)",
    )
    group.add_argument(
        "--intercept-exclude",
        action="append",
        metavar="ADDRESS[/LEN][:PORT]",
        help="an outbound destination never redirected, repeatable (default: none; the --xds "
        "and --ca addresses are always added when they are IPv4 addresses)",
    )
    group.add_argument(
        "--intercept-exclude-inbound-ports",
        default="",
        metavar="PORT,PORT",
        help="inbound ports reached directly, not through the proxy (ssh...)",
    )
    group.add_argument(
        "--intercept-exclude-uid",
        type=int,
        metavar="UID",
        help="also leave this user's traffic alone (Istio's rule; the proxy's own sockets are "
        "told apart by their mark)",
    )
    group.add_argument(
        "--dns-port",
        type=int,
        default=15053,
        metavar="PORT",
        help="the DNS responder's port on 127.0.0.1 (UDP and TCP)",
    )


def _add_access_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--access-log-format",
        metavar="FORMAT",
        help="write access log lines in this Envoy-style format instead of JSON, e.g. "
        "'%%START_TIME%% %%META(method)%% %%RESPONSE_CODE%% %%DURATION%% %%UPSTREAM_HOST%%' "
        "(operators: docs/telemetry.md)",
    )


def _access_log(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> IO[str] | AccessLogFile | None:
    """``--access-log`` (and ``--access-log-format``) of ``up`` and ``proxy --xds``."""
    from metamesh.runtime.access_log import FormatError
    from metamesh.runtime.main import open_access_log

    try:
        return open_access_log(args.access_log, stack, args.access_log_format)
    except FormatError as e:
        print(f"metamesh {args.command}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _add_tracing_options(parser: argparse.ArgumentParser) -> None:
    """``--tracing-*``: spans exported over OTLP (docs/telemetry.md, Tracing)."""
    parser.add_argument(
        "--tracing-endpoint",
        metavar="HOST:PORT",
        help="trace requests and export the spans to this OTLP receiver (default: no tracing)",
    )
    parser.add_argument(
        "--tracing-protocol",
        choices=("grpc", "http"),
        default="http",
        help="OTLP transport: http (protobuf POST /v1/traces, OpenTelemetry's default; "
        "receivers listen on 4318) or grpc (4317); default: http",
    )
    parser.add_argument(
        "--tracing-sample-rate",
        type=float,
        default=0.01,
        metavar="R",
        help="share of requests without a sampling decision that are traced, 0..1",
    )
    parser.add_argument(
        "--tracing-errors",
        action="store_true",
        help="also export the span of every request that ends in an error",
    )


def _tracing(args: argparse.Namespace) -> TracingSettings | None:
    from metamesh.runtime.tracing import TracingSettings

    if args.tracing_endpoint is None:
        return None
    if not 0.0 <= args.tracing_sample_rate <= 1.0:
        raise SystemExit(f"metamesh: --tracing-sample-rate {args.tracing_sample_rate}: 0..1")
    from metamesh.runtime.otlp import TracingUnavailable, check_otlp_protos

    try:
        check_otlp_protos()  # a broken install is said at start, not as a traceback later
    except TracingUnavailable as e:
        raise SystemExit(f"metamesh: {e}") from None
    return TracingSettings(
        args.tracing_endpoint, args.tracing_protocol, args.tracing_sample_rate, args.tracing_errors
    )


def _add_sidecar_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transparent sidecar (docs/sidecar.md)")
    group.add_argument(
        "--intercept",
        action="store_true",
        help="install nftables rules in this network namespace that send the workload's "
        "traffic through the proxy (removed on exit); listeners are picked by original "
        "destination",
    )
    group.add_argument(
        "--intercept-rules",
        choices=("own", "external"),
        default="own",
        help="own: install the rules at start and remove them at exit; external: they were "
        "installed by 'metamesh intercept' (a pod's init step) and are left alone",
    )
    group.add_argument(
        "--outbound-traffic-policy",
        choices=("ALLOW_ANY", "REGISTRY_ONLY"),
        default="ALLOW_ANY",
        help="a connection to no mesh service: relayed as plain TCP, or closed",
    )
    group.add_argument(
        "--dns",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer mesh host names with their VIPs on 127.0.0.1:--dns-port, forwarding the "
        "rest (default: with --intercept)",
    )
    group.add_argument(
        "--dns-upstream",
        action="append",
        metavar="HOST[:PORT]",
        help="where other names go, repeatable (default: the nameservers of /etc/resolv.conf)",
    )
    _add_intercept_options(parser)


def _cmd_intercept(args: argparse.Namespace) -> int:
    from metamesh.runtime import intercept

    if args.cleanup:
        try:
            removed = intercept.remove()
        except intercept.InterceptError as e:
            print(f"metamesh intercept: {e}", file=sys.stderr)
            return 1
        table = f"table {intercept.FAMILY} {intercept.TABLE}"
        print(f"metamesh intercept: {table} " + ("removed" if removed else "was not there"))
        return 0
    settings = _intercept_settings(args)
    if args.print:
        sys.stdout.write(intercept.render_rules(settings))
        return 0
    try:
        intercept.install(settings)
    except intercept.InterceptError as e:
        print(f"metamesh intercept: {e}", file=sys.stderr)
        return 1
    print(f"metamesh intercept: table {intercept.FAMILY} {intercept.TABLE} installed")
    return 0


def _identity(args: argparse.Namespace) -> IdentitySettings | None:
    """``--ca HOST:PORT --ca-root FILE [--ca-token-file FILE] --service-account SA``."""
    if args.ca is None:
        return None
    if args.tls_cert:
        raise SystemExit("metamesh proxy: give --ca or --tls-cert/--tls-key/--tls-root, not both")
    if args.ca_root is None:
        raise SystemExit("metamesh proxy: --ca needs --ca-root FILE (the mesh root to trust)")
    import datetime
    from pathlib import Path

    from metamesh.runtime.identity import IdentitySettings

    return IdentitySettings(
        ca=args.ca,
        root_file=Path(args.ca_root),
        token_file=Path(args.ca_token_file) if args.ca_token_file else None,
        namespace=args.namespace or "default",
        service_account=args.service_account,
        trust_domain=args.trust_domain,
        ttl=datetime.timedelta(seconds=args.cert_ttl),
    )


def _tls_files(args: argparse.Namespace) -> tuple[str, str, str, str] | None:
    """``--tls-cert/--tls-key/--tls-root`` (all or none) and the trust domain."""
    given = (args.tls_cert, args.tls_key, args.tls_root)
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("metamesh proxy: --tls-cert, --tls-key and --tls-root go together")
    return (args.tls_cert, args.tls_key, args.tls_root, args.trust_domain)


def _proxy_xds(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from metamesh.control.embedded import parse_labels, run, serve_proxy_xds
    from metamesh.xds.resources import ProxyNode

    if args.xds_tls and args.ca is None:
        print("metamesh proxy: --xds-tls needs --ca (its certificate and root)", file=sys.stderr)
        return 2
    try:
        labels = parse_labels(args.labels)
    except ValueError as e:
        print(f"metamesh proxy: --labels: {e}", file=sys.stderr)
        return 2
    node = ProxyNode(
        args.node_id or f"metamesh-{os.getpid()}",
        args.namespace,
        labels,
        service_account=args.service_account,
        instance_ips=tuple(x.strip() for x in args.instance_ips.split(",") if x.strip()),
        outbound=not args.no_outbound,
    )
    admin = None if args.admin_port < 0 else args.admin_port
    with contextlib.ExitStack() as stack:
        main = serve_proxy_xds(
            args.xds,
            node,
            admin_port=admin,
            drain_timeout=args.drain_timeout,
            access_log=_access_log(args, stack),
            reconnect_max=args.xds_reconnect_max,
            limits=_limits(args),
            identity=_identity(args),
            sidecar=_sidecar(args),
            tracing=_tracing(args),
            xds_tls=args.xds_tls,
            workers=_workers(args, "proxy"),
        )
        return run(main, args.log_level)


def _config_dir_missing(command: str, directory: str) -> bool:
    """Say so (one line, no traceback) when ``directory`` is not a directory."""
    from metamesh.control.sources import ConfigDirectoryError, config_directory

    try:
        config_directory(directory)
    except ConfigDirectoryError as e:
        print(f"metamesh {command}: {e}", file=sys.stderr)
        return True
    return False


def _cmd_up(args: argparse.Namespace) -> int:
    import contextlib

    from metamesh.control.embedded import run, serve_up

    if _config_dir_missing("up", args.directory):
        return 2

    admin = None if args.admin_port < 0 else args.admin_port
    with contextlib.ExitStack() as stack:
        main = serve_up(
            args.directory,
            xds_port=args.xds_port,
            admin_port=admin,
            namespace=args.namespace,
            drain_timeout=args.drain_timeout,
            limits=_limits(args),
            config_limits=_config_limits(args),
            access_log=_access_log(args, stack),
            zookeeper=_zookeeper(args),
            kubernetes=_kubernetes(args),
            sidecar=_sidecar(args),
            tracing=_tracing(args),
            workers=_workers(args, "up"),
        )
        return run(main, args.log_level)


def _cmd_control_plane(args: argparse.Namespace) -> int:
    from metamesh.control.embedded import run, serve_control_plane

    if args.config_dir is None and args.zookeeper is None and not args.kubernetes:
        print(
            "metamesh control-plane: give --config-dir DIR, --zookeeper HOST:PORT, "
            "--kubernetes, or several",
            file=sys.stderr,
        )
        return 2
    if args.config_dir is not None and _config_dir_missing("control-plane", args.config_dir):
        return 2

    main = serve_control_plane(
        args.config_dir,
        host=args.xds_address,
        xds_port=args.xds_port,
        namespace=args.namespace,
        ca=_ca_settings(args),
        zookeeper=_zookeeper(args),
        config_limits=_config_limits(args),
        mesh=_mesh_settings(args),
        kubernetes=_kubernetes(args),
        admin_port=None if args.admin_port < 0 else args.admin_port,
    )
    return run(main, args.log_level, proxy_loop=False)


def _mesh_settings(args: argparse.Namespace) -> MeshSettings:
    from metamesh.control.model import MeshSettings

    return MeshSettings(root_namespace=args.root_namespace, trust_domain=args.trust_domain)


def _zookeeper(args: argparse.Namespace) -> ZooKeeperSettings | None:
    """``--zookeeper HOST:PORT[,...] --zk-root PATH --zk-service-port N`` (up, control-plane)."""
    if args.zookeeper is None:
        return None
    from metamesh.control.sources.zookeeper import ZooKeeperSettings

    try:
        return ZooKeeperSettings(args.zookeeper, args.zk_root, args.zk_service_port)
    except ValueError as e:
        print(f"metamesh {args.command}: --zookeeper: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _add_zookeeper_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Dubbo services from a ZooKeeper registry (docs/zookeeper.md)"
    )
    group.add_argument(
        "--zookeeper",
        metavar="HOST:PORT[,...]",
        help="watch the Dubbo providers registered in this ZooKeeper (default: none)",
    )
    group.add_argument("--zk-root", default="/dubbo", metavar="PATH", help="Dubbo's registry root")
    group.add_argument(
        "--zk-service-port",
        type=int,
        default=20880,
        metavar="PORT",
        help="the port each ZooKeeper service listens on, at its allocated address",
    )


def _kubernetes(args: argparse.Namespace) -> KubernetesSettings | None:
    """``--kubernetes [--kubeconfig F | --in-cluster]`` (up, control-plane)."""
    if not args.kubernetes:
        if args.kubeconfig or args.in_cluster:
            print(
                f"metamesh {args.command}: --kubeconfig/--in-cluster need --kubernetes",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return None
    from metamesh.control.sources.kubernetes import KubernetesSettings

    if args.kubeconfig and args.in_cluster:
        print(
            f"metamesh {args.command}: give --kubeconfig or --in-cluster, not both", file=sys.stderr
        )
        raise SystemExit(2)
    import os

    from metamesh.control.sources.kubernetes import config_problem

    problem = config_problem(args.kubeconfig, in_cluster=args.in_cluster)
    if problem is not None:
        print(f"metamesh {args.command}: --kubernetes: {problem}", file=sys.stderr)
        raise SystemExit(2)
    injector = None
    if args.webhook_cert or args.webhook_key:
        from metamesh.control.sources.kubernetes_webhook import InjectorSettings

        if not (args.webhook_cert and args.webhook_key):
            print(f"metamesh {args.command}: give --webhook-cert and --webhook-key together",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
        injector = InjectorSettings(
            cert=args.webhook_cert,
            key=args.webhook_key,
            port=args.webhook_port,
            host=args.webhook_address,
            image=args.sidecar_image,
            xds=args.sidecar_xds or f"metamesh-control-plane.{args.kube_lease_namespace}.svc:15010",
        )
    return KubernetesSettings(
        kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        context=args.kube_context,
        lease_namespace=args.kube_lease_namespace,
        injector=injector,
        identity=os.environ.get("POD_NAME") or None,  # the Deployment sets it (Lease holder)
    )


def _add_kubernetes_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes as a config source (docs/kubernetes.md)")
    group.add_argument(
        "--kubernetes",
        action="store_true",
        help="watch the cluster: Aeraki/Istio CRDs, Services, EndpointSlices, Pods, Namespaces",
    )
    group.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
    )
    group.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    group.add_argument("--kube-context", metavar="NAME", help="kubeconfig context")
    group.add_argument(
        "--kube-lease-namespace",
        default="metamesh-system",
        metavar="NS",
        help="namespace of the leader Lease (status writes)",
    )
    group.add_argument(
        "--webhook-cert",
        metavar="FILE",
        help="serve the sidecar injection webhook over HTTPS with this certificate (PEM)",
    )
    group.add_argument("--webhook-key", metavar="FILE", help="the webhook certificate's key")
    group.add_argument("--webhook-port", type=int, default=15017, help="webhook port")
    group.add_argument("--webhook-address", default="0.0.0.0", help="webhook address")
    group.add_argument(
        "--sidecar-image", default="metamesh:latest", help="image of the injected containers"
    )
    group.add_argument(
        "--sidecar-xds",
        metavar="HOST:PORT",
        help="the control plane address injected proxies dial (default: the "
        "metamesh-control-plane Service in the Lease's namespace, port 15010)",
    )


def _cmd_render_manifests(args: argparse.Namespace) -> int:
    from metamesh.control.sources.kubernetes_manifests import render

    sys.stdout.write(render(args.part, namespace=args.namespace, image=args.image))
    return 0


def _ca_settings(args: argparse.Namespace) -> CaSettings | None:
    if args.ca_dir is None:
        return None
    import ipaddress
    from pathlib import Path

    from metamesh.control.embedded import CaSettings

    try:
        loopback = ipaddress.ip_address(args.xds_address).is_loopback
    except ValueError:
        loopback = args.xds_address == "localhost"
    if args.xds_tls is False and not loopback:
        raise SystemExit(
            "metamesh control-plane: --no-xds-tls: plaintext ADS is only served on a loopback "
            f"address, not {args.xds_address} (docs/security.md)"
        )
    return CaSettings(
        directory=Path(args.ca_dir),
        tokens_file=Path(args.ca_tokens) if args.ca_tokens else None,
        port=args.ca_port,
        trust_domain=args.trust_domain,
        xds_tls=args.xds_tls is not False,
        names=tuple(args.xds_name or ()),
    )


def _cmd_agent(args: argparse.Namespace) -> int:
    """``metamesh agent``: certificates from the mesh CA, served to a local Envoy over SDS."""
    from pathlib import Path

    from metamesh.control.embedded import run
    from metamesh.security.sds_agent import AgentSettings, serve_agent
    from metamesh.security.spiffe import SpiffeId

    for option in ("ca_root", "ca_token_file"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            flag = "--" + option.replace("_", "-")
            print(f"metamesh agent: {flag}: {path} is not a readable file", file=sys.stderr)
            return 2
    settings = AgentSettings(
        ca=args.ca,
        root_file=Path(args.ca_root),
        token_file=Path(args.ca_token_file) if args.ca_token_file else None,
        identity=SpiffeId(args.trust_domain, args.namespace, args.service_account),
        socket=Path(args.sds_socket),
        ttl_seconds=args.cert_ttl,
        admin_port=None if args.admin_port < 0 else args.admin_port,
    )
    return run(serve_agent(settings), args.log_level, proxy_loop=False)


def _cmd_proxy_config(args: argparse.Namespace) -> int:
    import json

    from metamesh.runtime.proxy_config import (
        STATS_VIEW,
        AdminUnreachableError,
        fetch_config_dump,
        fetch_stats,
        render,
        render_stats,
        select,
    )

    try:
        if args.view == STATS_VIEW:
            samples = fetch_stats(args.admin, args.match)
        else:
            dump = fetch_config_dump(args.admin)
    except AdminUnreachableError as e:
        print(f"metamesh proxy-config: {e}", file=sys.stderr)
        return 1
    if args.view == STATS_VIEW:
        text = json.dumps(samples, indent=2) + "\n" if args.output == "json" else None
        sys.stdout.write(text or render_stats(samples))
    elif args.output == "json":
        print(json.dumps(select(args.view, dump), indent=2))
    else:
        sys.stdout.write(render(args.view, dump))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from metamesh.telemetry.aggregator import run_dashboard

    return run_dashboard(args.proxy, args.port, args.log_level)


def _cmd_ratelimit_server(args: argparse.Namespace) -> int:
    from metamesh.ratelimit.service import run_ratelimit_server

    return run_ratelimit_server(
        args.config,
        port=args.port,
        host=args.host,
        redis_url=args.redis,
        log_level=args.log_level,
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, as ``(default: X)``; options whose default
    is "not given" (``None``, ``False``, ``""``) say nothing, or say in words what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if isinstance(default, bool) or default in (None, "") or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrapped at spaces only, so a default such as ``istio-system`` stays whole."""
        import textwrap

        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metamesh",
        description="metamesh: a service mesh for any layer-7 protocol.",
    )
    parser.add_argument(
        "--version", action="version", version=f"metamesh {__version__}, {build_info.describe()}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the live demo: an embedded mesh routing real Thrift and Dubbo traffic",
        description="With no subcommand: the live demo (metamesh up, sample servers v1/v2 and "
        "clients, three route changes). 'backends' and 'client' serve and call a mesh directory "
        "of your own, such as examples/mesh, under 'metamesh up DIR'.",
    )
    demo.add_argument("--step-seconds", type=float, default=5.0, help="seconds of traffic per step")
    demo.add_argument("--keep-running", action="store_true", help="stay up at the end until Ctrl-C")
    demo.add_argument(
        "--admin-port", type=int, help="proxy admin port (default: 15000, or any free one)"
    )
    demo.add_argument(
        "--codecs", action="store_true", help="walk through the codec layer instead (no network)"
    )
    demo.set_defaults(func=_cmd_demo)
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="[backends|client]")
    backends = demo_sub.add_parser(
        "backends",
        help="serve a mesh directory's Thrift and Dubbo endpoints with the demo's sample servers",
    )
    backends.add_argument(
        "directory", nargs="?", default="examples/mesh", metavar="DIR", help="mesh config directory"
    )
    backends.set_defaults(func=_cmd_demo_backends)
    client = demo_sub.add_parser(
        "client", help="call a mesh directory's Thrift or Dubbo service; print who answered"
    )
    client.add_argument("protocol", choices=("thrift", "dubbo"), help="which service to call")
    client.add_argument(
        "directory", nargs="?", default="examples/mesh", metavar="DIR", help="mesh config directory"
    )
    client.add_argument("-c", "--count", type=int, default=10, help="calls to make")
    client.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep trying to connect (the mesh may still be starting)",
    )
    client.set_defaults(func=_cmd_demo_client)

    codecs = sub.add_parser("codecs", help="list the registered codecs")
    codecs.set_defaults(func=_cmd_codecs)

    validate = sub.add_parser(
        "validate",
        help="check resource manifests (YAML files or directories); exit 1 on any error",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="YAML file or directory")
    validate.add_argument(
        "-n", "--namespace", default="default", help="namespace for resources without one"
    )
    validate.add_argument(
        "--strict",
        action="store_true",
        help="also exit 1 on warnings and on objects of kinds metamesh does not read (skipped)",
    )
    validate.add_argument(
        "--data-plane",
        choices=("metamesh", "envoy"),
        default="metamesh",
        help="envoy: also warn about what Envoy nodes cannot be given as asked (docs/envoy.md)",
    )
    _add_config_limit_options(validate)
    validate.set_defaults(func=_cmd_validate)

    proxy = sub.add_parser(
        "proxy", help="run the MetaProtocol proxy (static YAML config, or xDS from a control plane)"
    )
    source = proxy.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="static config (YAML)")
    source.add_argument("--xds", metavar="HOST:PORT", help="follow this control plane (ADS)")
    proxy.add_argument("--node-id", default="", help="xDS node id (default: metamesh-<pid>)")
    proxy.add_argument("--namespace", help="the workload's namespace (xDS node metadata)")
    proxy.add_argument("--labels", default="", help="workload labels k=v,k=v (node metadata)")
    proxy.add_argument(
        "--instance-ips",
        default="",
        metavar="IP,IP",
        help="the workload's addresses (node metadata INSTANCE_IPS; its endpoints are found by "
        "these or by --labels)",
    )
    proxy.add_argument(
        "--no-outbound",
        action="store_true",
        help="ask for the inbound side only (a server's proxy on a host shared with clients' "
        "proxies, which listen on the services' addresses)",
    )
    proxy.add_argument(
        "--xds-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ADS over TLS, the control plane verified with --ca-root, the proxy authenticated "
        "by its workload certificate or --ca-token-file (default: on with --ca)",
    )
    proxy.add_argument(
        "--xds-reconnect-max",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="longest wait between xDS reconnect attempts (jittered back-off)",
    )
    proxy.add_argument(
        "--admin-port", type=int, default=15000, help="admin HTTP port on 127.0.0.1 (-1: off)"
    )
    proxy.add_argument("--access-log", metavar="PATH", help="JSON-lines access log ('-': stdout)")
    _add_access_log_format(proxy)
    proxy.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds to drain on SIGTERM"
    )
    _add_limit_options(proxy)
    _add_config_limit_options(proxy)
    tls = proxy.add_argument_group(
        "workload certificate (for listeners with tls_mode STRICT or PERMISSIVE)"
    )
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate chain, PEM (default: none)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key, PEM (default: none)")
    tls.add_argument("--tls-root", metavar="FILE", help="the mesh root to trust (default: none)")
    tls.add_argument(
        "--ca",
        metavar="HOST:PORT",
        help="get (and renew) the workload certificate from this mesh CA (default: none)",
    )
    tls.add_argument(
        "--ca-root", metavar="FILE", help="the mesh root, to trust the CA by (default: none)"
    )
    tls.add_argument(
        "--ca-token-file",
        metavar="FILE",
        help="bootstrap token for the first certificate (default: none)",
    )
    tls.add_argument(
        "--service-account",
        default="default",
        help="the workload's service account",
    )
    tls.add_argument(
        "--cert-ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="certificate lifetime to ask for; renewed at half of it",
    )
    tls.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="peers must have a SPIFFE id in this trust domain",
    )
    _add_sidecar_options(proxy)
    _add_tracing_options(proxy)
    _add_workers_option(proxy)
    proxy.add_argument("--log-level", default="INFO", help="logging level")
    proxy.set_defaults(func=_cmd_proxy)

    up = sub.add_parser(
        "up", help="run an embedded mesh: control plane watching DIR plus one proxy, over xDS"
    )
    up.add_argument("directory", metavar="DIR", help="directory of YAML manifests (watched)")
    up.add_argument(
        "--admin-port", type=int, default=15000, help="proxy admin port on 127.0.0.1 (-1: off)"
    )
    up.add_argument("--xds-port", type=int, default=0, help="xDS port on 127.0.0.1 (0: any)")
    up.add_argument(
        "-n", "--namespace", default="default", help="namespace for resources without one"
    )
    up.add_argument("--access-log", metavar="PATH", help="JSON-lines access log ('-': stdout)")
    _add_access_log_format(up)
    up.add_argument("--drain-timeout", type=float, default=5.0, help="seconds to drain on SIGTERM")
    _add_limit_options(up)
    _add_config_limit_options(up)
    _add_zookeeper_options(up)
    _add_kubernetes_options(up)
    _add_sidecar_options(up)
    _add_tracing_options(up)
    _add_workers_option(up)
    up.add_argument("--log-level", default="INFO", help="logging level")
    up.set_defaults(func=_cmd_up)

    cp = sub.add_parser(
        "control-plane",
        help="serve a watched config directory (and/or a ZooKeeper registry) over xDS (ADS)",
    )
    cp.add_argument(
        "--config-dir",
        metavar="DIR",
        help="YAML manifests (watched) (default: none; give it, --zookeeper, or both)",
    )
    cp.add_argument("--xds-port", type=int, default=15010, help="xDS port")
    cp.add_argument("--xds-address", default="127.0.0.1", help="xDS address")
    cp.add_argument(
        "--admin-port",
        type=int,
        default=-1,
        help="serve /ready and /stats/prometheus (ADS and CA refusals) on 127.0.0.1:PORT "
        "(0: any free port; -1: off; istiod uses 15014)",
    )
    cp.add_argument(
        "-n", "--namespace", default="default", help="namespace for resources without one"
    )
    cp.add_argument("--log-level", default="INFO", help="logging level")
    _add_config_limit_options(cp)
    cp.add_argument(
        "--ca-dir",
        metavar="DIR",
        help="be the mesh CA: root kept in DIR (made on first start) (default: no CA)",
    )
    cp.add_argument("--ca-port", type=int, default=15012, help="CA port, TLS")
    cp.add_argument(
        "--ca-tokens",
        metavar="FILE",
        help="bootstrap tokens and their identities, YAML (default: none)",
    )
    cp.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain")
    cp.add_argument(
        "--xds-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve ADS over TLS and admit only proxies with a mesh certificate or a bootstrap "
        "token (default: on with --ca-dir; --no-xds-tls only on a loopback --xds-address)",
    )
    cp.add_argument(
        "--xds-name",
        action="append",
        metavar="NAME",
        help="a host name or address proxies dial the control plane by, added to its "
        "certificate beside --xds-address and localhost; repeatable",
    )
    cp.add_argument(
        "--root-namespace",
        default="istio-system",
        help="Istio's root namespace: its PeerAuthentication and authorization policies are "
        "mesh-wide",
    )
    _add_zookeeper_options(cp)
    _add_kubernetes_options(cp)
    cp.set_defaults(func=_cmd_control_plane)

    rm = sub.add_parser(
        "render-manifests",
        help="print the Kubernetes manifests: CRDs, control plane, sidecar injection (deploy/)",
    )
    rm.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=["all", "crds", "control-plane", "sidecar-template"],
        help="which manifests",
    )
    rm.add_argument("-n", "--namespace", default="metamesh-system", help="control plane namespace")
    rm.add_argument("--image", default="metamesh:latest", help="container image")
    rm.set_defaults(func=_cmd_render_manifests)

    agent = sub.add_parser(
        "agent",
        help="node agent for an Envoy sidecar: its certificate from the mesh CA, over SDS",
        description="Makes the workload's key, gets its certificate from the mesh CA "
        "(CreateCertificate; bootstrap token first, renewed at half its lifetime) and serves "
        "it to the local Envoy over SDS on a Unix socket: secrets 'default' and 'ROOTCA', as "
        "Istio's pilot-agent (docs/security.md).",
    )
    agent.add_argument("--ca", required=True, metavar="HOST:PORT", help="the mesh CA")
    agent.add_argument(
        "--ca-root", required=True, metavar="FILE", help="the mesh root, to trust the CA by"
    )
    agent.add_argument(
        "--ca-token-file", metavar="FILE", help="bootstrap token for the first certificate"
    )
    agent.add_argument("--namespace", default="default", help="the workload's namespace")
    agent.add_argument("--service-account", default="default", help="its service account")
    agent.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain")
    agent.add_argument(
        "--cert-ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="certificate lifetime to ask for; renewed at half of it",
    )
    agent.add_argument(
        "--sds-socket",
        default="/var/run/metamesh/sds.sock",
        metavar="PATH",
        help="the Unix socket Envoy's SDS config points at (made mode 0600)",
    )
    agent.add_argument(
        "--admin-port",
        type=int,
        default=-1,
        help="serve /ready and /stats/prometheus (SDS refusals, certificates) on "
        "127.0.0.1:PORT (0: any free port; -1: off)",
    )
    agent.add_argument("--log-level", default="INFO", help="logging level")
    agent.set_defaults(func=_cmd_agent)

    icpt = sub.add_parser(
        "intercept",
        help="install or remove the transparent sidecar's nftables rules (init step; cleanup "
        "after a crashed proxy)",
        description="Without --cleanup: install the rules 'proxy --intercept' would, and exit "
        "(a pod's init step). --cleanup removes them. See docs/sidecar.md.",
    )
    icpt.add_argument(
        "--cleanup", action="store_true", help="remove the rules (table inet metamesh)"
    )
    icpt.add_argument("--print", action="store_true", help="print the nft script, change nothing")
    icpt.add_argument(
        "--dns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="redirect UDP/TCP port 53 to the DNS responder",
    )
    icpt.set_defaults(outbound_traffic_policy="ALLOW_ANY")  # the proxy's choice, not the rules'
    _add_intercept_options(icpt)
    icpt.set_defaults(func=_cmd_intercept)

    pc = sub.add_parser(
        "proxy-config", help="show a running proxy's config (from its admin: metamesh or Envoy)"
    )
    pc.add_argument(
        "view",
        choices=("listeners", "routes", "clusters", "endpoints", "stats"),
        help="what to show (stats: a metamesh proxy's /stats/prometheus, Envoy's /stats)",
    )
    pc.add_argument("--match", default="", metavar="TEXT", help="stats: names containing TEXT")
    pc.add_argument(
        "--admin",
        default="127.0.0.1:15000",
        metavar="HOST:PORT",
        help="the admin of a metamesh proxy or of an Envoy",
    )
    pc.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="a table, or that part of the config dump as JSON",
    )
    pc.set_defaults(func=_cmd_proxy_config)
    dash = sub.add_parser(
        "dashboard",
        help="the live page for a mesh of proxies, gathered from their admins (docs/telemetry.md)",
    )
    dash.add_argument(
        "--proxy",
        required=True,
        action="append",
        metavar="HOST:PORT",
        help="a proxy's admin address; repeat for every proxy of the mesh",
    )
    dash.add_argument(
        "--port", type=int, default=15080, help="the page's port on 127.0.0.1 (0: any)"
    )
    dash.add_argument("--log-level", default="INFO", help="logging level")
    dash.set_defaults(func=_cmd_dashboard)
    rls = sub.add_parser(
        "ratelimit-server",
        help="run the global rate limit service (Envoy RLS gRPC API, counters in Redis)",
    )
    rls.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="FILE",
        help="limits YAML (Envoy ratelimit format); repeat for more domains",
    )
    rls.add_argument("--port", type=int, default=8081, help="gRPC port (0: any)")
    rls.add_argument("--host", default="127.0.0.1", help="address to bind")
    rls.add_argument(
        "--redis", default="redis://127.0.0.1:6379/0", help="Redis URL shared by all servers"
    )
    rls.add_argument("--log-level", default="INFO", help="logging level")
    rls.set_defaults(func=_cmd_ratelimit_server)
    _use_help_formatter(sub)
    return parser


def _use_help_formatter(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """:class:`_HelpFormatter` for every subcommand, nested ones (``demo client``) too."""
    for parser in sub.choices.values():
        parser.formatter_class = _HelpFormatter
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _use_help_formatter(action)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not in the exit's flush
    except BrokenPipeError:
        # ``metamesh ... | head``: the reader closed the pipe. As Python's docs advise (signal
        # module, "Note on SIGPIPE"), point stdout at devnull so the interpreter's last flush
        # stays quiet, and exit as a process killed by SIGPIPE looks to a shell (128 + 13).
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code
