"""The interception rules: the nft script for each setting, exclusions, and (as root, in a
network namespace of the test's own) loading, replacing and removing the table."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from metamesh.runtime.intercept import (
    InterceptSettings,
    exclusion_for,
    parse_exclusion,
    render_rules,
)
from tests.runtime.netns import Namespace, namespaces_unavailable


def output_rules(script: str) -> list[str]:
    chain = script.split("chain output {", 1)[1].split("}", 1)[0]
    return [line.strip() for line in chain.strip().splitlines()[1:]]


def test_default_rules_follow_istio_ports_and_exempt_the_proxy_mark_first() -> None:
    script = render_rules(InterceptSettings())
    assert script.startswith("table inet metamesh\ndelete table inet metamesh\n")
    assert output_rules(script) == [
        "meta mark 0x539 return",
        "udp dport 53 redirect to :15053",
        "tcp dport 53 redirect to :15053",
        "ip daddr 127.0.0.1 return",
        "ip6 daddr ::1 return",
        "meta l4proto tcp redirect to :15001",
    ]
    prerouting = script.split("chain prerouting {", 1)[1]
    assert 'iifname "lo" return' in prerouting
    assert "tcp dport { 15001, 15006, 15053 } return" in prerouting
    assert "meta l4proto tcp redirect to :15006" in prerouting


def test_options_change_the_rules() -> None:
    settings = InterceptSettings(
        outbound_port=16001,
        dns_port=None,
        exclude_outbound=(("10.0.0.7", 15010), ("10.9.0.0/16", 0), ("fd00::7", 15010)),
        exclude_inbound_ports=(22,),
        exclude_uid=1337,
        inbound=False,
    )
    script = render_rules(settings)
    assert output_rules(script) == [
        "meta mark 0x539 return",
        "meta skuid 1337 return",
        "ip daddr 127.0.0.1 return",
        "ip6 daddr ::1 return",
        "ip daddr 10.0.0.7 tcp dport 15010 return",
        "ip daddr 10.9.0.0/16 return",
        "ip6 daddr fd00::7 tcp dport 15010 return",
        "meta l4proto tcp redirect to :16001",
    ]
    assert "prerouting" not in script and "dport 53" not in script


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.7:15010", ("10.0.0.7", 15010)),
        ("10.0.0.7", ("10.0.0.7", 0)),
        ("10.9.1.2/16", ("10.9.0.0/16", 0)),
        ("10.9.0.0/16:443", ("10.9.0.0/16", 443)),
        ("[fd00::7]:15010", ("fd00::7", 15010)),
        ("fd00:0::7", ("fd00::7", 0)),
        ("[fd00::/64]", ("fd00::/64", 0)),
    ],
)
def test_parse_exclusion(text: str, expected: tuple[str, int]) -> None:
    assert parse_exclusion(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("cp.example:15010", "'cp.example' is not an IP address"),
        ("10.0.0.7:http", "'http' is not a port"),
        ("10.0.0.7:70000", "'70000' is not a port"),
        ("[fd00::7]x", "'x' is not a port"),
    ],
)
def test_bad_exclusions_are_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_exclusion(text)


def test_the_proxys_own_targets_are_excluded_only_when_they_are_addresses() -> None:
    assert exclusion_for("10.0.0.7:15010") == ("10.0.0.7", 15010)
    assert exclusion_for("[fd00::7]:15010") == ("fd00::7", 15010)
    assert exclusion_for("istiod.istio-system:15010") is None


def test_cli_print_shows_the_script_and_options_reach_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metamesh", "intercept", "--print", "--no-dns",
         "--intercept-exclude", "10.0.0.7:15010", "--intercept-inbound-port", "-1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ip daddr 10.0.0.7 tcp dport 15010 return" in done.stdout
    assert "dport 53" not in done.stdout and "prerouting" not in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "metamesh", "intercept", "--print", "--intercept-exclude", "x:1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "--intercept-exclude: 'x:1'" in bad.stderr


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    import secrets

    ns = Namespace(f"mm-rules-{secrets.token_hex(3)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def test_install_replace_and_remove_in_a_namespace(namespace: Namespace) -> None:
    """Run in the namespace (a child process: this one stays in the machine's namespace)."""
    script = """
from metamesh.runtime.intercept import InterceptSettings, install, installed, remove
install(InterceptSettings(outbound_port=15001))
install(InterceptSettings(outbound_port=16001))  # over a table left behind: replaced
print(installed())
"""
    done = namespace.run(sys.executable, "-c", script)
    assert done.stdout.strip() == "True"
    listing = namespace.run("nft", "list", "table", "inet", "metamesh").stdout
    assert "redirect to :16001" in listing and ":15001" not in listing.split("prerouting")[0]
    done = namespace.run(sys.executable, "-c", "from metamesh.runtime.intercept import *\n"
                         "print(remove(), remove(), installed())")  # fmt: skip
    assert done.stdout.strip() == "True False False"
    assert "metamesh" not in namespace.tables()


def test_a_proxy_ending_on_an_unhandled_error_removes_its_rules(namespace: Namespace) -> None:
    """Not a drain: the interpreter's exit (atexit) takes the rules away."""
    script = """
import asyncio
from metamesh.proxy.config import Snapshot
from metamesh.runtime.intercept import InterceptSettings
from metamesh.runtime.server import ProxyServer
from metamesh.runtime.sidecar import Sidecar, SidecarSettings

async def main():
    sidecar = Sidecar(SidecarSettings(InterceptSettings(dns_port=None)))
    await ProxyServer(Snapshot(), admin_port=None, sidecar=sidecar).start()
    print(sidecar.interceptor.rules_installed, flush=True)
    raise RuntimeError("boom")

asyncio.run(main())
"""
    done = namespace.run(sys.executable, "-c", script, check=False)
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr
    assert done.stdout.strip() == "True"
    assert "metamesh" not in namespace.tables()
