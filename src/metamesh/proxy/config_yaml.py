"""Static proxy configuration from YAML, validated with pydantic and turned into a Snapshot.

The file uses Envoy's v3 field names (snake_case) for the parts Envoy has, and Aeraki's
``MetaProtocolProxy`` fields for the MetaProtocol network filter, so what a user writes here is
what xDS will later deliver. Layout (see ``examples/proxy-static.yaml``)::

    version: "1"                       # optional, shown in /config_dump
    static_resources:
      listeners:
      - name: kv
        address: {socket_address: {address: 127.0.0.1, port_value: 19000}}
        meta_protocol_proxy:           # Aeraki MetaProtocolProxy
          stat_prefix: kv
          codec: {name: aeraki.meta_protocol.codec.dubbo}   # or protocol: {name, codec: {name}}
          route_config_name: kv-routes                      # or rds: {route_config_name: ...}
          meta_protocol_filters:       # in order; the router is the last one that runs
          - name: metamesh.filters.rbac
            config:                    # MetaAuthorizationPolicy specs (Istio semantics)
              policies:
              - name: no-put-from-10
                action: DENY
                rules: [{from: [{source: {ip_blocks: [10.0.0.0/8]}}],
                         to: [{operation: {attributes: {method: {exact: put}}}}]}]
          - name: aeraki.meta_protocol.filters.local_ratelimit
            config: {token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 1s},
                     conditions: [{match: {metadata: [{name: method, exact_match: put}]},
                                   token_bucket: {max_tokens: 10, fill_interval: 1s}}]}
          - name: aeraki.meta_protocol.filters.router
          idle_timeout: 300s           # close a client with no request in flight this long
          max_connections: 10000       # at this many clients, a new one replaces the idlest
      clusters:
      - name: outbound|19000|v1|kv.example
        connect_timeout: 1s            # "250ms", "1.5s" or seconds as a number
        lb_policy: ROUND_ROBIN         # RANDOM, LEAST_REQUEST, RING_HASH
        outlier_detection: {consecutive_errors: 5, interval: 10s, base_ejection_time: 30s,
                            max_ejection_percent: 10}
        circuit_breakers: {thresholds: [{max_connections: 1024, max_pending_requests: 1024,
                                         max_requests: 1024}]}
        load_assignment:
          endpoints:
          - lb_endpoints:
            - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 20880}}}
              load_balancing_weight: 1
              metadata: {labels: {version: v1}}
      route_configs:
      - name: kv-routes
        routes:
        - name: by-method
          match: {metadata: [{name: method, exact_match: sayHello}]}  # prefix_match,
                 # safe_regex_match: {regex: ...}, present_match: true, string_match: {...},
                 # invert_match: true
          route:
            cluster: outbound|19000|v1|kv.example   # or weighted_clusters: {clusters: [...]}
            hash_policy: [user]
            request_mirror_policies:
            - cluster: outbound|19000|v2|kv.example
              runtime_fraction: {default_value: {numerator: 10, denominator: HUNDRED}}
            timeout: 2s                # whole request, retries included
            retry_policy: {num_retries: 2, retry_on: "connect-failure,reset,timeout",
                           per_try_timeout: 500ms, retry_back_off: {base_interval: 25ms},
                           retry_non_idempotent: false}
          fault: {delay: {fixed_delay: 1s, percentage: {numerator: 5}},
                  abort: {error_kind: unauthorized, message: denied, percentage: {numerator: 1}}}
          request_mutation: [{key: x-env, value: prod}]
          response_mutation: [{key: x-served-by, value: mesh}]

The file is read and parsed within :class:`~metamesh.api.limits.LoadLimits`, as the watched
directory is: a file over ``max_file_bytes`` is not read, and a document whose YAML aliases
expand it past its limit (a "billion laughs") is refused before it is constructed.

Unknown fields are errors (a typo must not silently become a default). Every error names the
file, the resource (kind, index and name) and the field path. Cross references (a route naming a
cluster that does not exist, a listener naming a missing route configuration, an unknown codec)
are checked after the schema.

This module is the loader (read, parse, report errors, convert, check references); the schema
models live in :mod:`metamesh.proxy.config_schema`, one module per resource kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from metamesh.api.limits import (
    DEFAULT_LIMITS,
    FileTooLarge,
    LoadLimits,
    alias_refusal,
    read_limited,
)
from metamesh.proxy import config as cfg
from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config_schema.clusters import _Cluster, _cluster
from metamesh.proxy.config_schema.common import _Model
from metamesh.proxy.config_schema.listeners import _Listener, _listener
from metamesh.proxy.config_schema.routes import _route_config, _RouteConfiguration


class ConfigError(ValueError):
    """The configuration file is invalid; the message names file, resource and field."""


class _StaticResources(_Model):
    listeners: list[_Listener] = []
    clusters: list[_Cluster] = []
    route_configs: list[_RouteConfiguration] = []


class _File(_Model):
    version: str | int = "0"
    static_resources: _StaticResources
    admin: dict[str, Any] | None = None


def load_snapshot(path: str | Path, limits: LoadLimits = DEFAULT_LIMITS) -> cfg.Snapshot:
    """Read, validate and convert the YAML file at ``path``; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = read_limited(path, limits.max_file_bytes)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except (FileTooLarge, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return parse_snapshot(text, str(path), (path.resolve().parent,), limits)


def parse_snapshot(
    text: str,
    source: str = "<string>",
    codec_search: Sequence[Path] = (),
    limits: LoadLimits = DEFAULT_LIMITS,
) -> cfg.Snapshot:
    """Like :func:`load_snapshot`, from YAML text; ``source`` names it in errors.

    A codec named by import path (``package.module:Class``) is looked for on ``sys.path``,
    then in the current directory, then in ``codec_search`` (:func:`resolve_codec`)."""
    try:
        raw = _load_yaml(text, source, limits)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with 'static_resources'")
    try:
        model = _File.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(source, raw, e)) from None
    _check_unique(source, model.static_resources)
    snapshot = _convert(model)
    _check_references(source, snapshot, codec_search)
    return snapshot


