"""Starting the two-hop mutual TLS targets: a metamesh mesh and two pairs of Envoys.

:class:`MeshCa` makes the mesh root (``CertificateAuthority.load_or_create`` in a directory the
control plane then serves as its CA) and issues the Envoys' certificate files. A
:class:`TwoHop` target is two measured processes, ``client`` and ``server`` (their CPU is
summed per request), plus helpers (the control plane):

- ``metamesh``: ``control-plane --ca-dir DIR --ca-tokens F --config-dir MESH --xds-port 0
  --admin-port A`` and two ``proxy --xds --ca`` (server: ``--no-outbound``, namespace
  ``bench``, service account ``server``; client: ``client-ns``/``sleep``), each ready when its
  admin ``/ready`` says LIVE, the pure tree or the native one (``--build``);
- ``envoy`` / ``envoy-tcp``: :func:`~benchmarks.mesh_tls_configs.envoy_pair` as two Envoys,
  ``--concurrency 1`` each, as the single-hop benchmark runs them;
- ``metamesh-plain`` (opt-in): the ``metamesh`` mesh with mutual TLS turned off
  (DestinationRule ``DISABLE``, PeerAuthentication ``DISABLE``): what TLS costs is the
  difference between the two;
- ``floor-c`` (opt-in): two ``benchmarks/floor/floor.c`` forwarders in a row, in **plaintext**:
  the same two hops with no TLS and no feature at all, so its CPU per request is what the
  kernel alone charges two user-space hops at that shape (a lower bound for any proxy pair,
  with or without TLS). It has no TLS port (no handshake measurement).
- ``floor-py`` (opt-in): the same with two ``benchmarks/floor/floor_py.py`` forwarders
  (compiled with mypyc, on uvloop, as metamesh-native runs): what CPython and uvloop alone
  charge two hops, before any proxy feature and before TLS.
- ``metamesh-static`` (opt-in): two ``proxy --config`` processes in a row, each with the
  single-hop benchmark's static config (:func:`~benchmarks.mesh_configs.metamesh_config`), in
  plaintext: metamesh's core without the mesh (no xDS, no workload identity, no inbound side,
  no CA), so ``metamesh-plain`` minus it is what the mesh's own features cost two hops.

``port`` is where load goes (the client side, on 127.0.0.1); ``tls`` is the server side's mutual
TLS port (host, port), where the handshake measurement connects.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.mesh_configs import metamesh_config
from benchmarks.mesh_tls_configs import (
    CLIENT_NAMESPACE,
    NAMESPACE,
    PLAIN_WORKLOAD,
    TRUST_DOMAIN,
    WORKLOAD,
    envoy_pair,
    write_mesh,
    write_tokens,
)
from benchmarks.metamesh_target import _environment as metamesh_environment
from benchmarks.metamesh_target import admin_get, wait_ready
from benchmarks.processes import Unavailable, fail_if_exited, free_port, spawn, stop_process
from benchmarks.targets import _base_ids, envoy_version, find_envoy, floor_command
from metamesh.security.ca import CertificateAuthority
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("metamesh", "envoy", "envoy-tcp")
#: Targets run only when named in ``--targets``.
OPT_IN = ("floor-c", "floor-py", "metamesh-plain", "metamesh-static")
_XDS_PORT = re.compile(r"control plane \(xDS\) on [^\s:]+:(\d+)")
_ADMIN_PORT = re.compile(r"control plane admin on 127\.0\.0\.1:(\d+)")


@dataclass
class MeshCa:
    """The mesh root in ``directory`` (root-cert.pem, root-key.pem), made on first use."""

    directory: Path

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.ca = CertificateAuthority.load_or_create(self.directory, TRUST_DOMAIN, now)
        self.root = self.directory / "root-cert.pem"

    def issue(
        self, namespace: str, service_account: str, ttl_hours: float = 24
    ) -> tuple[Path, Path]:
        """A leaf for the identity, as (chain file, key file) in the CA's directory."""
        who = SpiffeId(TRUST_DOMAIN, namespace, service_account)
        pair = new_key_and_csr(who)
        now = dt.datetime.now(dt.UTC)
        chain = self.ca.sign(pair.csr_pem, who, now, dt.timedelta(hours=ttl_hours))
        cert = self.directory / f"{service_account}.pem"
        key = self.directory / f"{service_account}.key"
        cert.write_text("".join(chain[:-1]))
        key.write_bytes(pair.key_pem)
        key.chmod(0o600)
        return cert, key


