"""Hand-encoded Thrift and Dubbo frames shared by the load generator and the upstream responder.

The benchmark must measure the proxy, not its own codecs, so nothing here decodes a body:

- Thrift, framed transport + strict binary protocol. The load generator calls
  ``i64 add(1: i32 a, 2: i32 b)``; the responder answers every CALL with a REPLY whose struct holds
  field 0 (success) as an i64 and the same seqid. A frame is ``len:i32 | 0x8001 0x00 type:u8 |
  name_len:i32 name | seqid:i32 | struct``, so the seqid sits at a fixed offset once the name length
  is known.
- Dubbo 2 (magic 0xdabb) with Hessian2 bodies. The request is ``sayHello("world")`` on
  ``org.apache.dubbo.demo.DemoService`` (dubbo version 2.0.2, service version 0.0.0, attachments
  path/interface/version), byte-identical in shape to what apache-dubbo-js sends. The response is
  status 20 (OK), body kind 1 (RESPONSE_VALUE) followed by a short Hessian2 string.

A request is built as ``head + id + tail`` from precomputed byte strings, which costs one bytes
concatenation per request. Reply scanners walk a buffer and return the ids of complete frames plus
how many bytes they used, so a caller can batch everything that arrived in one ``data_received``;
``join_pending`` and ``keep_unused`` carry a partial frame from one read to the next without
copying a read that holds only whole frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

THRIFT_METHOD = b"add"
THRIFT_VERSION_1 = 0x80010000
THRIFT_CALL, THRIFT_REPLY, THRIFT_EXCEPTION, THRIFT_ONEWAY = 1, 2, 3, 4
THRIFT_MAX_SEQID = 2**31 - 1

DUBBO_MAGIC = 0xDABB
DUBBO_FLAG_REQUEST = 0x80
DUBBO_FLAG_TWOWAY = 0x40
DUBBO_FLAG_EVENT = 0x20
DUBBO_HESSIAN2 = 2
DUBBO_STATUS_OK = 20
DUBBO_INTERFACE = "org.apache.dubbo.demo.DemoService"
DUBBO_METHOD = "sayHello"
DUBBO_MAX_ID = 2**63 - 1

_THRIFT_HEAD = struct.Struct(">iIi")  # frame length, version|type, name length
_THRIFT_SEQID = struct.Struct(">i")
_DUBBO_HEAD = struct.Struct(">HBBqi")  # magic, flag, status, id, body length


class FrameError(ValueError):
    """Bytes on the wire that are not a frame this benchmark sends or expects."""


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """A request frame split around its id: ``head + id.to_bytes(id_size, "big") + tail``."""

    head: bytes
    tail: bytes
    id_size: int
    max_id: int

    def build(self, request_id: int) -> bytes:
        return self.head + request_id.to_bytes(self.id_size, "big") + self.tail


# ---------------------------------------------------------------------------------------------
# Thrift


def thrift_call_template(method: bytes = THRIFT_METHOD, a: int = 2, b: int = 40) -> RequestTemplate:
    """``add(a, b)`` as a framed strict-binary CALL."""
    args = struct.pack(">bhibhib", 8, 1, a, 8, 2, b, 0)  # i32 field 1, i32 field 2, STOP
    size = 4 + 4 + len(method) + 4 + len(args)
    head = struct.pack(">iIi", size, THRIFT_VERSION_1 | THRIFT_CALL, len(method)) + method
    return RequestTemplate(head=head, tail=args, id_size=4, max_id=THRIFT_MAX_SEQID)


def thrift_reply(method: bytes, seqid: int, value: int) -> bytes:
    """A REPLY frame whose result struct holds field 0 (success) as an i64."""
    result = struct.pack(">bhqb", 10, 0, value, 0)
    size = 4 + 4 + len(method) + 4 + len(result)
    return (
        struct.pack(">iIi", size, THRIFT_VERSION_1 | THRIFT_REPLY, len(method))
        + method
        + struct.pack(">i", seqid)
        + result
    )


def scan_thrift(buf: bytes | bytearray, ids: list[int]) -> tuple[int, int]:
    """Append the seqid of every complete frame at the front of ``buf`` to ``ids``.

    Returns ``(bytes used, frames that were not REPLY)``; an EXCEPTION still carries its seqid.
    """
    pos, end, errors = 0, len(buf), 0
    unpack_head, unpack_seqid = _THRIFT_HEAD.unpack_from, _THRIFT_SEQID.unpack_from
    while end - pos >= 12:
        size, version, name_len = unpack_head(buf, pos)
        if end - pos - 4 < size:
            break
        if version & 0xFFFF0000 != THRIFT_VERSION_1 or not 0 <= name_len <= size - 12:
            raise FrameError(f"not a strict-binary thrift frame: version {version:#x}")
        ids.append(unpack_seqid(buf, pos + 12 + name_len)[0])
        if version & 0xFF != THRIFT_REPLY:
            errors += 1
        pos += 4 + size
    return pos, errors


# ---------------------------------------------------------------------------------------------
# Hessian2 scalars (only what the fixed frames need)


def hessian_string(value: str) -> bytes:
    data = value.encode()
    n = len(value)
    if n < 32:
        return bytes([n]) + data
    if n < 1024:
        return bytes([0x30 + (n >> 8), n & 0xFF]) + data
    return b"S" + struct.pack(">H", n) + data


def hessian_map(items: dict[str, str]) -> bytes:
    return b"H" + b"".join(hessian_string(k) + hessian_string(v) for k, v in items.items()) + b"Z"


# ---------------------------------------------------------------------------------------------
# Dubbo


def dubbo_request_body(interface: str = DUBBO_INTERFACE, method: str = DUBBO_METHOD) -> bytes:
    version = "0.0.0"
    return (
        hessian_string("2.0.2")
        + hessian_string(interface)
        + hessian_string(version)
        + hessian_string(method)
        + hessian_string("Ljava/lang/String;")
        + hessian_string("world")
        + hessian_map({"path": interface, "interface": interface, "version": version})
    )


def dubbo_request_template(
    interface: str = DUBBO_INTERFACE, method: str = DUBBO_METHOD
) -> RequestTemplate:
    body = dubbo_request_body(interface, method)
    flag = DUBBO_FLAG_REQUEST | DUBBO_FLAG_TWOWAY | DUBBO_HESSIAN2
    head = struct.pack(">HBB", DUBBO_MAGIC, flag, 0)
    return RequestTemplate(
        head=head, tail=struct.pack(">i", len(body)) + body, id_size=8, max_id=DUBBO_MAX_ID
    )


#: Response body: kind 1 (RESPONSE_VALUE, Hessian2 compact int 0x91) then the string.
DUBBO_REPLY_BODY = b"\x91" + hessian_string("Hello world")
#: Everything of a response frame before / after its 8-byte id.
DUBBO_REPLY_HEAD = struct.pack(">HBB", DUBBO_MAGIC, DUBBO_HESSIAN2, DUBBO_STATUS_OK)
DUBBO_REPLY_TAIL = struct.pack(">i", len(DUBBO_REPLY_BODY)) + DUBBO_REPLY_BODY
#: Heartbeat response (event flag, null body).
DUBBO_HEARTBEAT_HEAD = struct.pack(
    ">HBB", DUBBO_MAGIC, DUBBO_FLAG_EVENT | DUBBO_HESSIAN2, DUBBO_STATUS_OK
)
DUBBO_HEARTBEAT_TAIL = struct.pack(">i", 1) + b"N"


def scan_dubbo(buf: bytes | bytearray, ids: list[int]) -> tuple[int, int]:
    """Append the id of every complete non-event response at the front of ``buf`` to ``ids``.

    Returns ``(bytes used, responses whose status is not 20)``. Events (heartbeats) are skipped.
    """
    pos, end, errors = 0, len(buf), 0
    unpack = _DUBBO_HEAD.unpack_from
    while end - pos >= 16:
        magic, flag, status, request_id, body_len = unpack(buf, pos)
        if magic != DUBBO_MAGIC or body_len < 0:
            raise FrameError(f"not a dubbo frame: magic {magic:#x}")
        if end - pos - 16 < body_len:
            break
        pos += 16 + body_len
        if flag & (DUBBO_FLAG_EVENT | DUBBO_FLAG_REQUEST):
            continue
        ids.append(request_id)
        if status != DUBBO_STATUS_OK:
            errors += 1
    return pos, errors


def request_template(protocol: str) -> RequestTemplate:
    if protocol == "thrift":
        return thrift_call_template()
    if protocol == "dubbo":
        return dubbo_request_template()
    raise ValueError(f"unknown protocol {protocol!r} (thrift or dubbo)")


ReplyScanner = Callable[[bytes | bytearray, list[int]], tuple[int, int]]


def reply_scanner(protocol: str) -> ReplyScanner:
    return scan_thrift if protocol == "thrift" else scan_dubbo


def join_pending(pending: bytearray, data: bytes) -> bytes | bytearray:
    """``data`` if no partial frame is pending (no copy), else ``pending`` with ``data`` added."""
    if pending:
        pending += data
        return pending
    return data


def keep_unused(pending: bytearray, scanned: bytes | bytearray, used: int) -> None:
    """Keep in ``pending`` what a scan of ``scanned`` (from :func:`join_pending`) left unused."""
    if scanned is pending:
        del pending[:used]
    elif used < len(scanned):
        pending += scanned[used:]
