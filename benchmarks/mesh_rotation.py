"""Certificate rotation under traffic through the two-sided mesh (issue 16's literal run).

Usage::

    .venv/bin/python benchmarks/mesh_rotation.py [--cert-ttl 20] [--seconds 120]

One mesh (``benchmarks/mesh_tls_targets.py``: control plane with its CA, a server proxy and a
client proxy, mutual TLS between them, STRICT) fronts a Thrift and a Dubbo responder. Both
proxies ask for certificates of ``--cert-ttl`` seconds, renewed at half of it. For
``--seconds``:

- held connections: ``loadgen.py`` for each protocol, an open loop of ``--rate`` requests/s on 4
  connections that stay open the whole run (every reply's id checked, a lost connection
  counted);
- real clients on fresh connections every second: Apache ``thrift`` (5 x ``add(n, 40)``) and
  ``dubbo-py`` (5 x ``sayHello``), each call checked;
- a TLS client (Python ``ssl``, a mesh client certificate) connecting to the server proxy's
  inbound port every 2 s and recording the certificate it presents.

It passes when nothing failed (no error reply, id mismatch, lost connection, failed call or
refused probe), each proxy counted at least ``--min-rotations`` rotations
(``metamesh_tls_certificate_rotations_total``), the probes saw that many distinct server
certificates, and the mesh hop kept its connections: the server proxy's completed handshakes,
less the probes, are the client proxy's pooled connections, opened once. The summary is
printed and written to ``benchmarks/results/<date>-<time>-mesh-rotation.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.check_clients import dubbo_call, thrift_call
from benchmarks.compare import start_responder
from benchmarks.mesh_tls_configs import CLIENT_NAMESPACE, SERVER_ID, WORKLOAD
from benchmarks.mesh_tls_targets import MeshCa, TwoHop, start_metamesh
from benchmarks.processes import die_with_parent, stop_process

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("thrift", "dubbo")


def metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        found = re.search(rf"^{re.escape(name)} (\S+)$", r.read().decode(), re.M)
    return float(found[1]) if found else -1.0


def refused(admin: int) -> float:
    """TLS connections the proxy refused, all reasons."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("metamesh_tls_refused"))


