"""Every validation rule, each with an input that passes and one that fails."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api.conftest import DELETE, HOST, Edit, edit, problems_for

OK = None
R0 = "spec.routes.0"


def route(**extra: Any) -> dict[str, Any]:
    return {"name": "extra", "route": [{"destination": {"host": HOST}}], **extra}


def split(*weights: int) -> list[dict[str, Any]]:
    return [{"destination": {"host": HOST, "subset": "v1"}, "weight": w} for w in weights]


def bucket(**fields: Any) -> dict[str, Any]:
    return {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "60s", **fields}


# (id, edits, expected field path or OK, message fragment, severity)
CASES: list[tuple[str, list[Edit], str | None, str, str]] = [
    ("base set is clean", [], OK, "", ""),
    # hosts
    ("no host", [edit("mr", "spec.hosts", [])], "spec.hosts", "must have one host", "error"),
    (
        "two hosts",
        [edit("mr", "spec.hosts", [HOST, "b.ns"])],
        "spec.hosts",
        "only have one",
        "error",
    ),
    (
        "host not FQDN",
        [edit("mr", "spec.hosts", ["Bad_Host"])],
        "spec.hosts[0]",
        "invalid",
        "error",
    ),
    ("numeric TLD", [edit("mr", "spec.hosts", ["a.123"])], "spec.hosts[0]", "all-numeric", "error"),
    # routes or rate limit
    ("no routes", [edit("mr", "spec.routes", [])], "spec", "at least one of routes", "error"),
    (
        "no routes but a local rate limit",
        [edit("mr", "spec.routes", []), edit("mr", "spec.localRateLimit.tokenBucket", bucket())],
        OK,
        "",
        "",
    ),
    # destinations and weights
    (
        "no destination",
        [edit("mr", f"{R0}.route", [])],
        f"{R0}.route",
        "at least one dest",
        "error",
    ),
    (
        "null destination",
        [edit("mr", f"{R0}.route", [{"weight": 0}])],
        f"{R0}.route[0].destination",
        "destination is required",
        "error",
    ),
    ("weights 20/80", [edit("mr", f"{R0}.route", split(20, 80))], OK, "", ""),
    (
        "weights 20/70",
        [edit("mr", f"{R0}.route", split(20, 70))],
        f"{R0}.route",
        "90 != 100",
        "error",
    ),
    ("single weight ignored", [edit("mr", f"{R0}.route.0.weight", 30)], OK, "", ""),
    (
        "weight over 100",
        [edit("mr", f"{R0}.route", split(150, 0))],
        f"{R0}.route[0].weight",
        "not in 0..100",
        "error",
    ),
    # subsets
    (
        "subset not DNS-1123",
        [edit("mr", f"{R0}.route.0.destination.subset", "V_1")],
        f"{R0}.route[0].destination.subset",
        "DNS-1123",
        "error",
    ),
    (
        "subset name ok in DR",
        [
            edit("dr", "spec.subsets.0.name", "v1-canary"),
            edit("mr", f"{R0}.route.0.destination.subset", "v1-canary"),
        ],
        OK,
        "",
        "",
    ),
    (
        "DR subset not DNS-1123",
        [edit("dr", "spec.subsets.1.name", "v.2")],
        "spec.subsets[1].name",
        "DNS-1123",
        "error",
    ),
    (
        "DR duplicate subset",
        [edit("dr", "spec.subsets.1.name", "v1")],
        "spec.subsets[1].name",
        "duplicate subset",
        "error",
    ),
    # regex
    ("regex ok", [edit("mr", f"{R0}.match.attributes.method", {"regex": "say.*"})], OK, "", ""),
    (
        "regex star is presence",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "*"})],
        OK,
        "",
        "",
    ),
    (
        "regex broken",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "say(["})],
        f"{R0}.match.attributes.method.regex",
        "RE2 refuses regex 'say([': missing ]",
        "error",
    ),
    (
        "regex empty",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": ""})],
        f"{R0}.match.attributes.method.regex",
        "should not be empty",
        "error",
    ),
    (
        "regex lookahead is not RE2",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "a(?=b)"})],
        f"{R0}.match.attributes.method.regex",
        "RE2 refuses regex 'a(?=b)'",
        "error",
    ),
    (
        "regex backreference is not RE2",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "(a)\\1"})],
        f"{R0}.match.attributes.method.regex",
        "invalid escape sequence",
        "error",
    ),
    (
        "regex RE2-only class is fine",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "\\pL+"})],
        OK,
        "",
        "",
    ),
    (
        "regex too long",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "a" * 1025})],
        f"{R0}.match.attributes.method.regex",
        "over the limit of 1024",
        "error",
    ),
    (
        "regex program too large",
        [edit("mr", f"{R0}.match.attributes.method", {"regex": "(\\pL){1,20}"})],
        f"{R0}.match.attributes.method.regex",
        "RE2 program of size",
        "error",
    ),
    (
        "null attribute",
        [edit("mr", f"{R0}.match.attributes.method", None)],
        f"{R0}.match.attributes.method",
        "cannot be null",
        "error",
    ),
    # mutations
    (
        "mutation ok",
        [edit("mr", f"{R0}.requestMutation", [{"key": "k", "value": "v"}])],
        OK,
        "",
        "",
    ),
    (
        "mutation empty key",
        [edit("mr", f"{R0}.requestMutation", [{"key": "", "value": "v"}])],
        f"{R0}.requestMutation[0].key",
        "key cannot be empty",
        "error",
    ),
    (
        "mutation empty value",
        [edit("mr", f"{R0}.responseMutation", [{"key": "k"}])],
        f"{R0}.responseMutation[0].value",
        "value cannot be empty",
        "error",
    ),
    # mirror
    (
        "mirror with percentage",
        [
            edit("mr", f"{R0}.mirror", {"host": HOST, "subset": "v2"}),
            edit("mr", f"{R0}.mirrorPercentage", {"value": 50}),
        ],
        OK,
        "",
        "",
    ),
    (
        "mirror alone (100%)",
        [edit("mr", f"{R0}.mirror", {"host": HOST, "subset": "v2"})],
        OK,
        "",
        "",
    ),
    (
        "percentage without mirror",
        [edit("mr", f"{R0}.mirrorPercentage", {"value": 50})],
        f"{R0}.mirrorPercentage",
        "set together",
        "error",
    ),
    (
        "mirror percentage 0",
        [
            edit("mr", f"{R0}.mirror", {"host": HOST}),
            edit("mr", f"{R0}.mirrorPercentage", {"value": 0}),
        ],
        f"{R0}.mirrorPercentage.value",
        "(0, 100]",
        "error",
    ),
    (
        "mirror percentage 101",
        [
            edit("mr", f"{R0}.mirror", {"host": HOST}),
            edit("mr", f"{R0}.mirrorPercentage", {"value": 101}),
        ],
        f"{R0}.mirrorPercentage.value",
        "(0, 100]",
        "error",
    ),
    # local rate limit
    (
        "token bucket maxTokens 0",
        [edit("mr", "spec.localRateLimit.tokenBucket", bucket(maxTokens=0))],
        "spec.localRateLimit.tokenBucket.maxTokens",
        "greater than 0",
        "error",
    ),
    (
        "token bucket tokensPerFill 0",
        [edit("mr", "spec.localRateLimit.tokenBucket", bucket(tokensPerFill=0))],
        "spec.localRateLimit.tokenBucket.tokensPerFill",
        "greater than 0",
        "error",
    ),
    (
        "token bucket tokensPerFill missing",
        [edit("mr", "spec.localRateLimit.tokenBucket", {"maxTokens": 5, "fillInterval": "1s"})],
        "spec.localRateLimit.tokenBucket.tokensPerFill",
        "cannot be null",
        "error",
    ),
    (
        "token bucket fillInterval missing",
        [edit("mr", "spec.localRateLimit.tokenBucket", {"maxTokens": 5, "tokensPerFill": 1})],
        "spec.localRateLimit.tokenBucket.fillInterval",
        "cannot be null",
        "error",
    ),
    (
        "empty local rate limit",
        [edit("mr", "spec.localRateLimit", {})],
        "spec.localRateLimit",
        "at least one of tokenBucket or conditions",
        "error",
    ),
    (
        "condition ok",
        [
            edit(
                "mr",
                "spec.localRateLimit.conditions",
                [{"match": {"attributes": {"method": {"exact": "a"}}}, "tokenBucket": bucket()}],
            )
        ],
        OK,
        "",
        "",
    ),
    (
        "condition without bucket",
        [
            edit(
                "mr",
                "spec.localRateLimit.conditions",
                [{"match": {"attributes": {"method": {"exact": "a"}}}}],
            )
        ],
        "spec.localRateLimit.conditions[0].tokenBucket",
        "cannot be null",
        "error",
    ),
    (
        "condition without match",
        [edit("mr", "spec.localRateLimit.conditions", [{"tokenBucket": bucket()}])],
        "spec.localRateLimit.conditions[0].match",
        "cannot be null",
        "error",
    ),
    # global rate limit
    (
        "global rate limit ok",
        [
            edit(
                "mr",
                "spec.globalRateLimit",
                {
                    "domain": "production",
                    "rateLimitService": "outbound|8081||rls.ns.svc.cluster.local",
                    "requestTimeout": "100ms",
                    "denyOnFail": True,
                    "descriptors": [{"property": "method", "descriptorKey": "method"}],
                },
            )
        ],
        OK,
        "",
        "",
    ),
    (
        "global rate limit without descriptors",
        [edit("mr", "spec.globalRateLimit", {"domain": "d", "rateLimitService": "rls"})],
        "spec.globalRateLimit.descriptors",
        "must have descriptors",
        "error",
    ),
    (
        "global rate limit without domain",
        [
            edit(
                "mr",
                "spec.globalRateLimit",
                {
                    "rateLimitService": "rls",
                    "descriptors": [{"property": "p", "descriptorKey": "k"}],
                },
            )
        ],
        "spec.globalRateLimit.domain",
        "cannot be empty",
        "error",
    ),
    (
        "descriptor without key",
        [
            edit(
                "mr",
                "spec.globalRateLimit",
                {"domain": "d", "rateLimitService": "rls", "descriptors": [{"property": "p"}]},
            )
        ],
        "spec.globalRateLimit.descriptors[0].descriptorKey",
        "cannot be empty",
        "error",
    ),
    # exportTo
    ("exportTo ok", [edit("se", "spec.exportTo", [".", "other"])], OK, "", ""),
    ("exportTo public", [edit("mr", "spec.exportTo", ["*"])], OK, "", ""),
    (
        "exportTo duplicate",
        [edit("mr", "spec.exportTo", [".", "ns"])],
        "spec.exportTo",
        "duplicate entries",
        "error",
    ),
    (
        "exportTo * mixed",
        [edit("mr", "spec.exportTo", ["*", "a"])],
        "spec.exportTo",
        "public (*)",
        "error",
    ),
    (
        "exportTo ~ mixed",
        [edit("se", "spec.exportTo", ["~", "a"])],
        "spec.exportTo",
        "no one (~)",
        "error",
    ),
    (
        "exportTo bad name",
        [edit("dr", "spec.exportTo", ["Bad_NS"])],
        "spec.exportTo",
        "not '.', '*', '~'",
        "error",
    ),
    # unreachable routes
    ("match-less route last", [edit("mr", "spec.routes.1", route())], OK, "", ""),
    (
        "match-less route not last",
        [edit("mr", f"{R0}.match", DELETE), edit("mr", "spec.routes.1", route())],
        "spec.routes[1]",
        "never used",
        "warning",
    ),
    # references
    (
        "destination host unknown",
        [edit("mr", f"{R0}.route.0.destination.host", "other.ns.svc.cluster.local")],
        f"{R0}.route[0].destination.host",
        "no ServiceEntry declares",
        "error",
    ),
    (
        "short host resolves in namespace",
        [edit("mr", f"{R0}.route.0.destination.host", "svc")],
        OK,
        "",
        "",
    ),
    (
        "subset unknown",
        [edit("mr", f"{R0}.route.0.destination.subset", "v3")],
        f"{R0}.route[0].destination.subset",
        "defines subset 'v3'",
        "error",
    ),
    ("port known", [edit("mr", f"{R0}.route.0.destination.port", {"number": 9090})], OK, "", ""),
    (
        "port unknown",
        [edit("mr", f"{R0}.route.0.destination.port", {"number": 9091})],
        f"{R0}.route[0].destination.port.number",
        "not a port of",
        "error",
    ),
    (
        "mirror host unknown",
        [edit("mr", f"{R0}.mirror", {"host": "nope.ns.svc.cluster.local"})],
        f"{R0}.mirror.host",
        "no ServiceEntry declares",
        "error",
    ),
    (
        "router host without service",
        [edit("mr", "spec.hosts", ["nope.ns.svc.cluster.local"])],
        "spec.hosts[0]",
        "applies to nothing",
        "warning",
    ),
    (
        "DR host without service",
        [edit("dr", "spec.host", "nope.ns.svc.cluster.local")],
        "spec.host",
        "no ServiceEntry declares",
        "warning",
    ),
    # port names and protocols
    (
        "port tcp-metaprotocol-dubbo built in",
        [
            edit("ap", "spec.protocol", "dubbo"),
            edit("ap", "spec.codec", "dubbo"),
            edit("se", "spec.ports.0.name", "tcp-metaprotocol-dubbo"),
        ],
        OK,
        "",
        "",
    ),
    (
        "port tcp-metaprotocol without app",
        [edit("se", "spec.ports.0.name", "tcp-metaprotocol")],
        "spec.ports[0].name",
        "names no application protocol",
        "error",
    ),
    (
        "port undefined app",
        [edit("se", "spec.ports.0.name", "tcp-metaprotocol-brpc-x")],
        "spec.ports[0].name",
        "'brpc', which no ApplicationProtocol",
        "error",
    ),
    (
        "port app with unknown codec",
        [
            edit("ap", "spec.protocol", "brpc"),
            edit("ap", "spec.codec", "aeraki.meta_protocol.codec.brpc"),
            edit("se", "spec.ports.0.name", "tcp-metaprotocol-brpc-x"),
        ],
        "spec.ports[0].name",
        "not registered",
        "error",
    ),
    ("port tcp-redis", [edit("se", "spec.ports.0.name", "tcp-redis")], OK, "", ""),
    ("port http is left alone", [edit("se", "spec.ports.0.name", "http-web")], OK, "", ""),
    (
        "port not tcp- prefixed",
        [edit("se", "spec.ports.0.name", "udp-metaprotocol-thrift")],
        "spec.ports[0].name",
        "opaque TCP",
        "warning",
    ),
    (
        "duplicate port number",
        [edit("se", "spec.ports.1", {"number": 9090, "name": "tcp-b"})],
        "spec.ports[1].number",
        "duplicate port number",
        "error",
    ),
    (
        "endpoint port name unknown",
        [edit("se", "spec.endpoints.0.ports", {"nope": 1})],
        "spec.endpoints[0].ports.nope",
        "names no port",
        "error",
    ),
    (
        "STATIC without endpoints",
        [edit("se", "spec.endpoints", [])],
        "spec.endpoints",
        "STATIC needs endpoints",
        "error",
    ),
    (
        "SE without hosts",
        [edit("se", "spec.hosts", [])],
        "spec.hosts",
        "at least one host",
        "error",
    ),
    # application protocols
    ("codec short name", [edit("ap", "spec.codec", "thrift")], OK, "", ""),
    (
        "codec unknown",
        [edit("ap", "spec.codec", "aeraki.meta_protocol.codec.nope")],
        "spec.codec",
        "unknown codec",
        "error",
    ),
    ("codec empty", [edit("ap", "spec.codec", "")], "spec.codec", "must have codec", "error"),
    (
        "protocol empty",
        [edit("ap", "spec.protocol", "")],
        "spec.protocol",
        "must have protocol",
        "error",
    ),
    (
        "protocol with dash",
        [edit("ap", "spec.protocol", "my-proto")],
        "spec.protocol",
        "contains '-'",
        "error",
    ),
    # metamesh extensions
    (
        "extensions ok",
        [
            edit("mr", f"{R0}.timeout", "2s"),
            edit(
                "mr",
                f"{R0}.retries",
                {
                    "attempts": 3,
                    "perTryTimeout": "500ms",
                    "retryOn": ["connect-failure", "timeout"],
                    "backoff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                    "retryNonIdempotent": True,
                },
            ),
            edit(
                "mr",
                f"{R0}.fault",
                {
                    "delay": {"fixedDelay": "1s", "percentage": {"value": 10}},
                    "abort": {
                        "errorKind": "timeout",
                        "message": "boom",
                        "percentage": {"value": 5},
                    },
                },
            ),
        ],
        OK,
        "",
        "",
    ),
    (
        "timeout zero",
        [edit("mr", f"{R0}.timeout", "0s")],
        f"{R0}.timeout",
        "greater than 0",
        "error",
    ),
    (
        "perTryTimeout zero",
        [edit("mr", f"{R0}.retries", {"attempts": 1, "perTryTimeout": "0s"})],
        f"{R0}.retries.perTryTimeout",
        "greater than 0",
        "error",
    ),
    (
        "backoff inverted",
        [
            edit(
                "mr",
                f"{R0}.retries",
                {"attempts": 1, "backoff": {"baseInterval": "1s", "maxInterval": "10ms"}},
            )
        ],
        f"{R0}.retries.backoff.maxInterval",
        "less than baseInterval",
        "error",
    ),
    (
        "retryOn empty",
        [edit("mr", f"{R0}.retries", {"attempts": 1, "retryOn": []})],
        f"{R0}.retries.retryOn",
        "no request will be retried",
        "warning",
    ),
    ("empty fault", [edit("mr", f"{R0}.fault", {})], f"{R0}.fault", "delay or abort", "error"),
    (
        "delay without fixedDelay",
        [edit("mr", f"{R0}.fault", {"delay": {}})],
        f"{R0}.fault.delay.fixedDelay",
        "needs fixedDelay",
        "error",
    ),
    (
        "fault percentage 120",
        [edit("mr", f"{R0}.fault", {"abort": {"percentage": {"value": 120}}})],
        f"{R0}.fault.abort.percentage.value",
        "[0, 100]",
        "error",
    ),
    # authorization policies
    (
        "authz regex broken",
        [
            edit("mr", "spec", {}),
            edit("mr", "apiVersion", "metamesh.io/v1alpha1"),
            edit("mr", "kind", "MetaAuthorizationPolicy"),
            edit(
                "mr",
                "spec.rules",
                [{"to": [{"operation": {"attributes": {"method": {"regex": "("}}}}]}],
            ),
        ],
        "spec.rules[0].to[0].operation.attributes.method[0].regex",
        "RE2 refuses regex '('",
        "error",
    ),
    # duplicates
    (
        "duplicate resource",
        [
            edit("dr", "kind", "ServiceEntry"),
            edit("dr", "spec", {"hosts": ["x.ns.svc.cluster.local"], "resolution": "NONE"}),
        ],
        "metadata.name",
        "duplicate resource",
        "error",
    ),
    (
        "two routers for one host",
        [
            lambda d: d.__setitem__(
                "mr2", {**d["mr"], "metadata": {"name": "svc2", "namespace": "ns"}}
            )
        ],
        "spec.hosts[0]",
        "only one is used",
        "warning",
    ),
]


@pytest.mark.parametrize(
    ("edits", "path", "fragment", "severity"),
    [pytest.param(e, p, f, s, id=i) for i, e, p, f, s in CASES],
)
def test_rule(edits: list[Edit], path: str | None, fragment: str, severity: str) -> None:
    problems = problems_for(*edits)
    if path is None:
        assert problems == []
        return
    path = re.sub(r"\.(\d+)", r"[\1]", path)
    matching = [p for p in problems if p.field_path == path and fragment in p.message]
    assert matching, "\n".join(p.format() for p in problems)
    assert matching[0].severity == severity
    assert matching[0].line is not None
