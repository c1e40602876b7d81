"""A large config drop does not stall traffic in ``metamesh up``.

Config parsing, validation and translation run off the proxy's event loop (issue 15): before,
a 50 MB directory of 170k ServiceEntries stopped traffic for over 45 s. Here ``metamesh up``
serves a Thrift service (real Apache servers) while a real Apache Thrift client calls ``echo``
in a loop; a generated directory of 5,000 ServiceEntries (about 2.5 MB, 50 files; 10 of them
Thrift services the proxy then serves) is moved into the watched directory at once. The
control plane loads it (the proxy's admin then lists the new clusters) and the client goes on
calling until a second after that.

Exact outcome: every call answered by the routed server, none failed; and the longest gap
between two consecutive replies stayed under :data:`MAX_GAP` (generous: a call takes about a
millisecond; the point is no multi-second stall while the drop is read, validated, translated
and applied).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import types
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import (
    DeployedMesh,
    ThriftClient,
    free_address,
    router,
    thrift_mesh,
    to,
    write,
)
from tests.runtime.thrift_servers import NamedCalc

pytestmark = [pytest.mark.chaos, pytest.mark.interop]  # ~12 s: not slow

SERVICES = 5000
FILES = 50
MAX_GAP = 1.0  # seconds between two replies
THRIFT_EVERY = 500  # 10 of the 5,000 services are Thrift ones


def bulk_service(i: int) -> str:
    """A ServiceEntry with a few endpoints and labels: most on an HTTP port (read, validated
    and not served by a meta-protocol proxy, as most of a real mesh), every
    :data:`THRIFT_EVERY`-th a Thrift one (a listener on an allocated loopback address: the
    proof the drop was applied)."""
    thrift = i % THRIFT_EVERY == 0
    port = "tcp-metaprotocol-thrift-bulk" if thrift else "http-bulk"
    addresses = "" if thrift else f"  addresses: [240.{i // 250}.{i % 250}.1]\n"
    endpoints = "".join(
        f"  - {{address: 10.{i // 250}.{i % 250}.{k}, "
        f"labels: {{app: bulk-{i}, version: v{k}, team: bulk, zone: zone-{k}}}}}\n"
        for k in range(1, 4)
    )
    return f"""---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: bulk-{i}, namespace: bulk, labels: {{team: bulk, generated: "true"}}}}
spec:
  hosts: [bulk-{i}.bulk.svc.cluster.local]
{addresses}  ports: [{{number: 9090, name: {port}}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
{endpoints}"""


def generate(directory: Path) -> int:
    """Write the bulk directory; its size in bytes."""
    directory.mkdir()
    per_file = SERVICES // FILES
    size = 0
    for f in range(FILES):
        text = "".join(bulk_service(f * per_file + j) for j in range(per_file))
        (directory / f"bulk-{f:02}.yaml").write_text(text)
        size += len(text)
    return size


def cluster_count(admin: str) -> int:
    with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=10) as r:
        dump = json.loads(r.read())
    return len(dump.get("clusters") or [])


def test_a_large_config_drop_does_not_stall_traffic(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    bulk = tmp_path / "bulk"
    size = generate(bulk)
    assert size > 2_000_000
    address, port = free_address()
    with ExitStack() as stack:
        v1, v2 = NamedCalc(calc_gen, "v1"), NamedCalc(calc_gen, "v2")
        s1 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v1), "framed", "binary"))
        s2 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v2), "framed", "binary"))
        thrift_mesh(config, address, port, s1.port, s2.port)
        write(config / "router.yaml", router(f"  - name: all\n    route: [{to('v1')}]"))
        up = stack.enter_context(DeployedMesh(tmp_path, "up", config))
        up.wait_for(f"{address}:{port}  thrift  all -> v1")
        admin = up.admin()
        before = cluster_count(admin)

        client = ThriftClient(calc_gen, address, port)
        stack.callback(client.close)
        replies: list[float] = []
        answers: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def call() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    answers.append(client.echo(str(n)))
                except Exception as e:  # counted, and the loop ends: the connection is gone
                    errors.append(f"{type(e).__name__}: {e}")
                    return
                replies.append(time.monotonic())

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        time.sleep(1.0)
        dropped = time.monotonic()
        os.rename(bulk, config / "bulk")  # the whole directory appears at once
        deadline = dropped + 120
        while cluster_count(admin) < before + SERVICES // THRIFT_EVERY:
            assert time.monotonic() < deadline, "the drop was never applied"
            time.sleep(0.2)
        applied = time.monotonic()
        time.sleep(1.0)
        stop.set()
        caller.join(30)
        assert not caller.is_alive(), "the client hangs in a call"

    assert errors == []
    assert answers == [f"v1:{n}" for n in range(1, len(answers) + 1)]
    during = [t for t in replies if dropped <= t <= applied + 1.0]
    assert len(during) > 10
    gaps = [b - a for a, b in itertools.pairwise(replies)]
    print(
        f"{len(answers)} calls, {len(during)} while the drop was applied "
        f"({applied - dropped:.1f} s after the move), longest gap {max(gaps) * 1000:.0f} ms"
    )
    assert max(gaps) < MAX_GAP, (
        f"longest gap {max(gaps):.2f} s; drop applied {applied - dropped:.1f} s after the move"
    )
