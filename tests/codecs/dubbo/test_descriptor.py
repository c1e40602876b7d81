"""Counting parameters in JVM descriptors."""

from __future__ import annotations

import pytest

from metamesh.codecs import CodecError
from metamesh.codecs.dubbo.descriptor import count_parameters


@pytest.mark.parametrize(
    ("descriptor", "count"),
    [
        ("", 0),
        ("I", 1),
        ("Ljava/lang/String;", 1),
        ("Ljava/lang/String;[IJ", 3),
        ("ZBCSIJFD", 8),
        ("[[Ljava/util/List;[[[D", 2),
        ("Lcom/example/Outer$Inner;Ljava/util/Map;", 2),
        ("V", 1),  # dubbo-py's spelling of a None argument
    ],
)
def test_count(descriptor: str, count: int) -> None:
    assert count_parameters(descriptor) == count
    assert count_parameters(descriptor) == count  # memoised path


@pytest.mark.parametrize(
    "descriptor", ["[", "L", "Ljava/lang/String", "L;", "X", "I[", "(I)V", "Ljava/lang/String;q"]
)
def test_malformed(descriptor: str) -> None:
    with pytest.raises(CodecError, match="descriptor"):
        count_parameters(descriptor)
