"""load_paths with a cache parses only files that changed since the last load."""

from __future__ import annotations

import os
from pathlib import Path

from metamesh.api import load_paths
from metamesh.api.loader import LoadCache

AP = """apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {{name: {name}}}
spec: {{protocol: {name}, codec: aeraki.meta_protocol.codec.{codec}}}
"""


def names(result: object) -> list[str]:
    return [item.resource.metadata.name for item in result.items]  # type: ignore[attr-defined]


def test_unchanged_files_are_reused_changed_and_deleted_ones_are_not(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(AP.format(name="a", codec="dubbo"))
    (tmp_path / "b.yaml").write_text(AP.format(name="b", codec="thrift"))
    cache: LoadCache = {}
    first = load_paths([tmp_path], cache=cache)
    assert names(first) == ["a", "b"] and len(cache) == 2

    new = tmp_path / "b.yaml.tmp"  # replaced the way editors save: a new inode
    new.write_text(AP.format(name="b2", codec="thrift"))
    os.replace(new, tmp_path / "b.yaml")
    second = load_paths([tmp_path], cache=cache)
    assert names(second) == ["a", "b2"]
    assert second.items[0] is first.items[0]  # a.yaml was not parsed again
    assert second.items[1] is not first.items[1]

    (tmp_path / "a.yaml").unlink()
    third = load_paths([tmp_path], cache=cache)
    assert names(third) == ["b2"] and set(cache) == {tmp_path / "b.yaml"}


def test_problems_of_an_unchanged_bad_file_are_reported_again(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    cache: LoadCache = {}
    assert load_paths([tmp_path], cache=cache).problems
    again = load_paths([tmp_path], cache=cache)
    assert again.problems and "invalid YAML" in again.problems[0].message
