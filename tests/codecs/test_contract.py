"""Contract-level facts every built-in codec shares."""

import pytest

from metamesh.codecs import CodecError, FrameTooLargeError, create_codec
from metamesh.demo.codec_tour import dubbo_request, thrift_call


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("dubbo", dubbo_request(1, "sayHello", "x" * 200, {})),
        ("thrift", thrift_call(1, "add", 1, 2)),
    ],
)
def test_oversized_frames_raise_frame_too_large_before_the_body_arrives(
    name: str, frame: bytes
) -> None:
    codec = create_codec(name, max_frame_size=32)
    with pytest.raises(FrameTooLargeError) as info:
        codec.decode(bytearray(frame[:16]))
    assert isinstance(info.value, CodecError)
