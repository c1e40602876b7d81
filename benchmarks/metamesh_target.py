"""Starting metamesh the ways it is deployed, for the benchmark's metamesh targets.

A metamesh target kind is ``<mode>-<build>``, optionally ``@DIR`` (native builds only):

- mode ``static``: ``metamesh proxy --config FILE`` (:func:`mesh_configs.metamesh_config`);
- mode ``xds``: ``metamesh control-plane --config-dir DIR --xds-port 0`` (it reports the port it
  bound) and ``metamesh proxy --xds 127.0.0.1:P --node-id bench``; the proxy is the measured
  process, the control plane a helper that only runs beside it;
- mode ``up``: ``metamesh up DIR --xds-port 0``: control plane and proxy in one process, which
  is the measured one (its CPU includes the idle control-plane thread, as deployed);
- build ``pure``: the editable install in ``.venv``; ``native``: the mypyc build, made with
  ``scripts/build_mypyc.sh`` once per run and copied into the run's work directory, so a
  rebuild of ``build/native`` during a long run cannot change what is measured; ``native@DIR``
  runs the native tree ``DIR`` (an A/B of two builds), not rebuilt.

A ``+VARIANT`` suffix runs the same target with an observability feature on, for the cost of
telemetry (issue 19) measured interleaved against the plain target: ``+tracing`` (spans
sampled at 1%, ``--tracing-sample-rate 0.01``, the default), ``+tracing100`` (every request
traced), ``+tracing0`` (nothing sampled), all exported over OTLP/gRPC to
:mod:`benchmarks.otlp_sink` (a helper process whose span count is checked when the target
stops), ``+tracinghttp`` and ``+tracinghttp100`` (the same over OTLP/HTTP, the default export
since the ninth session; the names are kept so that older results read the same), and ``+jsonlog``
(``--access-log FILE``, JSON lines on disk). The requests carry no trace context, so the rate
decides.

``DIR`` for the control plane is :func:`mesh_configs.write_mesh_dir`. Every target is ready
when its admin ``/ready`` says LIVE and its listener accepts; then ``/server_info`` must report
uvloop (and, for native builds, "native": ``metamesh --version`` is checked before the start
too), and ``/config_dump`` must equal what the static config gives, the config version aside,
so every mode does the same work per request. What was found goes into ``Target.extra``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.mesh_configs import config_difference, metamesh_config, write_mesh_dir
from benchmarks.processes import (
    Unavailable,
    fail_if_exited,
    free_port,
    last_line,
    spawn,
    wait_listening,
)

if TYPE_CHECKING:
    from benchmarks.targets import Target

ROOT = Path(__file__).resolve().parent.parent
MODES = ("static", "xds", "up")
METAMESH_KINDS = tuple(f"{m}-{b}" for m in MODES for b in ("pure", "native"))
#: The names of the static targets before the deployed modes were measured.
ALIASES = {"metamesh": "static-pure", "metamesh-native": "static-native"}
_CONTROL_PLANE_PORT = re.compile(r"control plane \(xDS\) on [^\s:]+:(\d+)")
_REFERENCE_DUMP = (
    "import json, sys; from metamesh.proxy.config_yaml import load_snapshot; "
    "print(json.dumps(load_snapshot(sys.argv[1]).to_dict()))"
)
_native_copies: dict[Path, Path] = {}
#: ``+VARIANT`` -> (sample rate for tracing or None, JSON access log, OTLP protocol).
VARIANTS: dict[str, tuple[float | None, bool, str]] = {
    "tracing": (0.01, False, "grpc"),
    "tracing100": (1.0, False, "grpc"),
    # tracing on, nothing sampled: the unsampled path and the idle exporter alone
    "tracing0": (0.0, False, "grpc"),
    # the same over OTLP/HTTP
    "tracinghttp": (0.01, False, "http"),
    "tracinghttp100": (1.0, False, "http"),
    "jsonlog": (None, True, "grpc"),
}


def split_variant(kind: str) -> tuple[str, str]:
    """``static-native@DIR+tracing`` -> (``static-native@DIR``, ``tracing``); no variant: ''."""
    base, plus, variant = kind.rpartition("+")
    return (base, variant) if plus and variant in VARIANTS else (kind, "")


def canonical_kind(kind: str) -> str:
    """``metamesh-native@DIR`` -> ``static-native@DIR``; other kinds unchanged."""
    kind, variant = split_variant(kind)
    base, at, tree = kind.partition("@")
    return ALIASES.get(base, base) + at + tree + ("+" + variant if variant else "")


def metamesh_kind(kind: str) -> tuple[str, bool, Path | None] | None:
    """(mode, native, tree) of a metamesh target kind; None for any other kind."""
    base, at, tree = split_variant(canonical_kind(kind))[0].partition("@")
    mode, _, build = base.partition("-")
    if mode not in MODES or build not in ("pure", "native") or (at and build != "native"):
        return None
    return mode, build == "native", Path(tree).resolve() if at else None


def start_metamesh(target: Target, upstream_port: int, options: dict[str, Any]) -> None:
    """Start ``target`` (a metamesh kind) with the responder on ``upstream_port``; on return
    it is ready, checked, and listening on ``target.port``."""
    parsed = metamesh_kind(target.kind)
    assert parsed is not None, target.kind
    mode, native, tree = parsed
    binary = Path(options.get("metamesh_bin") or ROOT / ".venv" / "bin" / "metamesh")
    if not binary.exists():
        raise Unavailable(f"{binary} not found (run scripts/setup.sh)")
    env = _environment(native, tree, target.workdir)
    target.version = _version(binary, env, native)
    help_text = _help(binary, mode, env)
    target.port = free_port()
    slug = f"{target.kind.replace('/', '_').replace('@', '-at')}-{target.protocol}"
    reference = target.workdir / f"{slug}.yaml"
    config = metamesh_config(target.protocol, target.port, upstream_port)
    reference.write_text(yaml.safe_dump(config, sort_keys=False))
    template = options.get("metamesh_config") if mode == "static" else None
    cmd = _mode_command(target, mode, binary, env, upstream_port, template, slug)
    admin = free_port() if "--admin-port" in help_text else None
    cmd += _common_options(help_text, admin) + list(options.get("metamesh_args") or [])
    cmd += _variant_options(target, split_variant(target.kind)[1], slug)
    log = target.workdir / f"{slug}.log"
    target.proc = spawn(cmd, log, env=env)
    if admin is None:  # a tree from before the admin port: nothing to check
        wait_listening(target.port, target.proc, 30.0, log)
        return
    target.extra["admin_port"] = admin
    wait_ready(admin, target.proc, 30.0, log)
    wait_listening(target.port, target.proc, 30.0, log)
    _check_server_info(target, admin, native)
    if template:
        target.extra["config_check"] = "not checked (--metamesh-config)"
    else:
        _check_config(target, admin, reference, env)


def _mode_command(
    target: Target,
    mode: str,
    binary: Path,
    env: dict[str, str],
    upstream_port: int,
    template: str | None,
    slug: str,
) -> list[str]:
    """The measured process's command for ``mode`` (for ``xds``, the control plane is started
    here as a helper); the static config or the mesh directory is written here too."""
    if mode == "static":
        config = target.workdir / f"{slug}.yaml"  # the reference itself
        if template:
            config = target.workdir / f"{slug}-custom.yaml"
            config.write_text(
                string.Template(Path(template).read_text()).substitute(
                    listen_port=target.port, upstream_port=upstream_port, protocol=target.protocol
                )
            )
        target.extra["config"] = str(config)
        return [str(binary), "proxy", "--config", str(config)]
    mesh = write_mesh_dir(
        target.workdir / f"{slug}-mesh", target.protocol, target.port, upstream_port
    )
    target.extra["mesh_dir"] = str(mesh)
    if mode == "up":
        return [str(binary), "up", str(mesh), "--xds-port", "0"]
    xds_port = _start_control_plane(target, binary, env, mesh, slug)
    return [str(binary), "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "bench"]


def _variant_options(target: Target, variant: str, slug: str) -> list[str]:
    """The options of a ``+VARIANT`` target (the OTLP sink is started here as a helper)."""
    if not variant:
        return []
    rate, json_log, protocol = VARIANTS[variant]
    if json_log:
        path = target.workdir / f"{slug}-access.log"
        target.extra["access_log"] = str(path)
        return ["--access-log", str(path)]
    counts = target.workdir / f"{slug}-spans"
    log = target.workdir / f"{slug}-otlp-sink.log"
    sink = spawn(
        [sys.executable, str(ROOT / "benchmarks" / "otlp_sink.py"), "--count-file", str(counts)]
        + (["--http"] if protocol == "http" else []),
        log,
    )
    target.helpers.append(sink)
    target.extra["span_counts"] = str(counts)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"^PORT (\d+)$", log.read_text(errors="replace"), re.M)
        if found:
            return [
                "--tracing-endpoint",
                f"127.0.0.1:{found.group(1)}",
                "--tracing-sample-rate",
                str(rate),
                "--tracing-protocol",
                protocol,
            ]
        fail_if_exited(sink, log, "serving OTLP")
        time.sleep(0.05)
    raise Unavailable(f"the OTLP sink reported no port in 20s (log: {log})")


def spans_received(target: Target) -> int | None:
    """Spans the target's OTLP sink has counted (after its stop: all), None if not traced."""
    path = target.extra.get("span_counts")
    if not path:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().strip() or 0)
    return 0


