"""``metamesh demo``: a guided walk through the codec layer with real Dubbo and Thrift frames.

For now the demo shows what the proxy builds on: frames as clients write them are decoded into
messages with routable metadata, mutated (Dubbo attachments, Thrift THeader headers) without
touching the arguments, answered with protocol-native error replies and heartbeat replies, and
re-numbered for multiplexing. The frames are built here byte by byte (Dubbo with metamesh's
Hessian2 encoder), exactly as the real clients lay them out.
"""

from __future__ import annotations

import struct
from typing import TextIO

from metamesh.codecs import ErrorKind, LocalError, Message, create_codec
from metamesh.codecs.hessian2 import Hessian2Encoder

DEMO_INTERFACE = "org.apache.dubbo.demo.DemoService"


def dubbo_request(request_id: int, method: str, arg: str, attachments: dict[str, str]) -> bytes:
    """A Dubbo 2 request frame: 16-byte header, then the Hessian2 body a Java consumer writes."""
    body = Hessian2Encoder()
    for s in ("2.0.2", DEMO_INTERFACE, "1.0.0", method, "Ljava/lang/String;", arg):
        body.write_string(s)
    body.write_map(attachments)
    payload = body.getvalue()
    return struct.pack(">HBBQi", 0xDABB, 0xC2, 0, request_id, len(payload)) + payload


def dubbo_heartbeat(request_id: int) -> bytes:
    return struct.pack(">HBBQi", 0xDABB, 0xE2, 0, request_id, 1) + b"N"


def thrift_call(seqid: int, method: str, a: int, b: int) -> bytes:
    """A framed, strict-binary Thrift call of ``method(1: i64 a, 2: i64 b)``."""
    name = method.encode()
    msg = struct.pack(">Ii", 0x80010001, len(name)) + name + struct.pack(">i", seqid)
    msg += struct.pack(">bhq", 10, 1, a) + struct.pack(">bhq", 10, 2, b) + b"\x00"
    return struct.pack(">i", len(msg)) + msg


def thrift_header_call(seqid: int, method: str, headers: dict[str, str]) -> bytes:
    """The same kind of call in a THeader frame carrying key/value headers (binary payload)."""
    name = method.encode()
    payload = struct.pack(">Ii", 0x80010001, len(name)) + name + struct.pack(">i", seqid) + b"\x00"
    info = bytearray([0, 0])  # protocol id binary, no transforms
    info += bytes([1, len(headers)])  # INFO_KEYVALUE section with N pairs (varints < 128)
    for k, v in headers.items():
        info += bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode()
    info += bytes(-len(info) % 4)
    head = struct.pack(">HHiH", 0x0FFF, 0, seqid, len(info) // 4) + info
    return struct.pack(">i", len(head) + len(payload)) + head + payload


def _show(out: TextIO, label: str, msg: Message) -> None:
    md = ", ".join(f"{k}={v}" for k, v in sorted(msg.metadata.items()))
    out.write(f"  {label}: {msg.type.name} id={msg.request_id} status={msg.status.name}\n")
    out.write(f"    metadata: {md}\n")


def _dubbo(out: TextIO) -> None:
    out.write("\n== Dubbo (codec 'dubbo' = 'aeraki.meta_protocol.codec.dubbo') ==\n")
    down = create_codec("aeraki.meta_protocol.codec.dubbo")
    buf = bytearray(dubbo_request(7, "sayHello", "world", {"application": "demo-consumer"}))
    buf += dubbo_request(8, "add", "40", {"group": "canary"})
    cut = len(buf) - 5
    stream, buf = buf, bytearray(buf[:cut])
    first = down.decode(buf)
    assert first is not None
    _show(out, "decoded (2 pipelined frames, the 2nd still partial)", first)
    out.write(f"    second frame needs more data: {down.decode(buf) is None}\n")
    buf += stream[cut:]
    second = down.decode(buf)
    assert second is not None
    _show(out, "decoded once complete", second)
    mutated = down.encode(first, {"x-canary": "true", "application": "rewritten"})
    again = create_codec("dubbo").decode(bytearray(mutated))
    assert again is not None
    _show(out, "after an attachment mutation (arguments copied verbatim)", again)
    out.write(f"    unchanged without mutation: {down.encode(first) == first.frame}\n")
    for kind in (ErrorKind.ROUTE_NOT_FOUND, ErrorKind.OVER_LIMIT):
        reply = create_codec("dubbo").decode(
            bytearray(down.error_reply(first, LocalError(kind, f"metamesh: {kind.value}")))
        )
        assert reply is not None
        out.write(f"  error reply for {kind.value}: id={reply.request_id} {reply.status.name}\n")
    hb = down.decode(bytearray(dubbo_heartbeat(99)))
    assert hb is not None
    pong = create_codec("dubbo").decode(bytearray(down.heartbeat_reply(hb) or b""))
    assert pong is not None
    out.write(f"  heartbeat {hb.request_id} answered: {pong.type.name} id={pong.request_id}\n")
    moved = create_codec("dubbo").decode(bytearray(down.rewrite_request_id(first, 1_000_001)))
    assert moved is not None
    out.write(f"  request id rewritten for multiplexing: 7 -> {moved.request_id}\n")


def _thrift(out: TextIO) -> None:
    out.write("\n== Thrift (codec 'thrift'; framed / unframed / THeader x binary / compact) ==\n")
    framed = create_codec("thrift")
    call = framed.decode(bytearray(thrift_call(41, "Calc:add", 2, 40)))
    assert call is not None
    _show(out, "framed binary multiplexed call", call)
    same = framed.encode(call, {"x-tenant": "blue"}) == call.frame
    out.write(f"    mutation on a framed connection dropped (nowhere to carry it): {same}, ")
    out.write(f"counted: {framed.dropped_mutations}\n")
    reply = create_codec("thrift").decode(
        bytearray(framed.error_reply(call, LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route")))
    )
    assert reply is not None
    _show(out, "TApplicationException reply", reply)
    header = create_codec("thrift")
    hcall = header.decode(bytearray(thrift_header_call(5, "echo", {"tenant": "blue"})))
    assert hcall is not None
    _show(out, "THeader call", hcall)
    rewritten = create_codec("thrift").decode(bytearray(header.encode(hcall, {"x-canary": "1"})))
    assert rewritten is not None
    _show(out, "THeader call after a header mutation", rewritten)


def run_demo(out: TextIO) -> int:
    out.write("metamesh demo: the codec layer every proxied protocol goes through.\n")
    _dubbo(out)
    _thrift(out)
    out.write("\nNext: the MetaProtocol proxy routes these messages; see README.md.\n")
    return 0
