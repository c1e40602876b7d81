"""The watched directory under load limits: what is refused, and what stays in force."""

from __future__ import annotations

import time
from pathlib import Path

from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.control.model import MeshModel
from metamesh.control.sources import FileSource, Held
from tests.api.bombs import LARGE_BOMB, SMALL_BOMB, bomb_service_entry
from tests.control.cases import router, rules, service_entry
from tests.control.test_sources import KV, KV2, write


class Sink:
    def __init__(self, limits: LoadLimits = DEFAULT_LIMITS) -> None:
        self.models: list[MeshModel] = []
        self.lines: list[str] = []
        self.limits = limits

    def source(self, directory: Path) -> FileSource:
        return FileSource(
            directory, self.models.append, report=self.lines.append, limits=self.limits
        )

    def take(self) -> list[str]:
        lines = list(self.lines)
        self.lines.clear()
        return lines


def test_alias_bombs_are_held_back_and_the_other_files_are_served(tmp_path: Path) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    write(tmp_path / "bomb.yaml", SMALL_BOMB)
    sink = Sink()
    source = sink.source(tmp_path)
    start = time.perf_counter()
    model = source.load()
    assert time.perf_counter() - start < 1.0
    assert model is not None and set(model.services) == {KV, KV2}
    bomb = tmp_path / "bomb.yaml"
    lines = sink.take()
    assert lines[0].startswith(f"{bomb}:1: error: document refused: YAML aliases expand it to ")
    assert lines[1] == (
        f"{bomb}: 1 error; nothing from it is served until it is fixed; "
        "the rest of the directory stays in force"
    )
    assert source.held == {str(bomb): Held.NOTHING}

    # a good file edited into a bomb: its last good version stays, the other edits apply
    write(tmp_path / "kv.yaml", LARGE_BOMB.replace("name: bomb", "name: kv"))
    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.6]"))
    start = time.perf_counter()
    model = source.load()
    assert time.perf_counter() - start < 1.0
    assert model is not None and model.services[KV].addresses == ("127.0.10.9",)
    assert model.services[KV2].addresses == ("127.0.10.6",)
    assert source.held == {str(bomb): Held.NOTHING, str(tmp_path / "kv.yaml"): Held.LAST_GOOD}


def test_a_directory_over_max_resources_is_refused_whole_and_the_model_stays(
    tmp_path: Path,
) -> None:
    write(tmp_path / "kv.yaml", service_entry() + "---" + rules() + "---" + router())
    sink = Sink(LoadLimits(max_resources=3))
    source = sink.source(tmp_path)
    first = source.load()
    assert first is not None and sink.take() == []

    write(tmp_path / "kv2.yaml", service_entry(host="kv2", addresses="[127.0.10.8]"))
    assert source.load() is None
    assert source.model is first and sink.models == [first] and source.rejected == 1
    kv2 = tmp_path / "kv2.yaml"
    message = (
        f"{kv2}:2: error: ServiceEntry ns/kv2: over the limit of 3 resources in one load "
        "(max_resources): the whole load is refused"
    )
    assert sink.take() == [f"{message}; config 1 stays in force"]
    assert [p.format() for p in source.problems] == [message]

    kv2.unlink()
    assert source.load() is None  # what is in force did not change
    assert sink.take() == [f"{tmp_path}: config 1 back in force"]

    # at startup, nothing is served
    write(kv2, service_entry(host="kv2", addresses="[127.0.10.8]"))
    fresh = Sink(LoadLimits(max_resources=3))
    assert fresh.source(tmp_path).load() is None and fresh.models == []
    assert fresh.take() == [f"{message}; nothing to serve yet"]


def test_a_file_grown_past_max_file_bytes_keeps_its_last_good_version(tmp_path: Path) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    sink = Sink(LoadLimits(max_file_bytes=2_000))
    source = sink.source(tmp_path)
    assert source.load() is not None
    grown = service_entry(addresses="[127.0.10.7]") + "#" * 2_000 + "\n"
    write(tmp_path / "kv.yaml", grown)
    assert source.load() is None
    assert source.model is not None and source.model.services[KV].addresses == ("127.0.10.9",)
    kv = tmp_path / "kv.yaml"
    assert sink.take() == [
        f"{kv}: error: {len(grown):,} bytes is over the limit of 2,000 bytes per file "
        "(max_file_bytes): not read",
        f"{kv}: 1 error; its last good version stays in force; "
        "the rest of the directory stays in force",
    ]
    assert source.held == {str(kv): Held.LAST_GOOD}


def test_a_recursive_alias_is_held_back(tmp_path: Path) -> None:
    write(tmp_path / "kv.yaml", service_entry())
    write(tmp_path / "loop.yaml", bomb_service_entry(1, 1, "loop") + "  b: &b [*b]\n")
    sink = Sink()
    model = sink.source(tmp_path).load()
    assert model is not None and set(model.services) == {KV}
    assert "refers to a node that contains it" in sink.take()[0]