def wait_accepting(address: tuple[str, int], proc: Any, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fail_if_exited(proc, log, "listening")
        try:
            with socket.create_connection(address, 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"{address} not accepting after {timeout:.0f}s (log: {log})")


@dataclass
class TwoHop:
    kind: str
    protocol: str
    workdir: Path
    port: int = 0
    tls: tuple[str, int] = ("127.0.0.1", 0)
    #: metamesh with several services: protocol -> the client side's port for it.
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    admin: dict[str, int] = field(default_factory=dict)
    version: str = ""

    @property
    def label(self) -> str:
        if self.kind == "envoy":
            return f"Envoy {self.protocol}_proxy x2 + mTLS"
        if self.kind == "envoy-tcp":
            return "Envoy tcp_proxy x2 + mTLS (L4)"
        if self.kind == "floor-c":
            return "floor: C x2, plaintext, no features"
        if self.kind == "floor-py":
            return "floor: Python (mypyc)+uvloop x2, plaintext, no features"
        if self.kind == "metamesh-plain":
            return "metamesh x2, plaintext"
        if self.kind == "metamesh-static":
            return "metamesh static x2, plaintext, no mesh"
        return self.kind + " x2 + mTLS"

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self) -> None:
        for proc in [*self.procs.values(), *reversed(self.helpers)]:
            stop_process(proc)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise Unavailable(f"{self.kind} {name} exited with code {proc.returncode}")


def _environment(workdir: Path, build: str) -> dict[str, str]:
    """The metamesh processes' environment for ``--build``: pure, native, or native@DIR (as
    the single-hop targets get it)."""
    kind, _, tree = build.partition("@")  # native@DIR: a native tree built elsewhere
    return metamesh_environment(kind == "native", Path(tree) if tree else None, workdir)


def _version(binary: list[str], env: dict[str, str], build: str) -> str:
    """``metamesh --version`` in ``env``; a native build that does not load is unavailable."""
    run = subprocess.run([*binary, "--version"], capture_output=True, text=True, env=env)
    version = run.stdout.strip()
    if build.startswith("native") and "native" not in version:
        raise Unavailable(f"the native build does not load: {version!r}")
    return version


def start_metamesh(
    target: TwoHop,
    ca: MeshCa,
    upstream: int,
    build: str,
    cert_ttl: float = 86400.0,
    more: dict[str, int] | None = None,
    mtls: bool = True,
) -> None:
    """The mesh: control plane (CA, TLS ADS) + server proxy + client proxy; ``upstream`` is the
    responder's port on 127.0.0.1, which is also the inbound port on :data:`WORKLOAD`;
    ``more``: other services (protocol -> their responder's port), served the same way."""
    work = target.workdir / f"{target.kind}-{target.protocol}"
    work.mkdir(exist_ok=True)
    env = _environment(target.workdir, build)
    binary = [sys.executable, "-m", "metamesh"]
    target.version = _version(binary, env, build)
    upstreams = {target.protocol: upstream, **(more or {})}
    target.ports = {protocol: free_port() for protocol in upstreams}
    target.port = target.ports[target.protocol]
    services = {p: (target.ports[p], upstreams[p]) for p in upstreams}
    mesh = write_mesh(work / "mesh", services, mtls)
    tokens = work / "tokens.yaml"
    write_tokens(tokens)
    log = work / "control-plane.log"
    cp = spawn(
        [*binary, "control-plane", "--config-dir", str(mesh), "--xds-port", "0",
         "--ca-dir", str(ca.directory), "--ca-port", str(free_port()), "--ca-tokens", str(tokens),
         "--admin-port", "0", "--log-level", "WARNING"],
        log, env=env,
    )  # fmt: skip
    target.helpers.append(cp)
    xds, cp_admin = _wait_for_ports(cp, log)
    target.admin["control-plane"] = cp_admin
    ca_port = re.search(r"CA on [^\s:]+:(\d+)", log.read_text())
    assert ca_port is not None
    for who, namespace, extra in (
        ("server", NAMESPACE, ["--no-outbound"]),
        ("client", CLIENT_NAMESPACE, []),
    ):
        sa = "server" if who == "server" else "sleep"
        admin = free_port()
        plog = work / f"{who}.log"
        target.procs[who] = spawn(
            [*binary, "proxy", "--xds", f"127.0.0.1:{xds}", "--node-id", who,
             "--namespace", namespace, "--labels", f"app={sa}", "--service-account", sa,
             "--ca", f"127.0.0.1:{ca_port[1]}", "--ca-root", str(ca.root),
             "--ca-token-file", str(tokens.parent / f"{sa}.token"), "--cert-ttl", str(cert_ttl),
             "--admin-port", str(admin), "--drain-timeout", "1", "--log-level", "WARNING",
             *extra],
            plog, env=env,
        )  # fmt: skip
        target.admin[who] = admin
        wait_ready(admin, target.procs[who], 60.0, plog)
    workload = WORKLOAD if mtls else PLAIN_WORKLOAD
    target.tls = (workload, upstream) if mtls else ("", 0)
    for protocol, port in target.ports.items():
        inbound = (workload, upstreams[protocol])
        wait_accepting(inbound, target.procs["server"], 30.0, work / "server.log")
        wait_accepting(("127.0.0.1", port), target.procs["client"], 30.0, work / "client.log")
    status, body = admin_get(target.admin["client"], "/server_info")
    info = json.loads(body) if status == 200 else {}
    target.version += f"; /server_info: {info.get('build')}, loop {info.get('loop')}"