#: libyaml's C parser when PyYAML has it, as the resource loader uses.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, source: str, limits: LoadLimits) -> Any:
    """``yaml.safe_load``, refusing a document whose aliases expand it past ``limits``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        refusal = alias_refusal(node, limits) if "&" in text else None
        if refusal is not None:
            raise ConfigError(f"{source}:{node.start_mark.line + 1}: {refusal}")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_unique(source: str, res: _StaticResources) -> None:
    for kind in ("listeners", "clusters", "route_configs"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(res, kind)):
            if item.name in seen:
                raise ConfigError(
                    f"{source}: {kind}[{i}] (name {item.name!r}): field 'name': duplicate name"
                )
            seen.add(item.name)


def _describe(source: str, raw: dict[str, Any], error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        where = "top level"
        if len(loc) >= 3 and loc[0] == "static_resources" and isinstance(loc[2], int):
            kind, index = str(loc[1]), loc[2]
            try:
                name = raw["static_resources"][kind][index].get("name", "?")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = "?"
            where = f"{kind}[{index}] (name {name!r})"
            loc = loc[3:]
        field = ".".join(str(x) for x in loc) or "(resource)"
        lines.append(f"{source}: {where}: field '{field}': {err['msg']}")
    return "\n".join(lines)


def _convert(model: _File) -> cfg.Snapshot:
    res = model.static_resources
    return cfg.Snapshot.build(
        [_listener(x) for x in res.listeners],
        [_cluster(x) for x in res.clusters],
        [_route_config(x) for x in res.route_configs],
        version=str(model.version),
    )


def _check_references(source: str, snap: cfg.Snapshot, codec_search: Sequence[Path]) -> None:
    errors: list[str] = []
    for i, listener in enumerate(snap.listeners.values()):
        where = f"{source}: listeners[{i}] (name {listener.name!r})"
        if listener.route_config_name not in snap.route_configs:
            errors.append(
                f"{where}: field 'meta_protocol_proxy.route_config_name': no route "
                f"configuration named {listener.route_config_name!r}"
            )
        try:
            factory = resolve_codec(listener.codec, codec_search)
        except LookupError as e:
            errors.append(f"{where}: field 'meta_protocol_proxy.codec.name': {e}")
            continue
        if listener.codec_options:
            try:  # the codec checks its own options (Kafka's advertise map)
                factory(options=dict(listener.codec_options))
            except (TypeError, ValueError) as e:
                errors.append(f"{where}: field 'meta_protocol_proxy.codec.options': {e}")
    for i, rc in enumerate(snap.route_configs.values()):
        for j, route in enumerate(rc.routes):
            where = f"{source}: route_configs[{i}] (name {rc.name!r}): routes[{j}]"
            a = route.route
            targets = [("route.cluster", a.cluster)] if a.cluster else []
            targets += [("route.weighted_clusters", w.name) for w in a.weighted_clusters]
            targets += [
                ("route.request_mirror_policies", m.cluster) for m in a.request_mirror_policies
            ]
            for field, name in targets:
                if name not in snap.clusters:
                    errors.append(f"{where}: field '{field}': no cluster named {name!r}")
    if errors:
        raise ConfigError("\n".join(errors))
