"""Listeners: a socket address and Aeraki's ``MetaProtocolProxy`` network filter (codec or
protocol, route configuration by name or RDS, the ordered filter list with each filter's
config validated by its model), converted into :class:`metamesh.proxy.config.Listener`.

The models are private to the loader (:mod:`metamesh.proxy.config_yaml`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from metamesh.proxy import config as cfg
from metamesh.proxy.config_schema.common import _Address, _Duration, _Model
from metamesh.proxy.config_schema.filter_configs import _FILTER_CONFIGS
from metamesh.proxy.filters import (
    UnknownFilterError,
    lookup_filter,
)


class _Codec(_Model):
    name: str
    max_frame_size: int | None = Field(default=None, gt=0)
    #: Options handed to the codec (Kafka: ``advertise``; Redis: its settings).
    options: dict[str, str] | None = None


class _Protocol(_Model):
    name: str = ""
    codec: _Codec
    multiplexing: bool = True


class _Rds(_Model):
    route_config_name: str
    config_source: dict[str, Any] | None = None


class _Filter(_Model):
    name: str
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _known_with_valid_config(self) -> _Filter:
        try:
            lookup_filter(self.name)
        except UnknownFilterError as e:
            raise ValueError(str(e)) from None
        self.typed_config()
        return self

    def typed_config(self) -> object | None:
        """The filter's config as the proxy's dataclass (``None`` when it takes none)."""
        model = _FILTER_CONFIGS.get(self.name)
        if model is None or self.config is None:
            return None
        try:
            parsed = model.model_validate(self.config)
        except ValidationError as e:
            raise ValueError(
                "; ".join(
                    f"config.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                    for err in e.errors()
                )
            ) from None
        return parsed.convert()


class _MetaProtocolProxy(_Model):
    stat_prefix: str = ""
    codec: _Codec | None = None
    application_protocol: str | None = None
    protocol: _Protocol | None = None
    route_config_name: str | None = None
    rds: _Rds | None = None
    meta_protocol_filters: list[_Filter] = []
    idle_timeout: _Duration | None = None
    #: Client connections held at once on this listener (0: no cap of its own).
    max_connections: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_codec_one_routes(self) -> _MetaProtocolProxy:
        if self.codec is None and self.protocol is None:
            raise ValueError("needs 'codec: {name: ...}' or 'protocol: {codec: {name: ...}}'")
        if (self.route_config_name is None) == (self.rds is None):
            raise ValueError("needs exactly one of 'route_config_name' or 'rds'")
        return self


class _Listener(_Model):
    name: str
    address: _Address
    meta_protocol_proxy: _MetaProtocolProxy
    #: Client side of the connection: plaintext (DISABLE), mutual TLS required (STRICT), or
    #: either, detected per connection (PERMISSIVE), as Istio's PeerAuthentication modes.
    tls_mode: Literal["DISABLE", "STRICT", "PERMISSIVE"] = "DISABLE"


def _listener(x: _Listener) -> cfg.Listener:
    mpp = x.meta_protocol_proxy
    codec = mpp.protocol.codec if mpp.protocol is not None else mpp.codec
    assert codec is not None
    rc_name = mpp.rds.route_config_name if mpp.rds is not None else mpp.route_config_name
    filters = tuple(f.name for f in mpp.meta_protocol_filters) or (
        "aeraki.meta_protocol.filters.router",
    )
    filter_configs = tuple(
        (f.name, typed)
        for f in mpp.meta_protocol_filters
        if (typed := f.typed_config()) is not None
    )
    return cfg.Listener(
        name=x.name,
        address=x.address.socket_address.address,
        port=x.address.socket_address.port_value,
        codec=codec.name,
        route_config_name=rc_name or "",
        stat_prefix=mpp.stat_prefix,
        filters=filters,
        max_frame_size=codec.max_frame_size,
        codec_options=tuple(sorted((codec.options or {}).items())),
        filter_configs=filter_configs,
        idle_timeout=mpp.idle_timeout,
        max_connections=mpp.max_connections,
        tls_mode="" if x.tls_mode == "DISABLE" else x.tls_mode,
    )
