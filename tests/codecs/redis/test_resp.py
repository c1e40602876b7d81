"""RESP framing from byte strings: value extents, request arguments, limits, bad input."""

import pytest

from metamesh.codecs import CodecError, FrameTooLargeError
from metamesh.codecs.redis.resp import encode_command, error, parse_command, value_end

BIG = 1 << 30


@pytest.mark.parametrize(
    "value",
    [
        b"+OK\r\n",
        b"-ERR wrong\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*2\r\n$1\r\na\r\n:1\r\n",
        b"*2\r\n*2\r\n:1\r\n*1\r\n+x\r\n$-1\r\n",  # nested arrays
        b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",  # RESP3 map
        b"~1\r\n,3.5\r\n",  # set of double
        b"_\r\n",
        b"#t\r\n",
        b"(123456789012345678901234567890\r\n",
        b"!5\r\nERR x\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",  # attribute then the value it annotates
        b">2\r\n+message\r\n+x\r\n",
        b"$4\r\na\r\nb\r\n",  # binary-safe: CRLF inside a bulk string
    ],
)
def test_value_end_finds_exactly_one_value_and_waits_for_any_cut(value: bytes) -> None:
    assert value_end(value + b"+NEXT\r\n", 0, BIG) == len(value)
    for cut in range(len(value)):
        assert value_end(value[:cut], 0, BIG) is None


def test_big_bulk_string_is_walked_without_copying_and_limits_apply_before_buffering() -> None:
    payload = b"x" * 3_000_000
    frame = b"$%d\r\n%s\r\n" % (len(payload), payload)
    assert value_end(frame, 0, BIG) == len(frame)
    with pytest.raises(FrameTooLargeError):
        value_end(b"$2147483648\r\n", 0, 512 * 1024 * 1024)  # only the header has arrived


@pytest.mark.parametrize(
    "bad",
    [b"?x\r\n", b"$abc\r\n", b"$-2\r\n", b"$3\r\nabcde\r\n", b"*1_0\r\n", b"$ 3\r\nabc\r\n"],
)
def test_malformed_values_raise_codec_error(bad: bytes) -> None:
    with pytest.raises(CodecError):
        value_end(bad, 0, BIG)


def test_deep_nesting_is_refused_without_recursion() -> None:
    with pytest.raises(CodecError, match="nested deeper"):
        value_end(b"*1\r\n" * 100_000 + b":1\r\n", 0, BIG)
    assert value_end(b"*1\r\n" * 10 + b":1\r\n", 0, BIG) == 44


def test_parse_command_reads_arrays_and_inline_commands() -> None:
    frame = encode_command([b"SET", b"k", b"v\r\nv"])
    assert parse_command(frame + b"PING\r\n", 0, BIG) == ([b"SET", b"k", b"v\r\nv"], len(frame))
    assert parse_command(b"PING\r\n", 0, BIG) == ([b"PING"], 6)
    assert parse_command(b"set  a   b\n", 0, BIG) == ([b"set", b"a", b"b"], 11)
    assert parse_command(b"\r\n", 0, BIG) == ([], 2)
    for cut in range(len(frame)):
        assert parse_command(frame[:cut], 0, BIG) is None


@pytest.mark.parametrize(
    "bad",
    [b"*1\r\n:1\r\n", b"*1\r\n$x\r\n", b"*1\r\n$1\r\nab\r\n", b'SET "a b" c\r\n', b"*x\r\n"],
)
def test_bad_requests_raise_codec_error(bad: bytes) -> None:
    with pytest.raises(CodecError):
        parse_command(bad, 0, BIG)


def test_request_limits() -> None:
    with pytest.raises(FrameTooLargeError):
        parse_command(b"*1\r\n$2147483648\r\n", 0, 512 * 1024 * 1024)
    with pytest.raises(FrameTooLargeError):
        parse_command(b"*99999999\r\n", 0, BIG)
    with pytest.raises(FrameTooLargeError):
        parse_command(b"GET " + b"k" * 70_000, 0, BIG)  # an endless inline line


def test_error_text_cannot_break_the_line() -> None:
    assert error("ERR a\r\nb") == b"-ERR a  b\r\n"
