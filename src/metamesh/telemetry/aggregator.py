"""``metamesh dashboard`` and the control plane's page: a mesh of proxies, from their admins.

A small HTTP server on 127.0.0.1 serves the same page as every proxy admin (``/dashboard``,
the package's ``dashboard.html``); its ``/dashboard/data`` asks every proxy's admin for its
``/dashboard/data`` at that moment (in parallel, each with a short timeout) and answers the
merge (:class:`~metamesh.telemetry.mesh.MeshView`), so the page polls one address and shows
the whole mesh. The server keeps no history but the push log: rates come from the page's own
readings, as with one proxy.

A proxy that does not answer is shown ``unreachable`` with the reason and logged once per
change of state; the others are served as usual. Threads, not asyncio: a handful of proxies
polled once a second by a page or two, where blocking reads on a thread pool are the plainest
code.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Final, Protocol

from metamesh.telemetry.mesh import MeshView, Reading
from metamesh.xds.resources import ProxyNode

log = logging.getLogger("metamesh.dashboard")
#: Seconds one proxy admin may take to answer a poll.
FETCH_TIMEOUT: Final = 1.5


def fetch(address: str) -> Reading:
    """``address``'s ``/dashboard/data``, or the reason it could not be had."""
    try:
        with urllib.request.urlopen(
            f"http://{address}/dashboard/data", timeout=FETCH_TIMEOUT
        ) as reply:
            data = json.loads(reply.read())
    except (OSError, ValueError) as e:  # refused, timed out, HTTP error, not JSON
        return Reading(address, error=str(getattr(e, "reason", e)))
    if not isinstance(data, dict) or not isinstance(data.get("edges"), list):
        return Reading(address, error="not a metamesh admin (no dashboard data)")
    return Reading(address, data)


class MeshDashboard:
    """Gathers and merges the proxies' readings for each poll of the page."""

    def __init__(self, proxies: list[str]) -> None:
        self.proxies = proxies
        self.view = MeshView()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, min(len(proxies), 16)), "metamesh-dashboard")
        self._down: set[str] = set()

    def data(self) -> dict[str, Any]:
        readings = list(self._pool.map(fetch, self.proxies))
        for r in readings:
            self._log_state(r)
        wall = datetime.datetime.now().strftime("%H:%M:%S")
        with self._lock:  # the push log is shared by concurrent polls
            return self.view.merge(readings, time.monotonic(), wall)

    def _log_state(self, r: Reading) -> None:
        if r.error is not None and r.address not in self._down:
            self._down.add(r.address)
            log.warning("proxy %s unreachable: %s", r.address, r.error)
        elif r.error is None and r.address in self._down:
            self._down.discard(r.address)
            log.info("proxy %s answers again", r.address)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_server(dashboard: MeshDashboard, port: int) -> http.server.ThreadingHTTPServer:
    """The page's HTTP server on 127.0.0.1:``port`` (0: any free port)."""
    page = resources.files("metamesh.telemetry").joinpath("dashboard.html").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path in ("/", "/dashboard"):
                self._reply(200, "text/html; charset=utf-8", page)
            elif path == "/dashboard/data":
                body = json.dumps(dashboard.data()).encode()
                self._reply(200, "application/json", body)
            else:
                self._reply(404, "text/plain", b"not found: try /dashboard\n")

        def _reply(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll would drown the log

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def run_dashboard(proxies: list[str], port: int, log_level: str = "INFO") -> int:
    """Serve the mesh page until SIGTERM/SIGINT; 2 when an address is not HOST:PORT, 1 when
    the port cannot be bound."""
    import signal
    import sys

    from metamesh import logs

    logs.configure(log_level)
    for address in proxies:
        host, sep, number = address.rpartition(":")
        if not sep or not host or not number.isdigit():
            print(f"metamesh dashboard: --proxy {address!r}: expected HOST:PORT", file=sys.stderr)
            return 2
    dashboard = MeshDashboard(proxies)
    try:
        server = make_server(dashboard, port)
    except OSError as e:
        print(f"metamesh dashboard: cannot listen on 127.0.0.1:{port}: {e}", file=sys.stderr)
        return 1
    bound = server.server_address[1]
    print(
        f"metamesh dashboard: http://127.0.0.1:{bound}/dashboard ({len(proxies)} proxies)",
        flush=True,
    )
    stop = threading.Thread(target=server.shutdown, daemon=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        dashboard.close()
    return 0


class ControlPlaneDashboard:
    """The page's data on the control plane (``control-plane --admin-port``): its connected
    proxies, found by their xDS nodes (each tells its admin address, node metadata
    ``METAMESH_ADMIN``), read as ``metamesh dashboard`` reads them; the pushes from the control
    plane's own bookkeeping: per node, the version it ACKed and the last NACK of any type."""

    def __init__(self, ads: ConnectedNodes) -> None:
        self.ads = ads
        self.view = MeshView()
        self._lock = threading.Lock()

    def data(self) -> dict[str, Any]:
        nodes, status = self._read_ads()
        with ThreadPoolExecutor(max(1, min(len(nodes), 16))) as pool:
            readings = list(pool.map(_reading_of, nodes.values()))
        wall = datetime.datetime.now().strftime("%H:%M:%S")
        with self._lock:
            for node_id in nodes:
                types = status.get(node_id, {}).values()
                acked = sorted({str(t.get("acked_version") or "") for t in types} - {""})
                nacks = [str(t["nack"]) for t in types if t.get("nack")]
                version = ",".join(acked) or "-"
                self.view.note(node_id, node_id, version, nacks[0] if nacks else None, wall)
            return self.view.merge(readings, time.monotonic(), wall, told=False)

    def _read_ads(self) -> tuple[dict[str, ProxyNode], dict[str, dict[str, dict[str, object]]]]:
        """The connected nodes and their xDS status, read from this thread while the server's
        loop may change them: a set or dict changing size mid-read is read again."""
        for _ in range(5):
            try:
                return {n.node_id: n for n in self.ads.connected()}, self.ads.status()
            except RuntimeError:
                continue
        return {}, {}


class ConnectedNodes(Protocol):
    """What :class:`ControlPlaneDashboard` needs of the ADS server."""

    def connected(self) -> list[ProxyNode]: ...

    def status(self) -> dict[str, dict[str, dict[str, object]]]: ...


def _reading_of(node: ProxyNode) -> Reading:
    if node.admin is None:
        return Reading(node.node_id, error="no admin address (its admin is off, or not metamesh)")
    return fetch(node.admin)


def mesh_dashboard(ads: ConnectedNodes) -> Callable[[], dict[str, Any]]:
    """The control plane admin's ``/dashboard/data``: a blocking call (run it on a thread)."""
    return ControlPlaneDashboard(ads).data
