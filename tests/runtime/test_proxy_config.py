"""``metamesh proxy-config``: one kind of config as a table or as JSON, read from a real proxy's
admin, and a plain sentence when no proxy answers at the address."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from metamesh.cli import main
from metamesh.proxy.config_yaml import load_snapshot
from metamesh.runtime.proxy_config import VIEWS, fetch_config_dump, select
from tests.runtime.proxy_thread import ProxyThread

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "examples" / "proxy-static.yaml"


def test_select_gives_each_kind_alone() -> None:
    dump = load_snapshot(STATIC).to_dict()
    assert [x["name"] for x in select("listeners", dump)] == ["kv-19000"]
    assert [x["name"] for x in select("routes", dump)] == ["kv.example_19000"]
    clusters = select("clusters", dump)
    assert [c["name"] for c in clusters] == [
        "outbound|19000|v1|kv.example",
        "outbound|19000|v2|kv.example",
    ]
    endpoints = select("endpoints", dump)
    assert [(e["cluster"], [p["port"] for p in e["endpoints"]]) for e in endpoints] == [
        ("outbound|19000|v1|kv.example", [20001]),
        ("outbound|19000|v2|kv.example", [20002, 20003]),
    ]
    with pytest.raises(ValueError, match="unknown view 'secrets'"):
        select("secrets", dump)


@pytest.mark.parametrize("view", VIEWS)
def test_json_output_of_a_running_proxy_is_that_kind_only(
    view: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with ProxyThread(load_snapshot(STATIC), admin_port=0) as proxy:
        assert proxy.server is not None
        admin = f"127.0.0.1:{proxy.server.bound_admin_port}"
        assert main(["proxy-config", view, "-o", "json", "--admin", admin]) == 0
        dump = fetch_config_dump(admin)
    printed = json.loads(capsys.readouterr().out)
    assert isinstance(printed, list) and printed
    assert printed == select(view, dump)
    assert set(dump) > {"listeners", "clusters", "route_configs"}  # the rest is left out


def test_table_output_of_a_running_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    with ProxyThread(load_snapshot(STATIC), admin_port=0) as proxy:
        assert proxy.server is not None
        admin = f"127.0.0.1:{proxy.server.bound_admin_port}"
        assert main(["proxy-config", "routes", "--admin", admin]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ROUTE", "CONFIG", "ROUTE", "MATCH", "DESTINATION"]
    assert lines[1].startswith("kv.example_19000  canary-by-user  method=get && user^=beta-")


def test_no_proxy_at_the_admin_address_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        admin = f"127.0.0.1:{s.getsockname()[1]}"
        assert main(["proxy-config", "listeners", "--admin", admin]) == 1
    assert capsys.readouterr().err == (
        f"metamesh proxy-config: no proxy admin at {admin} (connection refused): "
        "is a proxy running? use --admin HOST:PORT\n"
    )


def test_stats_of_a_running_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    with ProxyThread(load_snapshot(STATIC), admin_port=0) as proxy:
        assert proxy.server is not None
        admin = f"127.0.0.1:{proxy.server.bound_admin_port}"
        assert main(["proxy-config", "stats", "--admin", admin, "-o", "json"]) == 0
        samples = json.loads(capsys.readouterr().out)
        assert main(["proxy-config", "stats", "--match", "metamesh_", "--admin", admin]) == 0
    assert samples and all(set(s) == {"name", "labels", "value"} for s in samples)
    assert not any(s["name"].endswith("_bucket") for s in samples)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["NAME", "LABELS", "VALUE"] and len(rows) > 1
    assert all(r[0].startswith("metamesh_") for r in rows[1:])
