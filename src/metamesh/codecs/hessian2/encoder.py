"""Hessian 2.0 encoder (stub: signatures only, being filled in)."""

from collections.abc import Mapping
from typing import Any


class Hessian2Encoder:
    """Writes Hessian 2.0 values into an internal buffer."""

    def __init__(self) -> None:
        self._out = bytearray()

    def write(self, value: Any) -> None:
        raise NotImplementedError

    def write_string(self, s: str) -> None:
        raise NotImplementedError

    def write_int(self, i: int) -> None:
        raise NotImplementedError

    def write_long(self, i: int) -> None:
        raise NotImplementedError

    def write_null(self) -> None:
        self._out.append(0x4E)

    def write_map(self, d: Mapping[Any, Any], type_name: str | None = None) -> None:
        raise NotImplementedError

    def getvalue(self) -> bytes:
        return bytes(self._out)
