"""Authorization: DENY first, then ALLOW; by method attributes and by source address."""

from __future__ import annotations

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import (
    AuthzOperation,
    AuthzPolicy,
    AuthzRule,
    AuthzSource,
    MatchKind,
    MetadataMatcher,
    RbacConfig,
)
from metamesh.proxy.filters import RBAC
from tests.proxy.filters.support import ROUTER, policy_harness, route
from tests.proxy.harness import Harness, call


def method_is(*names: str) -> AuthzOperation:
    return AuthzOperation(
        attributes=(
            ("method", tuple(MetadataMatcher("method", MatchKind.EXACT, n) for n in names)),
        )
    )


def guarded(*policies: AuthzPolicy) -> Harness:
    return policy_harness(
        [route()], filters=(RBAC, ROUTER), filter_configs=((RBAC, RbacConfig(policies)),)
    )


def outcome(h: Harness, peer: str, method: str) -> str:
    d = h.core.downstream_connected("l", peer)
    h.send(d, call(1, method=method))
    frames = h.take(d)
    if frames:
        return frames[0][3].get("error", "?")
    return "forwarded"


def test_allow_by_method() -> None:
    h = guarded(AuthzPolicy("read-only", "ALLOW", (AuthzRule(operations=(method_is("get"),)),)))
    assert outcome(h, "10.0.0.1:5000", "get") == "forwarded"
    assert outcome(h, "10.0.0.1:5000", "put") == "unauthorized"
    assert h.core.stats.rbac_denied == 1 and h.core.stats.rbac_allowed == 1
    assert h.core.stats.local_replies[ErrorKind.UNAUTHORIZED] == 1


def test_deny_by_source_cidr_wins_over_allow() -> None:
    h = guarded(
        AuthzPolicy("all", "ALLOW", (AuthzRule(),)),
        AuthzPolicy(
            "no-put-from-lan",
            "DENY",
            (AuthzRule((AuthzSource(ip_blocks=("192.168.0.0/16",)),), (method_is("put"),)),),
        ),
    )
    assert outcome(h, "192.168.3.4:1234", "put") == "unauthorized"
    assert outcome(h, "192.168.3.4:1234", "get") == "forwarded"
    assert outcome(h, "10.1.1.1:1234", "put") == "forwarded"


def test_not_ip_blocks_not_attributes_and_principals_never_match() -> None:
    h = guarded(
        AuthzPolicy(
            "except",
            "ALLOW",
            (
                AuthzRule(
                    (AuthzSource(not_ip_blocks=("127.0.0.1",)),),
                    (AuthzOperation(not_attributes=method_is("admin").attributes),),
                ),
                AuthzRule((AuthzSource(principals=("cluster.local/ns/a/sa/b",)),)),
            ),
        )
    )
    assert outcome(h, "127.0.0.1:1", "get") == "unauthorized"  # not_ip_blocks
    assert outcome(h, "10.0.0.9:1", "admin") == "unauthorized"  # not_attributes
    assert outcome(h, "10.0.0.9:1", "get") == "forwarded"
    assert outcome(h, "[::1]:80", "get") == "forwarded"


def test_allow_policy_without_rules_allows_nothing() -> None:
    h = guarded(AuthzPolicy("nothing", "ALLOW"))
    assert outcome(h, "10.0.0.1:1", "get") == "unauthorized"


def test_identity_rules_on_a_plaintext_listener_are_reported() -> None:
    import dataclasses

    from metamesh.proxy.config import AuthzPolicy, AuthzRule, AuthzSource, Listener, RbacConfig
    from metamesh.proxy.filters.rbac import identity_rules_without_tls

    by_principal = AuthzPolicy(
        "only-sleep", "ALLOW", (AuthzRule((AuthzSource(principals=("td/ns/a/sa/b",)),)),)
    )
    by_ip = AuthzPolicy("local", "DENY", (AuthzRule((AuthzSource(ip_blocks=("10.0.0.0/8",)),)),))
    plain = Listener(
        "l", "127.0.0.1", 1, "thrift", "rc",
        filter_configs=(("metamesh.filters.rbac", RbacConfig((by_principal, by_ip))),),
    )  # fmt: skip
    assert identity_rules_without_tls(plain) == ["ALLOW policy 'only-sleep'"]
    assert identity_rules_without_tls(dataclasses.replace(plain, tls_mode="STRICT")) == []