def _common_options(help_text: str, admin: int | None) -> list[str]:
    """Admin port, a short drain and quiet logs, where the command has them."""
    options = ["--admin-port", str(admin)] if admin is not None else []
    if "--drain-timeout" in help_text:
        options += ["--drain-timeout", "1"]
    if "--log-level" in help_text:
        options += ["--log-level", "WARNING"]
    return options


def _environment(native: bool, tree: Path | None, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if tree is not None:
        if not tree.is_dir():
            raise Unavailable(f"{tree} is not a directory (build it with build_mypyc.sh)")
        env["PYTHONPATH"] = str(tree)
    elif native:
        env["PYTHONPATH"] = str(native_tree(workdir))
    return env


def native_tree(workdir: Path) -> Path:
    """``build/native`` (built first when stale) as copied into ``workdir``, once per run."""
    if workdir not in _native_copies:
        build = subprocess.run(
            [str(ROOT / "scripts" / "build_mypyc.sh")], capture_output=True, text=True
        )
        if build.returncode != 0:
            raise Unavailable("native build failed: " + last_line(build))
        copy = workdir / "native-build"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ROOT / "build" / "native", copy, symlinks=True)
        _native_copies[workdir] = copy
    return _native_copies[workdir]


def prepare_native(kinds: list[str], workdir: Path) -> None:
    """Build and copy the native tree now if any of ``kinds`` needs it, so that the build (a
    minute or more after a source change) happens before the responder's lifetime starts; a
    failure is left for the target's start to report."""
    if any(m is not None and m[1] and m[2] is None for m in map(metamesh_kind, kinds)):
        with contextlib.suppress(Unavailable):
            native_tree(workdir)


