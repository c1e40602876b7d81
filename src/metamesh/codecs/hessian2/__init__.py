"""Hessian 2.0 serialization (stub: being filled in)."""

from typing import Any

from metamesh.codecs.hessian2.decoder import Hessian2Decoder
from metamesh.codecs.hessian2.encoder import Hessian2Encoder
from metamesh.codecs.hessian2.model import HessianError, JavaObject, Long, TypedList, TypedMap


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one Hessian 2.0 value that fills ``data``."""
    decoder = Hessian2Decoder(data)
    value = decoder.read()
    if not decoder.at_end():
        raise HessianError(f"trailing bytes after the value at offset {decoder.offset}")
    return value


def dumps(value: Any) -> bytes:
    """Encode one value as Hessian 2.0."""
    encoder = Hessian2Encoder()
    encoder.write(value)
    return encoder.getvalue()


__all__ = [
    "Hessian2Decoder",
    "Hessian2Encoder",
    "HessianError",
    "JavaObject",
    "Long",
    "TypedList",
    "TypedMap",
    "dumps",
    "loads",
]
