"""Hessian 2.0 decoder (stub: signatures only, being filled in)."""

from typing import Any

from metamesh.codecs.hessian2.model import HessianError


class Hessian2Decoder:
    """Reads Hessian 2.0 values one after another from a byte string."""

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._data = bytes(data) if isinstance(data, memoryview) else data
        self.offset = offset

    def at_end(self) -> bool:
        return self.offset >= len(self._data)

    def read(self) -> Any:
        raise HessianError(f"not implemented yet (offset {self.offset})")

    def skip(self) -> None:
        raise HessianError(f"not implemented yet (offset {self.offset})")

    def read_string(self) -> str:
        raise HessianError(f"not implemented yet (offset {self.offset})")

    def read_string_or_none(self) -> str | None:
        raise HessianError(f"not implemented yet (offset {self.offset})")

    def read_int(self) -> int:
        raise HessianError(f"not implemented yet (offset {self.offset})")