def _version(binary: Path, env: dict[str, str], native: bool) -> str:
    run = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, env=env, timeout=30
    )
    version = run.stdout.strip()
    if native and "native" not in version:
        raise Unavailable(f"{env['PYTHONPATH']} does not load compiled: {version!r}")
    return version


def _help(binary: Path, mode: str, env: dict[str, str]) -> str:
    """``--help`` of the command ``mode`` runs; Unavailable when this tree lacks it."""
    command = "up" if mode == "up" else "proxy"
    run = subprocess.run(
        [str(binary), command, "--help"], capture_output=True, text=True, timeout=30, env=env
    )
    if run.returncode != 0:
        raise Unavailable(f"`metamesh {command}` is not available yet: " + last_line(run))
    if mode == "xds" and "--xds" not in run.stdout:
        raise Unavailable("`metamesh proxy --xds` is not available in this tree")
    return run.stdout


def _start_control_plane(
    target: Target, binary: Path, env: dict[str, str], mesh: Path, slug: str
) -> int:
    """``metamesh control-plane`` on a port of its choosing (a helper of ``target``); the
    xDS port it reports."""
    log = target.workdir / f"{slug}-control-plane.log"
    cmd = [str(binary), "control-plane", "--config-dir", str(mesh), "--xds-port", "0"]
    proc = spawn([*cmd, "--log-level", "WARNING"], log, env=env)
    target.helpers.append(proc)
    target.extra["control_plane_pid"] = proc.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _CONTROL_PLANE_PORT.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        fail_if_exited(proc, log, "serving xDS")
        time.sleep(0.05)
    raise Unavailable(f"the control plane reported no xDS port in 30s (log: {log})")


def admin_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of ``GET http://127.0.0.1:port/path``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def wait_ready(admin: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Until the proxy's admin ``/ready`` answers 200 (LIVE: its first config is in force)."""
    deadline = time.monotonic() + timeout
    status, body = 0, b"no answer"
    while time.monotonic() < deadline:
        fail_if_exited(proc, log, "ready")
        try:
            status, body = admin_get(admin, "/ready", timeout=1.0)
        except OSError as e:
            status, body = 0, str(e).encode()
        if status == 200:
            return
        time.sleep(0.05)
    said = body.decode(errors="replace").strip()
    raise Unavailable(f"admin /ready not LIVE after {timeout:.0f}s ({status} {said}; log: {log})")


def _check_server_info(target: Target, admin: int, native: bool) -> None:
    """Record ``/server_info``'s build and loop; refuse anything but uvloop (and native)."""
    status, body = admin_get(admin, "/server_info")
    info: dict[str, Any] = json.loads(body) if status == 200 else {}
    build = str(info.get("build") or "not reported")
    loop = str(info.get("loop") or "not reported")  # builds from before b921ef7 do not say
    target.extra["server_info"] = {"build": build, "loop": loop}
    if native and "native" not in build:
        raise Unavailable(f"/server_info says the running proxy is {build!r}, not native")
    if loop not in ("uvloop", "not reported"):
        raise Unavailable(f"/server_info says the proxy serves traffic on {loop!r}, not uvloop")


def _check_config(target: Target, admin: int, reference: Path, env: dict[str, str]) -> None:
    """``/config_dump`` must equal the static config's snapshot, loaded by the same tree."""
    run = subprocess.run(
        [sys.executable, "-c", _REFERENCE_DUMP, str(reference)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if run.returncode != 0:
        raise Unavailable("cannot load the static reference config: " + last_line(run))
    status, body = admin_get(admin, "/config_dump")
    if status != 200:
        raise Unavailable(f"admin /config_dump answered {status}")
    diff = config_difference(json.loads(body), json.loads(run.stdout))
    if diff:
        raise Unavailable(f"/config_dump differs from the static config's:\n{diff}")
    target.extra["config_check"] = "/config_dump = the static config's (version aside)"
