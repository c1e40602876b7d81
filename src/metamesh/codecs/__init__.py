"""Sans-IO protocol codecs and their registry.

Everything the proxy needs from a protocol is in :mod:`metamesh.codecs.base` (the contract) and
:mod:`metamesh.codecs.message` (what a decoded frame looks like).
"""

from metamesh.codecs.base import DEFAULT_MAX_FRAME_SIZE, Codec
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    FrameTooLargeError,
    LocalError,
    Message,
    MessageType,
    Mutation,
    Redirect,
    ResponseStatus,
)
from metamesh.codecs.registry import (
    UnknownCodecError,
    available_codecs,
    create_codec,
    lookup_codec,
    register_codec,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "Codec",
    "CodecError",
    "ErrorKind",
    "FrameTooLargeError",
    "LocalError",
    "Message",
    "MessageType",
    "Mutation",
    "Redirect",
    "ResponseStatus",
    "UnknownCodecError",
    "available_codecs",
    "create_codec",
    "lookup_codec",
    "register_codec",
]
