"""Builders of Dubbo frames for the codec tests, on top of the project's Hessian2 encoder."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metamesh.codecs.hessian2 import Hessian2Encoder, dumps

REPO = Path(__file__).resolve().parents[3]
CAPTURED_SAYHELLO = REPO.parent / "shared/testdata/dubbo/request_sayHello_apache-dubbo-js.bin"

IFACE = "org.apache.dubbo.demo.DemoService"


def frame(flags: int, status: int, request_id: int, body: bytes) -> bytes:
    return struct.pack(">HBBQI", 0xDABB, flags, status, request_id, len(body)) + body


def hstr(s: str) -> bytes:
    enc = Hessian2Encoder()
    enc.write_string(s)
    return enc.getvalue()


def request(
    request_id: int = 1,
    *,
    interface: str = IFACE,
    method: str = "sayHello",
    version: str = "0.0.0",
    dubbo_version: str = "2.0.2",
    descriptor: str = "Ljava/lang/String;",
    args: Sequence[Any] = ("world",),
    attachments: Mapping[str, Any] | None = None,
    raw_attachments: bytes | None = None,
    two_way: bool = True,
) -> bytes:
    body = b"".join(
        [hstr(dubbo_version), hstr(interface), hstr(version), hstr(method), hstr(descriptor)]
        + [dumps(a) for a in args]
    )
    if raw_attachments is not None:
        body += raw_attachments
    else:
        atts = {"path": interface} if attachments is None else attachments
        body += dumps(dict(atts))
    return frame(0xC2 if two_way else 0x82, 0, request_id, body)


def response(
    request_id: int = 1,
    *,
    kind: int = 1,
    value: Any = "Hello world",
    attachments: Mapping[str, Any] | None = None,
) -> bytes:
    body = dumps(kind)
    if kind % 3 != 2:
        body += dumps(value)
    if kind >= 3:
        body += dumps(dict(attachments or {}))
    return frame(0x02, 20, request_id, body)


def error_response(request_id: int, status: int, message: str) -> bytes:
    return frame(0x02, status, request_id, hstr(message))


def heartbeat_request(request_id: int, *, two_way: bool = True) -> bytes:
    return frame(0xE2 if two_way else 0xA2, 0, request_id, b"N")


def heartbeat_response(request_id: int) -> bytes:
    return frame(0x22, 20, request_id, b"N")
