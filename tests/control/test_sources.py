"""The watched directory source: edits, additions, deletions and errors in a real temp dir."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from metamesh.control.model import MeshModel
from metamesh.control.sources import ConfigDirectoryError, FileSource, Held
from tests.control.cases import router, rules, service_entry

KV = "kv.ns.svc.cluster.local"
KV2 = "kv2.ns.svc.cluster.local"


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (as editors and kubectl-like tools do)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Sink:
    """The models handed on and the lines reported."""

    def __init__(self) -> None:
        self.models: list[MeshModel] = []
        self.lines: list[str] = []

    def source(self, directory: Path) -> FileSource:
        return FileSource(directory, self.models.append, report=self.lines.append)

    def take(self) -> list[str]:
        lines = list(self.lines)
        self.lines.clear()  # in place: the source holds this list's append
        return lines


def test_a_start_with_one_invalid_file_serves_the_others(tmp_path: Path) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    write(tmp_path / "bad.yaml", service_entry(host="bad", extra="  portz: []"))
    sink = Sink()
    source = sink.source(tmp_path)
    model = source.load()
    assert model is not None and sink.models == [model]
    assert set(model.services) == {KV, KV2}
    bad = tmp_path / "bad.yaml"
    assert sink.take() == [
        f"{bad}:13: error: ServiceEntry ns/bad: spec.portz: unknown field 'portz'",
        f"{bad}: 1 error; nothing from it is served until it is fixed; "
        "the rest of the directory stays in force",
    ]
    assert source.held == {str(bad): Held.NOTHING} and source.rejected == 1

    # the fix is served, and the log says the whole directory is in force again
    write(bad, service_entry(host="bad", addresses="[127.0.10.7]"))
    model = source.load()
    assert model is not None and set(model.services) == {KV, KV2, "bad.ns.svc.cluster.local"}
    assert sink.take() == [f"{tmp_path}: config 2 back in force"]
    assert source.held == {} and source.generation == 2


def test_a_later_edit_keeps_the_broken_files_last_good_version_and_applies_the_rest(
    tmp_path: Path,
) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    sink = Sink()
    source = sink.source(tmp_path)
    assert source.load() is not None
    write(tmp_path / "kv.yaml", "kind: ServiceEntry\nspec: [unclosed\n")
    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.6]"))
    model = source.load()
    assert model is not None
    assert model.services[KV].addresses == ("127.0.10.9",)  # kv.yaml's last good version
    assert model.services[KV2].addresses == ("127.0.10.6",)  # kv2.yaml's edit is in force
    lines = sink.take()
    assert lines[0].startswith(f"{tmp_path / 'kv.yaml'}:3: error: invalid YAML")
    assert lines[1] == (
        f"{tmp_path / 'kv.yaml'}: 1 error; its last good version stays in force; "
        "the rest of the directory stays in force"
    )
    # the same broken file again: reported again, nothing new handed on
    os.utime(tmp_path / "kv.yaml", ns=(1, 1))
    assert source.load() is None and len(sink.models) == 2
    assert len(sink.take()) == 2


def test_a_file_that_refers_to_a_held_back_file_is_held_back_too(tmp_path: Path) -> None:
    write(tmp_path / "a-kv.yaml", service_entry() + "---" + rules())
    write(tmp_path / "b-router.yaml", router("v2"))
    sink = Sink()
    source = sink.source(tmp_path)
    assert source.load() is not None
    # a-kv.yaml drops subset v2: it is valid, so it is served, and b-router.yaml, which needs
    # v2, falls back to its last good version... which needs v2 too, so nothing of it is served
    write(tmp_path / "a-kv.yaml", service_entry() + "---" + rules(subsets="[v1]"))
    model = source.load()
    assert model is not None
    assert [s.name for s in model.services[KV].subsets] == ["v1"]
    assert model.services[KV].router is None
    router_file = str(tmp_path / "b-router.yaml")
    assert source.held == {router_file: Held.NOTHING}
    lines = sink.take()
    assert "no DestinationRule for 'kv.ns.svc.cluster.local' defines subset 'v2'" in lines[0]
    assert lines[-1].startswith(f"{router_file}: 1 error; nothing from it is served")

    # at startup, a broken file takes the files that depend on it out with it
    fresh = Sink()
    write(tmp_path / "a-kv.yaml", service_entry(extra="  portz: []") + "---" + rules())
    write(tmp_path / "b-router.yaml", router("v1"))
    write(tmp_path / "c-kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    started = fresh.source(tmp_path)
    model = started.load()
    assert model is not None and set(model.services) == {KV2}
    assert set(started.held) == {str(tmp_path / "a-kv.yaml"), router_file}


def test_warnings_and_notes_are_logged_once_errors_at_every_load(tmp_path: Path) -> None:
    udp = service_entry(port_name="udp-metaprotocol-thrift-kv")
    write(tmp_path / "kv.yaml", udp)
    write(tmp_path / "vs.yaml", VIRTUAL_SERVICE)
    sink = Sink()
    source = sink.source(tmp_path)
    source.load()
    first = sink.take()
    assert [line.split(": ")[1] for line in first] == ["warning", "info"]
    assert "ServiceEntry ns/kv: spec.ports[0].name: port name 'udp-metaprotocol" in first[0]
    assert ": info: VirtualService: skipped 1 object (ns/reviews)" in first[1]
    # a reload with the same warnings (moved to other lines) logs nothing
    write(tmp_path / "kv.yaml", "\n\n" + udp)
    source.load()
    assert sink.take() == []
    # a new warning is logged; the old ones are not repeated
    write(tmp_path / "dr.yaml", rules(host="elsewhere"))
    source.load()
    (line,) = sink.take()
    assert "DestinationRule ns/elsewhere: spec.host: no ServiceEntry declares host" in line


IDENTITY_POLICY = """
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: only-client, namespace: ns}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]
"""


def test_a_policy_that_can_never_match_is_logged_at_start_and_not_on_reloads(
    tmp_path: Path,
) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "policy.yaml", IDENTITY_POLICY)
    sink = Sink()
    source = sink.source(tmp_path)
    model = source.load()
    assert model is not None and model.services[KV].authorization  # served as written
    policy = tmp_path / "policy.yaml"
    assert sink.take() == [
        f"{policy}:7: warning: MetaAuthorizationPolicy ns/only-client: spec.rules: this ALLOW "
        "policy can never match (every rule requires a peer identity), so every request to "
        "the services it selects is denied",
        f"{policy}:7: warning: MetaAuthorizationPolicy ns/only-client: spec.rules[0]: this "
        "rule can never match: each of its sources requires a peer identity (principals or "
        "namespaces), which only the inbound side of a mesh workload (an endpoint with a "
        "serviceAccount) verifies, and the services this policy selects have none; so this "
        "ALLOW rule allows nothing",
    ]
    write(tmp_path / "kv.yaml", service_entry(addresses="[127.0.10.5]"))
    assert source.load() is not None and sink.take() == []


VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: ns}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"""


