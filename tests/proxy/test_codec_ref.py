"""A codec named by import path is found as ``python -m`` would find it: on ``sys.path``, in
the current directory, in the config file's directory or the root of the package that holds
it; when none holds it, the error says where it looked."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config_yaml import ConfigError, load_snapshot

ROOT = Path(__file__).resolve().parents[2]
CODEC = (
    "from examples.kvrpc.kvrpc_codec import KvRpcCodec\n\n\nclass MyCodec(KvRpcCodec):\n    pass\n"
)
_unique = itertools.count()


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def package(parent: Path) -> str:
    """A fresh top-level package under ``parent`` holding ``codec.py``; its name."""
    name = f"codec_ref_pkg_{next(_unique)}"
    (parent / name).mkdir(parents=True)
    (parent / name / "__init__.py").write_text("")
    (parent / name / "codec.py").write_text(CODEC)
    return name


def test_found_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = package(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert resolve_codec(f"{name}.codec:MyCodec").__name__ == "MyCodec"
    assert sys.path[-1] == str(tmp_path)  # appended: installed packages come first


def test_found_beside_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = package(tmp_path / "conf")
    monkeypatch.chdir(tmp_path)  # not where the package is
    assert resolve_codec(f"{name}.codec:MyCodec", [tmp_path / "conf"]).__name__ == "MyCodec"


def test_a_config_inside_a_package_finds_the_package_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the layout of examples/proxy-static.yaml naming examples.kvrpc...: the config sits in the
    # package whose parent holds it
    name = package(tmp_path / "repo")
    config = tmp_path / "repo" / name / "proxy.yaml"
    text = (ROOT / "examples" / "proxy-static.yaml").read_text()
    config.write_text(
        text.replace("examples.kvrpc.kvrpc_codec:KvRpcCodec", f"{name}.codec:MyCodec")
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    snapshot = load_snapshot(config)
    assert snapshot.listeners["kv-19000"].codec == f"{name}.codec:MyCodec"


def test_not_found_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LookupError) as e:
        resolve_codec("nowhere_pkg.codec:C", [tmp_path / "conf"])
    assert str(e.value) == (
        "cannot import codec 'nowhere_pkg.codec:C': no module named 'nowhere_pkg' on sys.path, "
        f"nor in the current directory or the config's (searched {tmp_path}, {tmp_path / 'conf'})"
        "; run from the directory that holds 'nowhere_pkg' or set PYTHONPATH"
    )


def test_a_module_missing_inside_the_package_is_that_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = package(tmp_path)
    (tmp_path / name / "broken.py").write_text("import not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LookupError, match="No module named 'not_installed_anywhere'"):
        resolve_codec(f"{name}.broken:C")


def test_a_config_error_names_the_listener_and_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "proxy.yaml"
    text = (ROOT / "examples" / "proxy-static.yaml").read_text()
    config.write_text(text.replace("examples.kvrpc.kvrpc_codec:KvRpcCodec", "nowhere_pkg.c:C"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_snapshot(config)
    assert str(e.value).startswith(
        f"{config}: listeners[0] (name 'kv-19000'): field 'meta_protocol_proxy.codec.name': "
        "cannot import codec 'nowhere_pkg.c:C': no module named 'nowhere_pkg'"
    )
    assert f"(searched {tmp_path}, {tmp_path / 'conf'})" in str(e.value)
