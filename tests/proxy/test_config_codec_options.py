"""Codec options in the static YAML (``meta_protocol_proxy.codec.options``): handed to the
codec, and checked by it at load time, so a bad value names file, listener and field."""

from __future__ import annotations

import pytest

from metamesh.proxy.config_yaml import ConfigError, parse_snapshot
from tests.proxy.test_config import MINIMAL

KAFKA = MINIMAL.replace(
    'codec: {name: "examples.kvrpc.kvrpc_codec:KvRpcCodec"}',
    "codec: {name: kafka, options: {advertise: '10.1.2.3:9092=127.0.0.1:19092'}}",
)


def test_options_reach_the_listener() -> None:
    listener = parse_snapshot(KAFKA).listeners["l1"]
    assert listener.codec_options == (("advertise", "10.1.2.3:9092=127.0.0.1:19092"),)


def test_a_bad_option_names_file_listener_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_snapshot(KAFKA.replace("=127.0.0.1:19092", ""), source="proxy.yaml")
    text = str(info.value)
    assert "proxy.yaml: listeners[0] (name 'l1'): field 'meta_protocol_proxy.codec.options'" in text
    assert "broker-host:port=host:port" in text
