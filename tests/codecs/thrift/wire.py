"""Thrift byte strings for the codec tests, written by the real Apache ``thrift`` library.

The pure-Python protocol classes (``TBinaryProtocol``, ``TCompactProtocol``) and
``THeaderTransport`` serialize into a memory buffer, so every test frame is what a real Thrift
peer would put on the wire, not what this codec's authors believe the format to be.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolBase
from thrift.Thrift import TApplicationException, TType
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
    THeaderTransport,
)
from thrift.transport.TTransport import TMemoryBuffer

PROTOCOLS = ("binary", "compact", "binary-nonstrict")
TRANSPORTS = ("framed", "unframed", "header")
#: Every transport x protocol pair (THeader carries binary or compact only).
COMBOS = [
    (t, p) for t in TRANSPORTS for p in PROTOCOLS if not (t == "header" and p == "binary-nonstrict")
]

CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4


def protocol_for(name: str, buf: TMemoryBuffer) -> TProtocolBase:
    if name == "compact":
        return TCompactProtocol(buf)
    return TBinaryProtocol(buf, strictRead=False, strictWrite=name == "binary")


def write_rich_struct(p: TProtocolBase, size: int) -> None:
    """A struct that uses every field type, with ``size`` steering collection lengths."""
    p.writeStructBegin("Args")
    p.writeFieldBegin("flag", TType.BOOL, 1)
    p.writeBool(size % 2 == 0)
    p.writeFieldEnd()
    p.writeFieldBegin("b", TType.BYTE, 2)
    p.writeByte(-3)
    p.writeFieldEnd()
    p.writeFieldBegin("s16", TType.I16, 3)
    p.writeI16(-300)
    p.writeFieldEnd()
    p.writeFieldBegin("s32", TType.I32, 4)
    p.writeI32(-(2**31))
    p.writeFieldEnd()
    p.writeFieldBegin("s64", TType.I64, 40)  # a field id delta > 15 (compact long form)
    p.writeI64(2**62 + size)
    p.writeFieldEnd()
    p.writeFieldBegin("d", TType.DOUBLE, 41)
    p.writeDouble(3.5)
    p.writeFieldEnd()
    p.writeFieldBegin("text", TType.STRING, 42)
    p.writeString("h\u00e9llo" * size)
    p.writeFieldEnd()
    p.writeFieldBegin("ints", TType.LIST, 43)
    p.writeListBegin(TType.I32, size + 14)  # > 14 elements: compact long list header
    for i in range(size + 14):
        p.writeI32(i * 1000)
    p.writeListEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("bools", TType.LIST, 44)
    p.writeListBegin(TType.BOOL, 3)
    for v in (True, False, True):
        p.writeBool(v)
    p.writeListEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("names", TType.SET, 45)
    p.writeSetBegin(TType.STRING, 2)
    p.writeString("a")
    p.writeString("bc")
    p.writeSetEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("table", TType.MAP, 46)
    p.writeMapBegin(TType.STRING, TType.LIST, size)
    for i in range(size):
        p.writeString(f"k{i}")
        p.writeListBegin(TType.I64, 2)
        p.writeI64(-i)
        p.writeI64(i)
        p.writeListEnd()
    p.writeMapEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("empty", TType.MAP, 47)
    p.writeMapBegin(TType.I32, TType.I32, 0)
    p.writeMapEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("inner", TType.STRUCT, 48)
    p.writeStructBegin("Inner")
    p.writeFieldBegin("xs", TType.LIST, 1)
    p.writeListBegin(TType.STRUCT, 2)
    for _ in range(2):
        p.writeStructBegin("Leaf")
        p.writeFieldBegin("v", TType.DOUBLE, 7)
        p.writeDouble(-1.0)
        p.writeFieldEnd()
        p.writeFieldStop()
        p.writeStructEnd()
    p.writeListEnd()
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def write_result(p: TProtocolBase, field_id: int) -> None:
    """A result struct: field 0 = success (i64), other ids = a declared exception struct."""
    p.writeStructBegin("Result")
    if field_id == 0:
        p.writeFieldBegin("success", TType.I64, 0)
        p.writeI64(42)
    else:
        p.writeFieldBegin("err", TType.STRUCT, field_id)
        p.writeStructBegin("CalcError")
        p.writeFieldBegin("code", TType.I32, 1)
        p.writeI32(7)
        p.writeFieldEnd()
        p.writeFieldStop()
        p.writeStructEnd()
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def payload(
    protocol: str, name: str, mtype: int, seqid: int, size: int = 1, result_field: int = 0
) -> bytes:
    """One serialized message (no framing)."""
    buf = TMemoryBuffer()
    p = protocol_for(protocol, buf)
    p.writeMessageBegin(name, mtype, seqid)
    if mtype == REPLY:
        write_result(p, result_field)
    elif mtype == EXCEPTION:
        TApplicationException(TApplicationException.INTERNAL_ERROR, "boom").write(p)
    else:
        write_rich_struct(p, size)
    p.writeMessageEnd()
    return bytes(buf.getvalue())


def frame(
    transport: str,
    protocol: str,
    name: str = "add",
    mtype: int = CALL,
    seqid: int = 1,
    size: int = 1,
    result_field: int = 0,
    headers: Mapping[bytes, bytes] | None = None,
    zlib: bool = False,
) -> bytes:
    """One message in ``transport`` framing (THeader written by Apache's THeaderTransport)."""
    body = payload(protocol, name, mtype, seqid, size, result_field)
    if transport == "framed":
        return struct.pack(">i", len(body)) + body
    if transport == "unframed":
        return body
    out = TMemoryBuffer()
    sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
    trans = THeaderTransport(out, (THeaderClientType.HEADERS,), sub)
    trans.sequence_id = seqid
    for k, v in (headers or {}).items():
        trans.set_header(k, v)
    if zlib:
        trans.add_transform(THeaderTransformID.ZLIB)
    trans.write(body)
    trans.flush()
    return bytes(out.getvalue())


def read_header_frame(data: bytes) -> tuple[dict[bytes, bytes], int, bytes]:
    """Apache's reading of a THeader frame: (info headers, header seqid, payload)."""
    trans = THeaderTransport(TMemoryBuffer(data), (THeaderClientType.HEADERS,))
    trans.readFrame(0)
    return dict(trans.get_headers()), trans.sequence_id, trans.cstringio_buf.read()


def read_message(protocol: str, data: bytes) -> tuple[str, int, int, TMemoryBuffer]:
    """Apache's reading of a message header: (name, type, seqid, rest)."""
    buf = TMemoryBuffer(data)
    p = protocol_for(protocol, buf)
    name, mtype, seqid = p.readMessageBegin()
    return name, mtype, seqid, p


def unwrap(transport: str, data: bytes) -> bytes:
    """The message inside a frame (THeader payload inflated)."""
    if transport == "framed":
        (size,) = struct.unpack_from(">i", data)
        assert size == len(data) - 4
        return data[4:]
    if transport == "unframed":
        return data
    return read_header_frame(data)[2]