class Probes:
    """Real clients on fresh connections, and the server certificate seen over time."""

    def __init__(self, ports: dict[str, int], inbound: tuple[str, int], ca: MeshCa) -> None:
        self.ports, self.inbound = ports, inbound
        self.calls = {p: 0 for p in PROTOCOLS}
        self.failures: list[str] = []
        self.serials: list[tuple[float, int]] = []
        cert, key = ca.issue(CLIENT_NAMESPACE, "sleep")
        self.context = ssl.create_default_context(cafile=str(ca.root))
        self.context.check_hostname = False
        self.context.load_cert_chain(cert, key)
        self.stop = threading.Event()

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        tick = 0
        while not self.stop.is_set() and time.monotonic() - start < seconds:
            for protocol, call in (("thrift", thrift_call), ("dubbo", dubbo_call)):
                try:
                    call(self.ports[protocol], 5)
                    self.calls[protocol] += 5
                except Exception as exc:  # any failure is the finding
                    self.failures.append(f"{time.monotonic() - start:.1f}s {protocol}: {exc!r}")
            if tick % 2 == 0:
                self.certificate(time.monotonic() - start)
            tick += 1
            self.stop.wait(max(0.0, start + tick - time.monotonic()))

    def certificate(self, at: float) -> None:
        from cryptography import x509

        try:
            with (
                socket.create_connection(self.inbound, 5) as raw,
                self.context.wrap_socket(raw) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
            if uris != [SERVER_ID]:
                self.failures.append(f"{at:.1f}s inbound presented {uris}")
            self.serials.append((round(at, 1), cert.serial_number))
        except (OSError, ssl.SSLError, AssertionError) as exc:
            self.failures.append(f"{at:.1f}s TLS probe: {exc!r}")


def loadgen(protocol: str, port: int, rate: int, seconds: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--protocol", protocol, "--port", str(port)]
    cmd += ["--shape", f"r{rate}", "--warmup", "0.5", "--duration", str(seconds)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cert-ttl", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--rate", type=int, default=500, help="requests/s per protocol, held conns")
    p.add_argument("--min-rotations", type=int, default=4)
    p.add_argument("--build", choices=["native", "pure"], default="native")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # dubbo-py warns of every connection it closes
    workdir = Path(tempfile.mkdtemp(prefix="mesh-rotation-"))
    ca = MeshCa(workdir / "ca")
    responders = {proto: start_responder(proto, workdir, args.seconds + 600) for proto in PROTOCOLS}
    target = TwoHop("metamesh", "thrift", workdir)
    report: dict[str, Any] = {}
    try:
        more = {"dubbo": responders["dubbo"][1]}
        start_metamesh(target, ca, responders["thrift"][1], args.build, args.cert_ttl, more)
        admin = target.admin
        before = {
            side: metric(admin[side], "metamesh_tls_certificate_rotations_total")
            for side in ("client", "server")
        }
        probes = Probes(target.ports, (WORKLOAD, responders["thrift"][1]), ca)
        loads = {proto: loadgen(proto, target.ports[proto], args.rate, args.seconds)
                 for proto in PROTOCOLS}  # fmt: skip
        t0 = time.monotonic()
        probes.run(args.seconds + 0.5)
        held = {}
        for proto, proc in loads.items():
            out, err = proc.communicate(timeout=120)
            try:
                held[proto] = json.loads(out)
            except json.JSONDecodeError:
                held[proto] = {"failed": f"loadgen exit {proc.returncode}: {err[-500:]}"}
        elapsed = time.monotonic() - t0
        rotations = {
            side: metric(admin[side], "metamesh_tls_certificate_rotations_total") - before[side]
            for side in ("client", "server")
        }
        refusals = {side: refused(admin[side]) for side in ("client", "server")}
        handshakes = metric(admin["server"], "metamesh_tls_handshakes_total")
        renewals = metric(
            admin["control-plane"], 'metamesh_ca_certificates_issued_total{auth="cert"}'
        )
        alive = all(proc.poll() is None for proc in target.procs.values())
        report = {
            "cert_ttl_s": args.cert_ttl,
            "seconds": round(elapsed, 1),
            "build": target.version,
            "held_connections": {
                proto: {
                    k: r.get(k)
                    for k in (
                        "completed",
                        "rps",
                        "errors",
                        "id_mismatches",
                        "connections_lost",
                        "not_sent",
                        "failed",
                    )
                }
                for proto, r in held.items()
            },
            "fresh_connection_calls": probes.calls,
            "failures": probes.failures,
            "rotations": rotations,
            "ca_renewals_by_certificate": renewals,
            "server_certificates_seen": len({s for _, s in probes.serials}),
            "server_tls_handshakes": handshakes,
            "tls_probes": len(probes.serials),
            "mesh_hop_connections": handshakes - len(probes.serials),
            "tls_refusals": refusals,
            "proxies_alive": alive,
        }
    finally:
        target.stop()
        for proc, _ in responders.values():
            stop_process(proc)
    checks = {
        "no failed call or probe": not report.get("failures"),
        "no TLS refusal": not any(report.get("tls_refusals", {"?": 1}).values()),
        "held connections: no error, mismatch, loss": all(
            not r.get("failed")
            and not r.get("errors")
            and not r.get("id_mismatches")
            and not r.get("connections_lost")
            and not r.get("not_sent")
            and r.get("completed")
            for r in report.get("held_connections", {}).values()
        ),
        f"each proxy rotated >= {args.min_rotations} times": all(
            n >= args.min_rotations for n in report.get("rotations", {}).values()
        ),
        f"probes saw >= {args.min_rotations + 1} server certificates": report.get(
            "server_certificates_seen", 0
        )
        >= args.min_rotations + 1,
        "both proxies alive": bool(report.get("proxies_alive")),
    }
    report["checks"] = checks
    passed = bool(report) and all(checks.values())
    text = json.dumps(report, indent=1)
    print(text)
    print("PASS" if passed else "FAIL")
    if not args.no_save:
        now = datetime.datetime.now(datetime.UTC)
        out = HERE / "results" / f"{now:%Y-%m-%d-%H%M%S}-mesh-rotation"
        out.with_suffix(".json").write_text(text)
        command = "benchmarks/mesh_rotation.py " + " ".join(argv or sys.argv[1:])
        lines = [f"# Rotation under traffic: {now:%Y-%m-%d %H:%M} UTC", "", f"`{command}`", ""]
        lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
        lines += ["", "```json", text, "```", "", "PASS" if passed else "FAIL", ""]
        out.with_suffix(".md").write_text("\n".join(lines))
        print(f"saved {out}.md and .json", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
