"""Control-plane benchmarks: file change -> route in force, and translate + push at scale.

1. **Edit latency.** ``metamesh``'s embedded pieces wired exactly as ``metamesh up`` wires them
   (FileSource -> AdsServer -> loopback gRPC -> XdsClient on the control thread's asyncio loop,
   the snapshot handed to the ProxyServer on the main thread's uvloop loop), on
   a temp directory with one Thrift service. The MetaRouter file is rewritten ``--edits``
   times, alternating the route's subset; each sample is the time from the ``os.replace`` of
   the file to the proxy core holding a route table whose first route sends to the new subset.
2. **Scale.** A model of ``--services`` services with ``--routes`` MetaRouter routes each is
   built from generated resources; reported: ``translate()`` time, and the time for an ADS
   push of the whole snapshot to a real xDS client over loopback until it has applied the
   complete config (conversion and dry-run validation included).

Run: ``.venv/bin/python -m benchmarks.control_plane [--edits 10] [--services 1000 --routes 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from metamesh.api import load_text
from metamesh.control.embedded import start_control_plane, start_proxy
from metamesh.control.model import build_model
from metamesh.control.to_proxy import to_snapshot
from metamesh.control.translate import translate
from metamesh.proxy.config import Snapshot
from metamesh.runtime.loops import LoopThread, proxy_loop_factory
from metamesh.runtime.xds_client import XdsClient
from metamesh.runtime.xds_state import resources_to_snapshot
from metamesh.xds.resources import ProxyNode
from metamesh.xds.server import AdsServer

HOST = "bench.demo.svc.cluster.local"


def service(host: str, address: str, port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {host.split(".")[0]}, namespace: demo}}
spec:
  hosts: [{host}]
  addresses: [{address}]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-x}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-x: 1}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-x: 2}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {host.split(".")[0]}, namespace: demo}}
spec:
  host: {host}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"""


def router(host: str, routes: int, last_subset: str) -> str:
    items = [
        f"  - name: r{i}\n    match: {{attributes: {{method: {{exact: m{i}}}}}}}\n"
        f"    route: [{{destination: {{host: {host}, subset: v{1 + i % 2}}}}}]"
        for i in range(routes - 1)
    ]
    items.append(
        f"  - name: rest\n    route: [{{destination: {{host: {host}, subset: {last_subset}}}}}]"
    )
    return (
        "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\n"
        f"metadata: {{name: {host.split('.')[0]}, namespace: demo}}\n"
        f"spec:\n  hosts: [{host}]\n  routes:\n" + "\n".join(items) + "\n"
    )


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.001)


async def edit_latency(edits: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write(directory / "service.yaml", service(HOST, "127.0.10.77", 17000))
        write(directory / "router.yaml", router(HOST, 1, "v1"))
        # as `metamesh up` wires them: the control side on its own thread and loop, the proxy
        # on this (uvloop) loop, snapshots handed over between the two
        control = LoopThread("bench-control")
        control.start()
        ads, source, port = await control.run(
            start_control_plane(directory, "127.0.0.1", 0, "default")
        )
        proxy, client = await start_proxy(
            f"127.0.0.1:{port}", ProxyNode("bench"), None, lambda snapshot: None, None
        )
        running = [
            asyncio.wrap_future(control.submit(source.run())),
            asyncio.wrap_future(control.submit(client.run())),
        ]

        def routed_to(subset: str) -> bool:
            config = proxy.core.snapshot.route_configs.get(f"{HOST}_17000")
            return bool(
                config and config.routes and f"|{subset}|" in config.routes[0].route.cluster
            )

        await until(lambda: routed_to("v1"))
        await asyncio.sleep(0.3)  # the watcher is up
        samples = []
        for i in range(edits):
            subset = "v2" if i % 2 == 0 else "v1"
            start = time.perf_counter()
            write(directory / "router.yaml", router(HOST, 1, subset))
            await until(lambda s=subset: routed_to(s))  # type: ignore[misc]
            samples.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)
        control.call(source.stop)
        control.call(client.stop)
        await asyncio.gather(*running)
        await proxy.close()
        await control.run(ads.stop(0))
        await control.stop()
        return samples


def big_model(services: int, routes: int) -> object:
    parts = []
    for i in range(services):
        host = f"svc{i}.demo.svc.cluster.local"
        parts.append(service(host, f"127.241.{i // 250}.{i % 250 + 1}", 9000))
        parts.append(router(host, routes, "v1"))
    resources = load_text("\n---\n".join(parts))
    assert not resources.problems, resources.problems[:3]
    return build_model(resources)


async def push_time(model: object, services: int) -> float:
    ads = AdsServer(translate, model, quiet=0.0, max_delay=0.0)
    port = await ads.start()
    applied: list[Snapshot] = []

    async def apply(snapshot: Snapshot) -> None:
        applied.append(snapshot)

    start = time.perf_counter()
    client = XdsClient(
        f"127.0.0.1:{port}", ProxyNode("bench"), resources_to_snapshot(to_snapshot), apply
    )
    task = asyncio.create_task(client.run())
    await until(lambda: bool(applied) and len(applied[-1].listeners) == services, 600)
    took = time.perf_counter() - start
    client.stop()
    await task
    await ads.stop(0)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=10)
    args = parser.parse_args()

    with asyncio.Runner(loop_factory=proxy_loop_factory()) as runner:
        samples = runner.run(edit_latency(args.edits))
    ms = sorted(s * 1000 for s in samples)
    print(
        f"file change -> route in force: median {statistics.median(ms):.0f} ms, "
        f"min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms over {len(ms)} edits"
    )

    start = time.perf_counter()
    model = big_model(args.services, args.routes)
    print(
        f"YAML load + model build, {args.services} services x {args.routes} routes: "
        f"{time.perf_counter() - start:.2f} s"
    )
    start = time.perf_counter()
    resources = translate(model)  # type: ignore[arg-type]
    took = time.perf_counter() - start
    counts = {k.rsplit(".", 1)[-1]: len(v) for k, v in resources.by_type.items()}
    print(f"translate: {took * 1000:.0f} ms -> {counts}")
    pushed = asyncio.run(push_time(model, args.services))
    print(f"ADS push of the full snapshot to a real xDS client, applied: {pushed:.2f} s")


if __name__ == "__main__":
    main()
