"""The ``metamesh`` command line.

Each subcommand lives in its own small function and imports what it needs lazily, so
``metamesh --help`` stays instant and a subcommand's dependencies are only loaded when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metamesh import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from metamesh.demo import run_demo

    return run_demo(out=sys.stdout)


def _cmd_codecs(args: argparse.Namespace) -> int:
    from metamesh.codecs import available_codecs

    for name in available_codecs():
        print(name)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from metamesh.api.validate import report

    return report(args.paths, sys.stdout, default_namespace=args.namespace)


def _cmd_proxy(args: argparse.Namespace) -> int:
    from metamesh.runtime.main import run_proxy

    return run_proxy(
        args.config,
        admin_port=None if args.admin_port < 0 else args.admin_port,
        access_log=args.access_log,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metamesh",
        description="metamesh: a service mesh for any layer-7 protocol.",
    )
    parser.add_argument("--version", action="version", version=f"metamesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo (codec round trips through Dubbo and Thrift)")
    demo.set_defaults(func=_cmd_demo)

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
    validate.set_defaults(func=_cmd_validate)

    proxy = sub.add_parser("proxy", help="run the MetaProtocol proxy from a static YAML config")
    proxy.add_argument("--config", required=True, metavar="FILE", help="static config (YAML)")
    proxy.add_argument(
        "--admin-port", type=int, default=15000, help="admin HTTP port on 127.0.0.1 (-1: off)"
    )
    proxy.add_argument("--access-log", metavar="PATH", help="JSON-lines access log ('-': stdout)")
    proxy.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds to drain on SIGTERM"
    )
    proxy.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    proxy.set_defaults(func=_cmd_proxy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code
