"""Decoder details the golden vectors do not reach: chunking, API contract, errors, skip/replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from metamesh.codecs import CodecError
from metamesh.codecs.hessian2 import (
    Hessian2Decoder,
    Hessian2Encoder,
    HessianError,
    JavaObject,
    Long,
    dumps,
    loads,
)

HIGH = "\ud83d".encode("utf-8", "surrogatepass")  # ED A0 BD
LOW = "\ude00".encode("utf-8", "surrogatepass")  # ED B8 80


def test_surrogate_pair_split_across_chunks_is_joined() -> None:
    data = b"R\x00\x01" + HIGH + b"\x02" + LOW + b"!"
    assert loads(data) == "\U0001f600!"


def test_chunk_may_end_with_a_short_final_chunk_of_each_form() -> None:
    assert loads(b"R\x00\x02ab" + b"\x30\x01c") == "abc"
    assert loads(b"R\x00\x01a" + b"S\x00\x01b") == "ab"
    assert loads(b"A\x00\x01\x01" + b"\x21\x02") == b"\x01\x02"
    assert loads(b"A\x00\x01\x01" + b"\x34\x01\x03") == b"\x01\x03"


def test_four_byte_utf8_from_lenient_writers_is_accepted() -> None:
    assert loads(b"\x04a" + "\U0001f600".encode() + b"b") == "a\U0001f600b"


def test_lone_surrogates_survive_a_round_trip() -> None:
    assert loads(dumps("x\udc00y\ud800")) == "x\udc00y\ud800"


def test_non_ascii_string_followed_by_a_compact_int() -> None:
    # 0x90 after 'é' looks like a UTF-8 continuation byte; it must stay the next value
    decoder = Hessian2Decoder(b"\x01\xc3\xa9\x90")
    assert decoder.read() == "é"
    assert decoder.read() == 0
    assert decoder.at_end()


def test_offset_argument_and_attribute() -> None:
    decoder = Hessian2Decoder(b"junk\x05hello\x91", offset=4)
    assert decoder.read_string() == "hello"
    assert decoder.offset == 10
    assert decoder.read_int() == 1


def test_memoryview_and_bytearray_inputs() -> None:
    data = dumps(["a", 1, b"xy"])
    assert loads(memoryview(data)) == loads(bytearray(data)) == ["a", 1, b"xy"]


def test_read_string_contract() -> None:
    decoder = Hessian2Decoder(b"\x02ok" + b"N" + b"N" + b"\x91")
    assert decoder.read_string() == "ok"
    assert decoder.read_string_or_none() is None
    with pytest.raises(HessianError, match="found null"):
        decoder.read_string()
    with pytest.raises(HessianError, match=r"offset 5.*int"):
        decoder.read_string()


@pytest.mark.parametrize("data", [b"\x30", b"\x31\x00", b"\x05ab", b"S\x00", b"R"])
def test_read_string_on_truncated_data_raises_hessian_error(data: bytes) -> None:
    with pytest.raises(HessianError):
        Hessian2Decoder(data).read_string()


def test_read_string_fast_path_for_medium_ascii_strings() -> None:
    name = "org.apache.dubbo.demo.DemoService"
    decoder = Hessian2Decoder(dumps(name) + dumps("é" * 40))
    assert decoder.read_string() == name
    assert decoder.read_string() == "é" * 40
    assert decoder.at_end()


def test_read_int_takes_every_int_and_long_form() -> None:
    values = [0, -16, 2047, 262143, 1 << 30, Long(5), Long(-2048), Long(1 << 40), Long(1 << 20)]
    encoder = Hessian2Encoder()
    for v in values:
        encoder.write(v)
    decoder = Hessian2Decoder(encoder.getvalue())
    assert [decoder.read_int() for _ in values] == values
    with pytest.raises(HessianError, match="expected an int at offset 0"):
        Hessian2Decoder(b"\x01a").read_int()


def test_skipped_value_is_decoded_on_demand_when_referenced() -> None:
    shared_map = {"k": [1, 2]}
    inner = JavaObject("com.example.Address", {"city": "Oslo", "zip": 1})
    first = ["x", shared_map, inner]
    encoder = Hessian2Encoder()
    encoder.write(first)
    encoder.write(
        [inner, shared_map, JavaObject("com.example.Address", {"city": "Rome", "zip": 2})]
    )
    decoder = Hessian2Decoder(encoder.getvalue())
    decoder.skip()
    second = decoder.read()
    assert decoder.at_end()
    assert second[0] == inner and second[1] == shared_map
    assert second[2] == JavaObject("com.example.Address", {"city": "Rome", "zip": 2})


def test_reference_to_a_skipped_container_keeps_inner_identity() -> None:
    leaf = [1]
    encoder = Hessian2Encoder()
    encoder.write([leaf, leaf])
    encoder.write(leaf)
    decoder = Hessian2Decoder(encoder.getvalue())
    decoder.skip()
    assert decoder.read() == [1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "end of data at offset 0"),
        (b"\x40", "reserved code"),
        (b"Z", "end marker"),
        (b"\x90\x45", None),
        (b"I\x00\x00", "truncated"),
        (b"\x05abc", "truncated"),
        (b"\x02\xc3", "truncated|cut"),
        (b"\x02\xff\xfe", "invalid UTF-8"),
        (b"R\x00\x01a\x91", "expected another chunk at offset 4"),
        (b"Q\x90", "reference to #0"),
        (b"\x60", "class definition 0"),
        (b"\x71\x91\x90", "type reference 1"),
        (b"X\x49\x7f\xff\xff\xff", "exceeds the remaining data"),
        (b"X\x8f", "negative length"),
        (b"H\x78\x90Z", "cannot be a Python dict key"),
        (b"C\x90\x90", "expected a string"),
        (b"L\x7f\xff\xff\xff\xff\xff\xff\xff".replace(b"L", b"J"), "outside Python's range"),
        (b"W" * 1000, "nested"),
        (b"\x90\x90", "trailing bytes"),
    ],
)
def test_bad_input_raises_hessian_error(data: bytes, message: str | None) -> None:
    with pytest.raises(HessianError, match=message) as caught:
        loads(data)
    assert isinstance(caught.value, CodecError)


def test_every_truncation_of_every_golden_vector_is_a_hessian_error(golden_dir: Path) -> None:
    for path in sorted(golden_dir.glob("*.bin")):
        data = path.read_bytes()
        cuts = range(len(data)) if len(data) < 2000 else [0, 1, 2, 3, 100, len(data) - 1]
        for cut in cuts:
            with pytest.raises(HessianError):
                loads(data[:cut])
            with pytest.raises(HessianError):
                Hessian2Decoder(data[:cut]).skip()
