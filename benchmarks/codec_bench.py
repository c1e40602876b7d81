"""Codec micro-benchmark: µs per message for decode, encode and the proxy's per-request codec work.

Measures the sans-IO codecs alone (no sockets) on small, realistic requests: a Dubbo
``sayHello("world")`` with four attachments as apache-dubbo-js writes it, and Thrift
``add(2, 40)`` calls in framed binary, framed compact and THeader; and on their responses (a
Dubbo value response with the ``dubbo`` attachment as Java providers send it, Thrift replies).
Each case is timed with ``timeit`` (best of ``--repeat`` runs of ``--number`` iterations) so the
figure is the steady state on this machine, not a noisy mean.

``decode+route keys`` reads the keys a route matches on after decoding (Thrift ``method``; Dubbo
``interface`` and ``method``); for Dubbo it is also measured with two methods called in turn,
which defeats the codec's memo of the last request head. ``proxy round trip`` is the codec work
the proxy does per multiplexed request: decode the request, look up its route keys, rewrite the
request id for the upstream connection, decode the upstream's response and rewrite its id back.
Every decode includes copying the frame into a fresh ``bytearray`` (as a read buffer).

Run: ``.venv/bin/python benchmarks/codec_bench.py`` (``--json`` for machine-readable output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import struct
import timeit
from collections.abc import Callable

from metamesh.codecs import (
    Codec,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    ResponseStatus,
    create_codec,
)
from metamesh.codecs.hessian2 import Hessian2Encoder
from metamesh.demo.codec_tour import dubbo_request, thrift_call, thrift_header_call

ATTACHMENTS = {
    "application": "bench-consumer",
    "interface": "org.apache.dubbo.demo.DemoService",
    "path": "org.apache.dubbo.demo.DemoService",
    "version": "1.0.0",
}


def _compact_call(seqid: int) -> bytes:
    name = b"add"
    # protocol id, version|type(call=1), varint seqid, varint name length, name
    msg = bytes([0x82, 0x21]) + _varint(seqid) + _varint(len(name)) + name
    msg += bytes([0x16, 4, 0x16, 80, 0])  # i64 fields 1 and 2 (zigzag 2, 40), stop
    return struct.pack(">i", len(msg)) + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _dubbo_response(request_id: int) -> bytes:
    body = Hessian2Encoder()
    body.write_int(4)  # RESPONSE_VALUE_WITH_ATTACHMENTS, what Dubbo 2.7+ providers send
    body.write_string("Hello world")
    body.write_map({"dubbo": "2.0.2"})
    payload = body.getvalue()
    return struct.pack(">HBBQi", 0xDABB, 0x02, 20, request_id, len(payload)) + payload


def _binary_reply(seqid: int) -> bytes:
    name = b"add"
    msg = struct.pack(">Ii", 0x80010002, len(name)) + name + struct.pack(">i", seqid)
    msg += struct.pack(">bhq", 10, 0, 42) + b"\x00"  # success: i64 field 0, stop
    return struct.pack(">i", len(msg)) + msg


def _compact_reply(seqid: int) -> bytes:
    name = b"add"
    msg = bytes([0x82, 0x41]) + _varint(seqid) + _varint(len(name)) + name
    msg += bytes([0x06, 0, 84, 0])  # i64 field 0 (long form: type, zigzag id 0), 42, stop
    return struct.pack(">i", len(msg)) + msg


def _header_reply(seqid: int) -> bytes:
    call = thrift_header_call(seqid, "add", {"tenant": "blue"})
    return call.replace(b"\x80\x01\x00\x01", b"\x80\x01\x00\x02", 1)


#: label -> (codec, request frame, response frame, metadata keys the route reads)
Case = tuple[str, bytes, bytes, tuple[str, ...]]


def _cases() -> dict[str, Case]:
    dubbo_keys = ("interface", "method")
    return {
        "dubbo sayHello": (
            "dubbo",
            dubbo_request(1, "sayHello", "world", ATTACHMENTS),
            _dubbo_response(12345),
            dubbo_keys,
        ),
        "thrift framed/binary add": (
            "thrift",
            thrift_call(1, "add", 2, 40),
            _binary_reply(12345),
            ("method",),
        ),
        "thrift framed/compact add": (
            "thrift",
            _compact_call(1),
            _compact_reply(12345),
            ("method",),
        ),
        "thrift THeader add": (
            "thrift",
            thrift_header_call(1, "add", {"tenant": "blue"}),
            _header_reply(12345),
            ("method",),
        ),
    }


def _decode_once(codec: Codec, frame: bytes) -> Callable[[], Message | None]:
    def run() -> Message | None:
        return codec.decode(bytearray(frame))

    return run


def _decode_route(codec: Codec, frames: list[bytes], keys: tuple[str, ...]) -> Callable[[], object]:
    turn = itertools.cycle(frames)

    def run() -> object:
        msg = codec.decode(bytearray(next(turn)))
        assert msg is not None
        md = msg.metadata
        return [md[k] for k in keys]

    return run


def _round_trip(
    name: str, request: bytes, response: bytes, keys: tuple[str, ...]
) -> Callable[[], object]:
    downstream = create_codec(name)
    upstream = create_codec(name)

    def run() -> object:
        req = downstream.decode(bytearray(request))
        assert req is not None
        md = req.metadata
        route = [md[k] for k in keys]
        up = downstream.rewrite_request_id(req, 12345)
        resp = upstream.decode(bytearray(response))
        assert resp is not None
        back = upstream.rewrite_request_id(resp, req.request_id or 0)
        return route, up, back

    return run


def _timed(fn: Callable[[], object], number: int, repeat: int) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6, 2)


def measure(number: int, repeat: int, only: str = "") -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    err = LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route")
    for label, (codec_name, frame, reply, keys) in _cases().items():
        if only not in label:
            continue
        codec = create_codec(codec_name)
        msg = codec.decode(bytearray(frame))
        assert msg is not None
        ops: dict[str, Callable[[], object]] = {
            "decode": _decode_once(codec, frame),
            "decode+method": lambda c=codec, f=frame: c.decode(bytearray(f)).metadata["method"],  # type: ignore[union-attr]
            "decode+all metadata": lambda c=codec, f=frame: dict(c.decode(bytearray(f)).metadata),  # type: ignore[union-attr]
            "decode+route keys": _decode_route(codec, [frame], keys),
            "encode (no mutation)": lambda c=codec, m=msg: c.encode(m),
            "encode (mutation)": lambda c=codec, m=msg: c.encode(m, {"x-canary": "1"}),
            "rewrite id": lambda c=codec, m=msg: c.rewrite_request_id(m, 12345),
            "error reply": lambda c=codec, m=msg: c.error_reply(m, err),
        }
        if codec_name == "dubbo":  # two methods in turn: the codec's last-head memo never hits
            other = dubbo_request(1, "sayGoodbye", "world", ATTACHMENTS)
            ops["decode+route keys, 2 methods"] = _decode_route(codec, [frame, other], keys)
        ops["proxy round trip"] = _round_trip(codec_name, frame, reply, keys)
        for op, fn in ops.items():
            rows.append(
                {"case": label, "op": op, "us": _timed(fn, number, repeat), "bytes": len(frame)}
            )
        rcodec = create_codec(codec_name)
        rmsg = rcodec.decode(bytearray(reply))
        assert rmsg is not None and rmsg.type is MessageType.RESPONSE and rmsg.request_id == 12345
        assert rmsg.status is ResponseStatus.OK
        rops: dict[str, Callable[[], object]] = {
            "decode": _decode_once(rcodec, reply),
            "decode+all metadata": lambda c=rcodec, f=reply: dict(c.decode(bytearray(f)).metadata),  # type: ignore[union-attr]
            "rewrite id": lambda c=rcodec, m=rmsg: c.rewrite_request_id(m, 1),
        }
        for op, fn in rops.items():
            rows.append(
                {
                    "case": f"{label} reply",
                    "op": op,
                    "us": _timed(fn, number, repeat),
                    "bytes": len(reply),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="", help="run only the cases whose label contains this")
    args = ap.parse_args()
    rows = measure(args.number, args.repeat, args.only)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"Python {platform.python_version()} on {platform.machine()}")
    print("| case | bytes | op | µs/message |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['bytes']} | {r['op']} | {r['us']} |")


if __name__ == "__main__":
    main()