def test_lines_are_logged_at_their_severity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "vs.yaml", VIRTUAL_SERVICE)
    write(tmp_path / "tab.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n\tname: x\n")
    caplog.set_level(logging.INFO, logger="metamesh.control.sources")
    source = FileSource(tmp_path, lambda model: None)
    assert source.load() is not None
    levels = [(r.levelname, r.getMessage().split(": ")[1][:7]) for r in caplog.records]
    assert levels == [("ERROR", "error"), ("INFO", "info"), ("ERROR", "1 error")]
    assert "a tab character (column 1)" in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage().startswith(f"{tmp_path / 'tab.yaml'}:4: error:")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigDirectoryError) as missing:
        FileSource(tmp_path / "nope", lambda model: None)
    assert str(missing.value) == f"config directory {str(tmp_path / 'nope')!r} does not exist"
    (tmp_path / "file.yaml").write_text("")
    with pytest.raises(ConfigDirectoryError, match="is not a directory"):
        FileSource(tmp_path / "file.yaml", lambda model: None)


def test_a_directory_removed_while_watched_keeps_the_config(tmp_path: Path) -> None:
    directory = tmp_path / "config"
    directory.mkdir()
    write(directory / "kv.yaml", service_entry())
    sink = Sink()
    source = sink.source(directory)
    assert source.load() is not None
    (directory / "kv.yaml").unlink()
    directory.rmdir()
    assert source.load() is None
    assert sink.take() == [f"{directory}: config directory is gone; config 1 stays in force"]


def test_a_start_with_every_file_broken_hands_on_nothing(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "a: [\n")
    sink = Sink()
    assert sink.source(tmp_path).load() is None and sink.models == []


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
        assert set(models[-1].services) == {KV}

        # an addition
        write(tmp / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
        await until(lambda: len(models[-1].services) == 2, "the added file")

        # invalid YAML: reported with the file; the rest stays in force
        count = len(models)
        (tmp / "broken.yaml").write_text("kind: ServiceEntry\nspec: [unclosed\n")
        await until(lambda: any("broken.yaml" in r for r in reports), "the YAML error")
        assert any("stays in force" in r for r in reports)
        assert len(models) == count and source.model is models[-1]

        # an invalid resource: kind, name and field are named
        write(tmp / "broken.yaml", service_entry(host="bad", port_name="tcp-metaprotocol-"))
        await until(lambda: any("ServiceEntry ns/bad" in r for r in reports), "the bad resource")
        assert len(models) == count

        # other files' changes are not held back by the broken one
        (tmp / "kv2.yaml").unlink()
        await until(lambda: len(models[-1].services) == 1, "the deletion")

        # fixing it (by deletion) puts the whole directory back in force
        (tmp / "broken.yaml").unlink()
        await until(lambda: any("back in force" in r for r in reports), "recovery")
        assert source.rejected == 3 and source.held == {}
    finally:
        source.stop()
        await asyncio.wait_for(task, 5)


def test_file_source_follows_the_directory(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
