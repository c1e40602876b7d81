"""Codec micro-benchmark: µs per message for decode, encode and the proxy's per-request codec work.

Measures the sans-IO codecs alone (no sockets) on small, realistic requests: a Dubbo
``sayHello("world")`` with four attachments as apache-dubbo-js writes it, and Thrift
``add(2, 40)`` calls in framed binary, framed compact and THeader. Each case is timed with
``timeit`` (best of ``--repeat`` runs of ``--number`` iterations) so the figure is the steady
state on this machine, not a noisy mean.

Run: ``.venv/bin/python benchmarks/codec_bench.py`` (``--json`` for machine-readable output).
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import timeit
from collections.abc import Callable

from metamesh.codecs import Codec, ErrorKind, LocalError, Message, create_codec
from metamesh.demo import dubbo_request, thrift_call, thrift_header_call

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


def _cases() -> dict[str, tuple[str, bytes]]:
    return {
        "dubbo sayHello": ("dubbo", dubbo_request(1, "sayHello", "world", ATTACHMENTS)),
        "thrift framed/binary add": ("thrift", thrift_call(1, "add", 2, 40)),
        "thrift framed/compact add": ("thrift", _compact_call(1)),
        "thrift THeader add": ("thrift", thrift_header_call(1, "add", {"tenant": "blue"})),
    }


def _decode_once(codec: Codec, frame: bytes) -> Callable[[], Message | None]:
    def run() -> Message | None:
        return codec.decode(bytearray(frame))

    return run


def measure(number: int, repeat: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    err = LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route")
    for label, (codec_name, frame) in _cases().items():
        codec = create_codec(codec_name)
        msg = codec.decode(bytearray(frame))
        assert msg is not None
        ops: dict[str, Callable[[], object]] = {
            "decode": _decode_once(codec, frame),
            "decode+method": lambda c=codec, f=frame: c.decode(bytearray(f)).metadata["method"],  # type: ignore[union-attr]
            "decode+all metadata": lambda c=codec, f=frame: dict(c.decode(bytearray(f)).metadata),  # type: ignore[union-attr]
            "encode (no mutation)": lambda c=codec, m=msg: c.encode(m),
            "encode (mutation)": lambda c=codec, m=msg: c.encode(m, {"x-canary": "1"}),
            "rewrite id": lambda c=codec, m=msg: c.rewrite_request_id(m, 12345),
            "error reply": lambda c=codec, m=msg: c.error_reply(m, err),
        }
        for op, fn in ops.items():
            best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
            rows.append({"case": label, "op": op, "us": round(best * 1e6, 2), "bytes": len(frame)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.number, args.repeat)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"Python {platform.python_version()} on {platform.machine()}")
    print("| case | bytes | op | µs/message |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['bytes']} | {r['op']} | {r['us']} |")


if __name__ == "__main__":
    main()