def _wait_for_ports(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fail_if_exited(proc, log, "serving")
        text = log.read_text()
        xds, admin = _XDS_PORT.search(text), _ADMIN_PORT.search(text)
        if xds and admin and "CA on" in text:
            return int(xds[1]), int(admin[1])
        time.sleep(0.05)
    raise Unavailable(f"the control plane did not start (log: {log})")


def start_envoys(target: TwoHop, ca: MeshCa, upstream: int, envoy_bin: str | None = None) -> None:
    binary = envoy_bin or find_envoy()
    if not binary:
        raise Unavailable("no Envoy binary: run benchmarks/setup.sh (or pass --envoy-bin)")
    certs = {"sleep": ca.issue(CLIENT_NAMESPACE, "sleep"), "server": ca.issue(NAMESPACE, "server")}
    ports = {k: free_port() for k in ("client", "client_admin", "server", "server_admin")}
    ports["upstream"] = upstream
    pair = envoy_pair("tcp" if target.kind == "envoy-tcp" else "l7", target.protocol, ports,
                      certs, ca.root)  # fmt: skip
    for who, config in zip(("server", "client"), reversed(pair), strict=True):
        path = target.workdir / f"{target.kind}-{target.protocol}-{who}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = path.with_suffix(".log")
        cmd = [str(binary), "-c", str(path), "--concurrency", "1"]
        cmd += ["--base-id", str(next(_base_ids)), "-l", "warning"]
        target.procs[who] = spawn(cmd, log)
        target.admin[who] = ports[f"{who}_admin"]
        wait_accepting(("127.0.0.1", ports[who]), target.procs[who], 30.0, log)
    target.port, target.tls = ports["client"], ("127.0.0.1", ports["server"])
    target.version = envoy_version(str(binary))


def start_floors(target: TwoHop, upstream: int) -> None:
    """Two plaintext floors of ``target.kind`` in a row: client side -> server side ->
    ``upstream``."""
    ports = {"server": free_port(), "client": free_port()}
    ports_upstream = {"server": upstream, "client": ports["server"]}
    for who in ("server", "client"):
        log = target.workdir / f"{target.kind}-{target.protocol}-{who}.log"
        cmd, env, target.version = floor_command(target.kind, target.workdir)
        cmd += [target.protocol, str(ports[who]), str(ports_upstream[who])]
        target.procs[who] = spawn(cmd, log, env=env)
        wait_accepting(("127.0.0.1", ports[who]), target.procs[who], 30.0, log)
    target.port, target.tls = ports["client"], ("", 0)


def start_static_pair(target: TwoHop, upstream: int, build: str) -> None:
    """Two static metamesh proxies in a row: client side -> server side -> ``upstream``."""
    env = _environment(target.workdir, build)
    binary = [sys.executable, "-m", "metamesh"]
    target.version = _version(binary, env, build)
    ports = {"server": free_port(), "client": free_port()}
    ports_upstream = {"server": upstream, "client": ports["server"]}
    for who in ("server", "client"):
        base = target.workdir / f"metamesh-static-{target.protocol}-{who}"
        config = metamesh_config(target.protocol, ports[who], ports_upstream[who])
        base.with_suffix(".yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        admin = free_port()
        cmd = [*binary, "proxy", "--config", str(base.with_suffix(".yaml")),
               "--admin-port", str(admin), "--log-level", "WARNING"]  # fmt: skip
        log = base.with_suffix(".log")
        target.procs[who] = spawn(cmd, log, env=env)
        target.admin[who] = admin
        wait_ready(admin, target.procs[who], 60.0, log)
        wait_accepting(("127.0.0.1", ports[who]), target.procs[who], 30.0, log)
    target.port, target.tls = ports["client"], ("", 0)


def start(target: TwoHop, ca: MeshCa, upstream: int, options: dict[str, Any]) -> None:
    if target.kind in ("floor-c", "floor-py"):
        start_floors(target, upstream)
    elif target.kind == "metamesh-static":
        start_static_pair(target, upstream, options.get("build", "native"))
    elif target.kind in ("metamesh", "metamesh-plain"):
        build = options.get("build", "native")
        start_metamesh(target, ca, upstream, build, mtls=target.kind == "metamesh")
    elif target.kind in ("envoy", "envoy-tcp"):
        start_envoys(target, ca, upstream, options.get("envoy_bin"))
    else:
        known = ", ".join(KINDS + OPT_IN)
        raise ValueError(f"unknown target {target.kind!r}; known: {known}")
