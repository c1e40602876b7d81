"""The static config loader (``metamesh proxy --config``) under the same load limits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from metamesh.api.limits import LoadLimits
from metamesh.proxy.config_yaml import ConfigError, load_snapshot, parse_snapshot
from tests.api.bombs import nested_anchors
from tests.proxy.test_config import MINIMAL


@pytest.mark.parametrize(("levels", "width"), [(9, 9), (10, 12)])
def test_an_alias_bomb_is_refused_quickly(tmp_path: Path, levels: int, width: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(MINIMAL + "admin:\n" + "\n".join(nested_anchors(levels, width)) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        load_snapshot(path)
    assert time.perf_counter() - start < 1.0
    assert str(refused.value).startswith(f"{path}:2: document refused: YAML aliases expand it to ")
    assert "the limit is 1,000" in str(refused.value)


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^cfg:2: .*refers to a node that contains it"):
        parse_snapshot(MINIMAL + "admin: &a {loop: *a}\n", source="cfg")


def test_anchors_used_to_share_a_block_still_load() -> None:
    shared = MINIMAL.replace(
        "{address: {socket_address: {address: 127.0.0.1, port_value: 1}}}",
        "&ep {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"
        "        - endpoint: *ep",
    )
    assert "&ep" in shared
    assert len(parse_snapshot(shared).clusters["outbound|1|v1|svc"].endpoints) == 2


def test_a_file_over_max_file_bytes_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(MINIMAL)
    assert load_snapshot(path, LoadLimits(max_file_bytes=len(MINIMAL))).listeners
    with pytest.raises(ConfigError) as refused:
        load_snapshot(path, LoadLimits(max_file_bytes=100))
    assert str(refused.value) == (
        f"{path}: {len(MINIMAL)} bytes is over the limit of 100 bytes per file "
        "(max_file_bytes): not read"
    )


def test_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: 'utf-8' codec can't decode"):
        load_snapshot(path)
