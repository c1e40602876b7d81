"""Durations as Istio and protobuf JSON write them, parsed to float seconds.

Istio resources carry ``google.protobuf.Duration`` fields, whose JSON form is a decimal number
of seconds with an ``s`` suffix (``"1s"``, ``"0.5s"``, ``"1.5s"``). Users also write Go-style
durations (``"100ms"``, ``"1m"``, ``"1h30m"``), which Istio's Kubernetes tooling accepts, so
both are parsed here. Values are stored as float seconds because every consumer (timers, token
buckets, the xDS translator) wants a number, and printing back uses the protobuf form.

A bare YAML number is rejected on purpose: ``timeout: 1`` is ambiguous (seconds? ms?), and
Istio rejects it too. Negative durations are rejected because no field in these resources
means anything by them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"1.5s"``, ``"100ms"``, ``"1h30m"``, ``"0"``); ValueError if bad."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string such as '1s' or '100ms', not {text!r}")
    s = text.strip()
    if s in ("0", "+0"):
        return 0.0
    if s.startswith("-"):
        raise ValueError(f"duration {text!r} must not be negative")
    s = s.removeprefix("+")
    if not s:
        raise ValueError("duration must not be empty")
    pos = 0
    total = 0.0
    while pos < len(s):
        part = _PART.match(s, pos)
        if part is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a number with a unit "
                "(ns, us, ms, s, m, h), such as '1s', '0.5s', '100ms' or '1m'"
            )
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    return total


def format_duration(seconds: float) -> str:
    """The protobuf JSON form (``"1.5s"``) of ``seconds``."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _coerce(value: object) -> object:
    if isinstance(value, int | float):  # bool is an int too
        raise ValueError(
            f"duration must be a string with a unit such as '1s' or '100ms', not the number "
            f"{value!r}"
        )
    if isinstance(value, str):
        return parse_duration(value)
    return value


Duration = Annotated[
    float,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A duration field: written as ``"1s"``/``"100ms"`` in YAML, held as float seconds."""
