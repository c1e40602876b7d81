"""``/config_dump`` hides mutation values and secret-looking values, unless asked locally."""

from __future__ import annotations

import json

from metamesh.proxy.config_yaml import parse_snapshot
from metamesh.runtime.admin import handle
from metamesh.runtime.redact import REDACTED, redact
from metamesh.runtime.server import ProxyServer

CONFIG = """
static_resources:
  listeners:
  - name: kv
    address: {socket_address: {address: 127.0.0.1, port_value: 19555}}
    meta_protocol_proxy:
      codec: {name: thrift}
      route_config_name: rc
      meta_protocol_filters: [{name: aeraki.meta_protocol.filters.router}]
  clusters:
  - name: c
    load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  route_configs:
  - name: rc
    routes:
    - name: tenant
      match: {metadata: [{name: authorization, exact_match: "Bearer s3cret-match"}]}
      route: {cluster: c}
      request_mutation: [{key: authorization, value: "Bearer s3cret-mutation"}]
      response_mutation: [{key: x-served-by, value: internal-host-7}]
    - name: rest
      match: {metadata: [{name: method, exact_match: get}]}
      route: {cluster: c}
"""  # noqa: E501


def test_redact_keeps_the_shape_and_hides_the_values() -> None:
    dump = {
        "routes": [
            {
                "match": [
                    {"name": "x-api-key", "kind": "exact", "value": "k-123"},
                    {"name": "method", "kind": "exact", "value": "get"},
                ],
                "request_mutation": [["x-tenant", "acme"]],
                "client_secret": "abc",
                "cluster": "c",
            }
        ]
    }
    assert redact(dump) == {
        "routes": [
            {
                "match": [
                    {"name": "x-api-key", "kind": "exact", "value": REDACTED},
                    {"name": "method", "kind": "exact", "value": "get"},
                ],
                "request_mutation": [["x-tenant", REDACTED]],
                "client_secret": REDACTED,
                "cluster": "c",
            }
        ]
    }


def test_config_dump_is_redacted_unless_asked_from_loopback() -> None:
    server = ProxyServer(parse_snapshot(CONFIG, "t.yaml"), admin_port=None, tune_gc=False)
    _, _, body = handle(server, "/config_dump")
    assert b"s3cret" not in body and b"internal-host-7" not in body
    routes = json.loads(body)["route_configs"][0]["routes"]
    assert routes[1]["match"][0]["value"] == "get"  # ordinary values stay
    _, _, remote = handle(server, "/config_dump?include_secrets", from_loopback=False)
    assert b"s3cret" not in remote
    _, _, local = handle(server, "/config_dump?include_secrets", from_loopback=True)
    assert b"s3cret-match" in local and b"s3cret-mutation" in local


def test_include_secrets_takes_1_and_true_as_well_as_the_bare_flag() -> None:
    server = ProxyServer(parse_snapshot(CONFIG, "t.yaml"), admin_port=None, tune_gc=False)
    for query in ("include_secrets", "include_secrets=1", "include_secrets=true",
                  "include_secrets=TRUE", "x=1&include_secrets=1"):  # fmt: skip
        _, _, body = handle(server, f"/config_dump?{query}", from_loopback=True)
        assert b"s3cret-match" in body, query
        _, _, remote = handle(server, f"/config_dump?{query}", from_loopback=False)
        assert b"s3cret" not in remote, query
    for query in ("include_secrets=0", "include_secrets=false", "include_secretsx", "x"):
        _, _, body = handle(server, f"/config_dump?{query}", from_loopback=True)
        assert b"s3cret" not in body, query
