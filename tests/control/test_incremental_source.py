"""The file source after an edit reads only the files the watcher named: every case compared
with a full reload of the same directory (a second source that walks it at every load)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from metamesh.api.problems import Problem
from metamesh.control.model import MeshModel, slot_address, vip_slot
from metamesh.control.sources import FileSource, Held
from tests.control.cases import router, rules, service_entry

KV = "kv.ns.svc.cluster.local"
KV2 = "kv2.ns.svc.cluster.local"
FRONT = "front.ns.svc.cluster.local"


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def routes_to(name: str, host: str, subset: str = "v1") -> str:
    """A MetaRouter for ``name`` whose only route goes to another service, ``host``."""
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: {name}, namespace: ns}}
spec:
  hosts: [{name}.ns.svc.cluster.local]
  routes: [{{name: all, route: [{{destination: {{host: {host}, subset: {subset}}}}}]}}]
"""


def _ordered(problems: list[Problem]) -> list[tuple[object, ...]]:
    return sorted((p.file, p.line or 0, p.severity, p.kind, p.name, p.field_path, p.message)
                  for p in problems)  # fmt: skip


class Pair:
    """One directory, loaded incrementally (the watcher's paths) and by a full reload."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lines: list[str] = []
        self.full_lines: list[str] = []
        self.models: list[MeshModel] = []
        self.source = FileSource(directory, self.models.append, report=self.lines.append)
        self.full = FileSource(
            directory, lambda model: None, report=self.full_lines.append, incremental=False
        )
        assert (self.source.load() is None) == (self.full.load() is None)
        self.check()

    def step(self, *changed: Path) -> MeshModel | None:
        """Load after ``changed`` (as the watcher reports them), and compare."""
        scans = self.source.watched.scans
        model = self.source.load({str(path) for path in changed})
        full = self.full.load()
        assert (model is None) == (full is None)
        self.check()
        self.rescanned = self.source.watched.scans > scans
        return model

    def check(self) -> None:
        assert self.source.model == self.full.model
        assert list(self.source.watched.files) == list(self.full.watched.files)
        assert _ordered(self.source.problems) == _ordered(self.full.problems)
        assert self.source.held == self.full.held
        assert self.lines == self.full_lines
        assert self.source.generation == self.full.generation

    def take(self) -> list[str]:
        lines = list(self.lines)
        self.lines.clear()
        self.full_lines.clear()
        return lines

    @property
    def services(self) -> set[str]:
        assert self.source.model is not None
        return set(self.source.model.services)


def _base(tmp: Path) -> Pair:
    write(tmp / "kv.yaml", service_entry() + "---" + rules() + "---" + router())
    write(
        tmp / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]") + "---" + rules("kv2")
    )
    return Pair(tmp)


def test_an_edit_reads_only_the_file_named(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    other = pair.source.watched.files[str(tmp_path / "kv2.yaml")]
    write(tmp_path / "kv.yaml", service_entry() + "---" + rules() + "---" + router("v2"))
    model = pair.step(tmp_path / "kv.yaml", tmp_path / "kv.tmp")
    assert model is not None and not pair.rescanned
    routed = model.services[KV].router
    assert routed is not None and routed.spec.routes[0].route[0].destination is not None
    assert routed.spec.routes[0].route[0].destination.subset == "v2"
    # the other file was not read again: its resources are the very same objects
    assert pair.source.watched.files[str(tmp_path / "kv2.yaml")] is other
    # a path reported without a change of content: nothing new is handed on
    assert pair.step(tmp_path / "kv2.yaml") is None


def test_a_deletion_an_addition_and_a_rename(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    (tmp_path / "kv2.yaml").unlink()
    assert pair.step(tmp_path / "kv2.yaml") is not None and pair.services == {KV}
    write(tmp_path / "a.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    assert pair.step(tmp_path / "a.yaml") is not None and pair.services == {KV, KV2}
    # a rename changes the load order (a.yaml came first, z.yaml comes last)
    os.rename(tmp_path / "a.yaml", tmp_path / "z.yaml")
    pair.step(tmp_path / "a.yaml", tmp_path / "z.yaml")
    assert pair.services == {KV, KV2} and not pair.rescanned
    assert list(pair.source.watched.files)[-1] == str(tmp_path / "z.yaml")


def test_a_file_that_turns_invalid_keeps_its_last_good_version_until_fixed(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    kv2 = tmp_path / "kv2.yaml"
    write(kv2, service_entry(host="kv2", addresses="[127.0.10.8]", extra="  portz: []"))
    assert pair.step(kv2) is None
    assert pair.take() == [
        f"{kv2}:13: error: ServiceEntry ns/kv2: spec.portz: unknown field 'portz'",
        f"{kv2}: 1 error; {Held.LAST_GOOD.value}; the rest of the directory stays in force",
    ]
    assert pair.source.held == {str(kv2): Held.LAST_GOOD} and pair.services == {KV, KV2}
    # another file's edit is applied meanwhile, and the error is said again
    write(tmp_path / "kv.yaml", service_entry() + "---" + rules() + "---" + router("v2"))
    assert pair.step(tmp_path / "kv.yaml") is not None
    assert len([line for line in pair.take() if "portz" in line]) == 1
    write(kv2, service_entry(host="kv2", addresses="[127.0.10.7]") + "---" + rules("kv2"))
    model = pair.step(kv2)
    assert model is not None and model.services[KV2].addresses == ("127.0.10.7",)
    assert pair.take() == [f"{tmp_path}: config 3 back in force"]


def test_a_reference_whose_target_moves_to_another_file(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    front = tmp_path / "front.yaml"
    write(
        front,
        service_entry(host="front", addresses="[127.0.10.5]")
        + "---"
        + routes_to("front", "kv2", "v2"),
    )
    assert pair.step(front) is not None
    # kv2's ServiceEntry and rule move from kv2.yaml to other.yaml in one change
    write(tmp_path / "other.yaml", (tmp_path / "kv2.yaml").read_text())
    (tmp_path / "kv2.yaml").unlink()
    model = pair.step(tmp_path / "kv2.yaml", tmp_path / "other.yaml")
    assert model is not None and pair.source.held == {} and pair.services == {KV, KV2, FRONT}
    # the target's rule loses subset v2: the router's file is held back
    write(
        tmp_path / "other.yaml",
        service_entry(host="kv2", addresses="[127.0.10.8]") + "---" + rules("kv2", "[v1]"),
    )
    pair.step(tmp_path / "other.yaml")
    lines = pair.take()
    assert any(str(front) in line and "subset 'v2'" in line for line in lines), lines
    # (its last good version is this one, which breaks too: nothing of it is served)
    assert pair.source.held == {str(front): Held.NOTHING} and pair.services == {KV, KV2}
    # the router follows: routed to v1, everything is in force again
    write(
        front,
        service_entry(host="front", addresses="[127.0.10.5]")
        + "---"
        + routes_to("front", "kv2", "v1"),
    )
    assert pair.step(front) is not None and pair.source.held == {}


def test_duplicates_across_files_and_the_first_one_going_away(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    twin = tmp_path / "twin.yaml"
    write(twin, service_entry(host="kv2", addresses="[127.0.10.3]"))
    pair.step(twin)
    assert any("duplicate resource" in line for line in pair.take())
    assert pair.source.held == {str(twin): Held.NOTHING}
    (tmp_path / "kv2.yaml").unlink()
    model = pair.step(tmp_path / "kv2.yaml")
    assert model is not None and model.services[KV2].addresses == ("127.0.10.3",)
    assert pair.source.held == {}


def test_directories_created_renamed_and_removed_are_walked_again(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "s.yaml", service_entry(host="s", addresses="[127.0.10.4]"))
    assert pair.step(sub, sub / "s.yaml") is not None and pair.rescanned
    os.rename(sub, tmp_path / "moved")
    assert pair.step(sub, tmp_path / "moved") is not None and pair.rescanned
    assert str(tmp_path / "moved" / "s.yaml") in pair.source.watched.files
    (tmp_path / "moved" / "s.yaml").unlink()
    (tmp_path / "moved").rmdir()
    assert pair.step(tmp_path / "moved" / "s.yaml", tmp_path / "moved") is not None
    assert pair.services == {KV, KV2}


def test_the_watcher_filter_takes_yaml_files_and_directories(tmp_path: Path) -> None:
    pair = _base(tmp_path)
    wants = pair.source.watched.wants
    (tmp_path / "dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert wants(0, str(tmp_path / "gone.yml"))  # type: ignore[arg-type]
    assert wants(0, str(tmp_path / "dir"))  # type: ignore[arg-type]
    assert not wants(0, str(tmp_path / "notes.txt"))  # type: ignore[arg-type]
    assert not wants(0, str(tmp_path / "kv.tmp"))  # type: ignore[arg-type]


async def _follows_a_directory_rename(tmp: Path) -> None:
    models: list[MeshModel] = []
    sub = tmp / "sub"
    sub.mkdir()
    write(sub / "kv.yaml", service_entry())
    source = FileSource(tmp, models.append, report=lambda line: None, step_ms=10)
    assert source.load() is not None
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0.2)  # let the watcher start
    try:
        os.rename(sub, tmp / "other")  # inotify names the directories only
        await _until(lambda: source.watched.scans == 2, "the walk after the rename")
        write(tmp / "other" / "kv.yaml", service_entry(addresses="[127.0.10.2]"))
        await _until(lambda: models[-1].services[KV].addresses == ("127.0.10.2",), "the edit")
        assert source.watched.scans == 2  # the edit read one file
    finally:
        source.stop()
        await asyncio.wait_for(task, 5)


async def _until(condition: object, what: str) -> None:
    for _ in range(500):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_watched_source_follows_a_directory_rename(tmp_path: Path) -> None:
    asyncio.run(_follows_a_directory_rename(tmp_path))


SIDECAR = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: istio-system}}
spec: {{egress: [{{hosts: ["./*", "ns/{host}.ns.svc.cluster.local"]}}]}}
"""
PROTOCOL = """
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {name: thrift, namespace: ns}
spec: {protocol: thrift, codec: thrift}
"""

