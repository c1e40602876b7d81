"""From a saved file to the model handed to the ADS server, in process (issue 21).

What runs: :func:`metamesh.control.embedded.start_control_plane` (the ADS server with its
scoped translator and the :class:`~metamesh.control.sources.FileSource`, as
``metamesh control-plane --config-dir`` runs them) on the directory
:mod:`benchmarks.control_plane_scale` generates (``--services`` services x 10 routes, one file
per service, root-namespace Sidecar), and the file source's real watcher
(:meth:`FileSource.run`, inotify via watchfiles). No xDS client is connected: this measures
the file source and the ADS debounce only (:mod:`benchmarks.control_plane_scale` measures the
pushes to 200 proxies).

Each edit rewrites one service's file (``os.replace``, its MetaRouter's default subset
flipped) and records, from the replace: when :meth:`FileSource.load` starts (the watcher's
grouping), how long it takes, and when the ADS server applies the model (its
``ADS: version N pushed``). ``--steps`` runs the watcher with each step size in turn
(``--edits`` edits each), so two settings are compared side by side in one run; medians are
printed per step size.

Run (takes ``/tmp/metamesh-bench.lock`` itself once the directory is loaded):
``.venv/bin/python -m benchmarks.file_source_edit --services 10000 --steps 30 10 30 10``
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import statistics
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from benchmarks.control_plane_scale import LOCK, generate, service_yaml, write
from metamesh.control.embedded import start_control_plane
from metamesh.control.sources import FileSource


async def measure(args: argparse.Namespace) -> dict[int, list[tuple[float, float, float]]]:
    with tempfile.TemporaryDirectory(prefix="mm-file-edit-") as tmp:
        directory = Path(tmp)
        shape = argparse.Namespace(services=args.services, namespaces=20, routes=10, scoped=True)
        generate(directory, shape)
        start = time.monotonic()
        ads, source, _ = await start_control_plane(directory, "127.0.0.1", 0, "default")
        assert isinstance(source, FileSource)
        print(f"loaded {args.services} services in {time.monotonic() - start:.1f} s", flush=True)
        marks: dict[str, float] = {}
        load, apply = source.load, ads._apply

        def timed_load(changed: Collection[str] | None = None) -> Any:
            marks["load"] = time.monotonic()
            try:
                return load(changed)
            finally:
                marks["loaded"] = time.monotonic()

        def timed_apply(model: Any) -> None:
            marks["applied"] = time.monotonic()
            apply(model)

        source.load = timed_load  # type: ignore[method-assign]
        ads._apply = timed_apply  # type: ignore[method-assign]
        lock = open(LOCK, "w")  # noqa: SIM115 (held until the process ends)
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        results: dict[int, list[tuple[float, float, float]]] = {}
        edits = 0
        file = directory / "ns05" / "svc0.yaml"
        try:
            for step in args.steps:
                source._step_ms, source._stop = step, asyncio.Event()  # a new run() each
                task = asyncio.create_task(source.run())
                await asyncio.sleep(0.5)  # the watcher is up
                for _ in range(args.edits):
                    edits += 1
                    marks.clear()
                    t0 = time.monotonic()
                    write(file, service_yaml("svc0", "ns05", 10, "v2" if edits % 2 else "v1"))
                    while "applied" not in marks:
                        await asyncio.sleep(0.001)
                    row = (
                        marks["load"] - t0,
                        marks["loaded"] - marks["load"],
                        marks["applied"] - t0,
                    )
                    results.setdefault(step, []).append(row)
                    await asyncio.sleep(0.3)
                source.stop()
                await task
        finally:
            await ads.stop()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--edits", type=int, default=8, help="edits per step size in --steps")
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 10, 30, 10])
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    for step, rows in results.items():
        edit_to_load, load, edit_to_applied = (
            statistics.median(c) * 1000 for c in zip(*rows, strict=True)
        )
        print(
            f"watcher step {step} ms: edit -> load {edit_to_load:.0f} ms, load {load:.0f} ms, "
            f"edit -> applied {edit_to_applied:.0f} ms (medians of {len(rows)} edits)",
            flush=True,
        )


if __name__ == "__main__":
    main()
