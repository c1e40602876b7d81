"""Counting the arguments of a Dubbo call from its JVM parameter descriptor.

A Dubbo request names its parameter types as one JVM descriptor string with no parentheses,
e.g. ``Ljava/lang/String;[IJ`` = ``(String, int[], long)``. The codec only needs the *count*
(to step over that many Hessian values before the attachments), so this is a tiny scanner, and
the counts are memoised: a service uses a handful of distinct descriptors, so after warm-up the
lookup is one dict hit.
"""

from __future__ import annotations

from metamesh.codecs.message import CodecError

#: JVM primitive codes; ``V`` (void) is not a parameter type in Java, but dubbo-py writes it for a
#: ``None`` argument, so it counts as one parameter here.
_PRIMITIVES = frozenset("ZBCSIJFDV")
_MAX_CACHED = 4096
_cache: dict[str, int] = {"": 0}


def count_parameters(descriptor: str) -> int:
    """Number of parameter types in ``descriptor``; raises :class:`CodecError` if malformed."""
    count = _cache.get(descriptor)
    if count is None:
        count = _scan(descriptor)
        if len(_cache) < _MAX_CACHED:
            _cache[descriptor] = count
    return count


def _scan(descriptor: str) -> int:
    count = 0
    i = 0
    n = len(descriptor)
    while i < n:
        c = descriptor[i]
        while c == "[":
            i += 1
            if i == n:
                raise CodecError(f"dubbo: parameter descriptor {descriptor!r} ends inside an array")
            c = descriptor[i]
        if c == "L":
            end = descriptor.find(";", i + 1)
            if end <= i + 1:
                raise CodecError(f"dubbo: unterminated class name in descriptor {descriptor!r}")
            i = end + 1
        elif c in _PRIMITIVES:
            i += 1
        else:
            raise CodecError(
                f"dubbo: bad character {c!r} at {i} in parameter descriptor {descriptor!r}"
            )
        count += 1
    return count
