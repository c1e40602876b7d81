"""Building static proxy configs for the runtime tests as plain dicts (dumped to YAML).

The real-peer tests each need a listener, a few clusters pointing at real servers on 127.0.0.1
and a route table; writing those as f-string YAML gets unreadable fast. These builders return
the same structure ``examples/proxy-static.yaml`` documents, and :func:`snapshot` runs it
through the real YAML loader (``parse_snapshot``), so the tests also exercise the config path.
"""

from __future__ import annotations

from typing import Any

import yaml

from metamesh.proxy.config import Snapshot
from metamesh.proxy.config_yaml import parse_snapshot


def listener(
    name: str,
    codec: str,
    routes: str,
    max_frame_size: int | None = None,
    idle_timeout: str | None = None,
    stat_prefix: str | None = None,
) -> dict[str, Any]:
    codec_cfg: dict[str, Any] = {"name": codec}
    if max_frame_size is not None:
        codec_cfg["max_frame_size"] = max_frame_size
    mpp: dict[str, Any] = {"codec": codec_cfg, "route_config_name": routes}
    if idle_timeout is not None:
        mpp["idle_timeout"] = idle_timeout
    if stat_prefix is not None:
        mpp["stat_prefix"] = stat_prefix
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "meta_protocol_proxy": mpp,
    }


def cluster(name: str, *ports: int, lb_policy: str = "ROUND_ROBIN", **extra: Any) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "lb_policy": lb_policy,
        "load_assignment": {"endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def route(
    name: str, target: str | dict[str, int], mutation: dict[str, str] | None = None, **match: str
) -> dict[str, Any]:
    """A route matching metadata ``key == value`` for each ``match`` item.

    ``target`` is a cluster name, or ``{cluster: weight}`` for a weighted split. A value
    starting with ``~`` is a regular expression. ``mutation`` becomes the route's
    ``request_mutation`` (key -> value).
    """
    matchers = [
        {"name": k, "safe_regex_match": {"regex": v[1:]}}
        if v.startswith("~")
        else {"name": k, "exact_match": v}
        for k, v in match.items()
    ]
    action: dict[str, Any]
    if isinstance(target, str):
        action = {"cluster": target}
    else:
        clusters = [{"name": c, "weight": w} for c, w in target.items()]
        action = {"weighted_clusters": {"clusters": clusters}}
    r: dict[str, Any] = {"name": name, "match": {"metadata": matchers}, "route": action}
    if mutation:
        r["request_mutation"] = [{"key": k, "value": v} for k, v in mutation.items()]
    return r


def snapshot(
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    route_configs: dict[str, list[dict[str, Any]]],
) -> Snapshot:
    doc = {
        "version": "runtime-test",
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "route_configs": [{"name": n, "routes": r} for n, r in route_configs.items()],
        },
    }
    return parse_snapshot(yaml.safe_dump(doc, sort_keys=False), "<runtime test>")
