"""Reading the Redis options back from xDS (the proxy's side of :mod:`metamesh.control.redis`).

Listener: ``MetaProtocolProxy.codec.options`` (string map) becomes the listener's
``codec_options``; ``auth_password_file`` is read here (the file's content, trailing newline
stripped, becomes ``auth_password``), so the codec never does I/O. Cluster: Envoy's
``RedisProtocolOptions`` under ``typed_extension_protocol_options
["envoy.filters.network.redis_proxy"]`` becomes ``protocol_options`` (``auth_username``,
``auth_password``; a ``DataSource`` given inline or as a file), and the cluster metadata
``filter_metadata["metamesh"].redisMode`` (``CLUSTER``) becomes ``mode`` and ``redisReadOnly``
(true: connections say ``READONLY`` for reads from replicas) ``readonly``. A file that
cannot be read is an :class:`OptionsError` naming the resource, which the xDS client turns
into a NACK.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2

REDIS_PROTOCOL_OPTIONS = "envoy.filters.network.redis_proxy"
MAX_SECRET_BYTES = 64 * 1024


class OptionsError(ValueError):
    """Options that cannot be used (an unreadable password file, a value not a string)."""


def read_secret(path: str, where: str) -> str:
    try:
        data = Path(path).read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as e:
        raise OptionsError(f"{where}: cannot read password file {path}: {e.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise OptionsError(f"{where}: password file {path} is over {MAX_SECRET_BYTES} bytes")
    return data.decode("utf-8", "replace").rstrip("\r\n")


def listener_codec_options(options: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(options, Mapping):
        raise OptionsError(f"{where}: codec.options must be a map of strings")
    out: dict[str, str] = {}
    for key, value in options.items():
        if not isinstance(value, str):
            raise OptionsError(f"{where}: codec.options.{key} must be a string")
        if key == "auth_password_file":
            out["auth_password"] = read_secret(value, f"{where}: codec.options.{key}")
        else:
            out[str(key)] = value
    return tuple(sorted(out.items()))


def _data_source(source: Any, where: str) -> str:
    kind = source.WhichOneof("specifier")
    if kind == "inline_string":
        return str(source.inline_string)
    if kind == "inline_bytes":
        return bytes(source.inline_bytes).decode("utf-8", "replace")
    if kind == "filename":
        return read_secret(source.filename, where)
    if kind is None:
        return ""
    raise OptionsError(f"{where}: DataSource {kind} is not supported")


def cluster_protocol_options(cluster: Any) -> tuple[tuple[str, str], ...]:
    mode: tuple[tuple[str, str], ...] = ()
    meta = (
        cluster.metadata.filter_metadata.get("metamesh") if cluster.HasField("metadata") else None
    )
    if meta is not None and "redisMode" in meta.fields:
        mode = (("mode", str(meta.fields["redisMode"].string_value)),)
        if meta.fields["redisReadOnly"].bool_value if "redisReadOnly" in meta.fields else False:
            mode += (("readonly", "true"),)
    packed = cluster.typed_extension_protocol_options.get(REDIS_PROTOCOL_OPTIONS)
    if packed is None:
        return mode
    where = f"Cluster {cluster.name!r}: RedisProtocolOptions"
    options = redis_proxy_pb2.RedisProtocolOptions()
    if not packed.Unpack(options):
        raise OptionsError(f"{where}: typed config is {packed.type_url}")
    out: dict[str, str] = {}
    if options.HasField("auth_password"):
        out["auth_password"] = _data_source(options.auth_password, f"{where}.auth_password")
    if options.HasField("auth_username"):
        out["auth_username"] = _data_source(options.auth_username, f"{where}.auth_username")
    return tuple(sorted([*mode, *((k, v) for k, v in out.items() if v)]))
