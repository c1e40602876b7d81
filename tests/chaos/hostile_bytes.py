"""Hypothesis strategies for the fuzzing scenarios: valid frames, mutated frames, noise.

Valid frames come from the codec tests' builders, so they are what real peers write: Dubbo
frames from :mod:`tests.codecs.dubbo.frames` (via the Dubbo property tests' strategy), Thrift
frames from :mod:`tests.codecs.thrift.wire` (written by the Apache ``thrift`` library, every
transport x protocol, THeader with info headers and zlib). A mutation is a short random edit
script of the kinds fuzzers find bugs with: bit flips, boundary bytes and 32-bit integers
(lengths of 0, 1, 2**31 - 1, 2**32 - 1...) written over any offset, insertions, deletions,
duplicated ranges, truncation, and splices with another frame (of either protocol).
:func:`hostile_stream` mixes them: a few frames, some mutated, maybe noise around them.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from tests.codecs.dubbo.test_properties import frames_ as dubbo_frames
from tests.codecs.thrift import wire

BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0B, 0x0F, 0xDA, 0xBB)
BOUNDARY_I32 = (0, 1, 2, 15, 16, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                2**24, 2**31 - 1, 2**31, 2**32 - 1)  # fmt: skip


@st.composite
def thrift_frames(draw: st.DrawFn) -> bytes:
    transport, protocol = draw(st.sampled_from(wire.COMBOS))
    header = transport == "header"
    return wire.frame(
        transport,
        protocol,
        name=draw(st.sampled_from(["add", "Calc:echo", "", "\u00e9", "x" * 40])),
        mtype=draw(st.sampled_from([wire.CALL, wire.ONEWAY, wire.REPLY, wire.EXCEPTION])),
        seqid=draw(st.integers(-(2**31), 2**31 - 1)),
        size=draw(st.integers(0, 6)),
        result_field=draw(st.sampled_from([0, 1, 3])),
        headers={b"k": b"v"} if header and draw(st.booleans()) else None,
        zlib=header and draw(st.booleans()),
    )


def valid_frames(codec: str) -> st.SearchStrategy[bytes]:
    return dubbo_frames() if codec == "dubbo" else thrift_frames()


def any_frame() -> st.SearchStrategy[bytes]:
    return st.one_of(dubbo_frames(), thrift_frames())


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A frame from ``frames`` with 1-6 random edits (see the module docstring)."""
    buf = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(buf)))
        op = draw(
            st.sampled_from(["flip", "byte", "i32", "insert", "delete", "dup", "cut", "splice"])
        )
        if op == "flip" and at < len(buf):
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and at < len(buf):
            buf[at] = draw(st.sampled_from(BOUNDARY_BYTES))
        elif op == "i32":
            buf[at : at + 4] = struct.pack(">I", draw(st.sampled_from(BOUNDARY_I32)))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        elif op == "dup":
            start = draw(st.integers(0, len(buf)))
            buf[at:at] = buf[start : start + draw(st.integers(1, 16))]
        elif op == "cut":
            del buf[at:]
        elif op == "splice":
            other = draw(any_frame())
            buf[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(buf)


@st.composite
def hostile_stream(draw: st.DrawFn, codec: str) -> bytes:
    """1-4 pieces: valid frames of ``codec``, mutated ones (of either protocol), or noise."""
    own = valid_frames(codec)
    piece = st.one_of(
        own,
        mutated(own),
        mutated(any_frame()),
        st.binary(min_size=1, max_size=64),
    )
    return b"".join(draw(st.lists(piece, min_size=1, max_size=4)))


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` in the pieces a socket might deliver it in."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