#: An authorization policy whose warnings depend on the mesh workloads in its namespace.
POLICY = """
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: only-client, namespace: ns}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/ns/sa/client]}}]}]
"""
MESH_ENTRY = """
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {host}-mesh, namespace: ns}}
spec:
  hosts: [{host}-mesh]
  addresses: [127.0.11.1]
  ports: [{{number: 7000, name: tcp-metaprotocol-thrift-kv}}]
  endpoints: [{{address: 127.0.30.3, serviceAccount: client}}]
"""


def _random_file(rng: random.Random, hosts: list[str]) -> str:
    """A file of one to three documents drawn from services, rules, routers (to any host,
    perhaps an unknown subset), duplicates and errors."""
    docs = []
    for _ in range(rng.randint(1, 3)):
        host, target = rng.choice(hosts), rng.choice(hosts)
        address = f"[127.0.10.{rng.randint(1, 9)}]"
        docs.append(
            rng.choice(
                [
                    service_entry(host=host, addresses=address),
                    service_entry(host=host, addresses="[]"),
                    rules(host, rng.choice(["[v1]", "[v1, v2]"])),
                    routes_to(host, target, rng.choice(["v1", "v2"])),
                    router(rng.choice(["v1", "v2"]), host),
                    service_entry(host=host, extra="  portz: []"),
                    "kind: ServiceEntry\nspec: [unclosed\n",
                    SIDECAR.format(host=host),
                    PROTOCOL,
                    POLICY,
                    MESH_ENTRY.format(host=host),
                ]
            )
        )
    return "---".join(docs)


