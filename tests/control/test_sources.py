"""The watched directory source: edits, additions, deletions and errors in a real temp dir."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from metamesh.control.model import MeshModel
from metamesh.control.sources import FileSource
from tests.control.cases import service_entry


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (as editors and kubectl-like tools do)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def scenario(tmp: Path) -> None:
    models: list[MeshModel] = []
    reports: list[str] = []
    write(tmp / "kv.yaml", service_entry())
    source = FileSource(tmp, models.append, report=reports.append)
    assert source.load() is not None
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0.2)  # let the watcher start
    try:
        assert set(models[-1].services) == {"kv.ns.svc.cluster.local"}

        # an addition
        write(tmp / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
        await until(lambda: len(models[-1].services) == 2, "the added file")

        # invalid YAML: reported with the file, the last good model stays
        count = len(models)
        (tmp / "broken.yaml").write_text("kind: ServiceEntry\nspec: [unclosed\n")
        await until(lambda: any("broken.yaml" in r for r in reports), "the YAML error")
        assert any("stays in force" in r for r in reports)
        assert len(models) == count and source.model is models[-1]

        # an invalid resource: kind, name and field are named
        write(tmp / "broken.yaml", service_entry(host="bad", port_name="tcp-metaprotocol-"))
        await until(lambda: any("ServiceEntry ns/bad" in r for r in reports), "the bad resource")
        assert len(models) == count

        # fixing it (by deletion) brings changes through again
        (tmp / "broken.yaml").unlink()
        await until(lambda: len(models) > count, "recovery")
        (tmp / "kv2.yaml").unlink()
        await until(lambda: len(models[-1].services) == 1, "the deletion")
        assert source.rejected == 2
    finally:
        source.stop()
        await asyncio.wait_for(task, 5)


def test_file_source_follows_the_directory(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