@pytest.mark.parametrize("seed", range(10))
def test_random_edits_give_what_a_full_reload_gives(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    hosts = ["a", "b", "c", "d"]
    names = [f"f{i}.yaml" for i in range(6)]
    for name in names[:4]:
        write(tmp_path / name, _random_file(rng, hosts))
    pair = Pair(tmp_path)
    for _ in range(40):
        name, other = rng.sample(names, 2)
        what = rng.random()
        if what < 0.6:
            write(tmp_path / name, _random_file(rng, hosts))
            pair.step(tmp_path / name)
        elif what < 0.8 and (tmp_path / name).exists():
            (tmp_path / name).unlink()
            pair.step(tmp_path / name)
        elif (tmp_path / name).exists():
            os.rename(tmp_path / name, tmp_path / other)
            pair.step(tmp_path / name, tmp_path / other)
    assert pair.source.checks.partial_runs > 0  # type: ignore[attr-defined]
    assert pair.source.builds is not None and pair.source.builds.partial_builds > 0


def test_an_address_taken_by_another_file_moves_the_allocated_one(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service_entry(host="a", addresses="[]"))
    pair = Pair(tmp_path)
    host = "a.ns.svc.cluster.local"
    assert pair.source.model is not None
    (allocated,) = pair.source.model.services[host].addresses
    assert allocated == slot_address(vip_slot(host))
    # b takes a's allocated address explicitly: a moves to the next free one
    write(tmp_path / "b.yaml", service_entry(host="b", addresses=f"[{allocated}]"))
    model = pair.step(tmp_path / "b.yaml")
    assert model is not None and model.services[host].addresses != (allocated,)
    (tmp_path / "b.yaml").unlink()
    model = pair.step(tmp_path / "b.yaml")
    assert model is not None and model.services[host].addresses == (allocated,)


async def _rescans(tmp: Path) -> None:
    write(tmp / "kv.yaml", service_entry())
    source = FileSource(tmp, lambda model: None, report=lambda line: None, rescan_s=0.2)
    assert source.load() is not None and source.watched.scans == 1
    task = asyncio.create_task(source.run())
    try:
        # nothing changes, yet the directory is walked again on the safety timer
        await _until(lambda: source.watched.scans >= 3, "two safety rescans")
    finally:
        source.stop()
        await asyncio.wait_for(task, 5)


def test_the_directory_is_walked_again_on_a_slow_safety_timer(tmp_path: Path) -> None:
    asyncio.run(_rescans(tmp_path))
