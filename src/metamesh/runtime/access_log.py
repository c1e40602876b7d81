"""Access log lines: JSON (the default) or an Envoy-style format string (``--access-log-format``).

The core hands each finished request over as ``(ACCESS_LOG, record, metadata)``: a small dict
(protocol, listener, downstream, interface, method, route, cluster, endpoint, response_code,
duration_ms, request_id, oneway) and the request's metadata map. The runtime turns it into one
line: the record as compact JSON, or a format string of Envoy's command operators compiled once
at start into a list of pieces, so a line costs one join:

==============================  =============================================================
``%START_TIME%``                when the request arrived, UTC, ``2026-12-05T19:42:08.123Z``
``%DURATION%``                  milliseconds from arrival to reply (an integer, as Envoy's)
``%RESPONSE_CODE%``             ``0`` ok, ``1`` error (MetaProtocol's status; local replies 1)
``%RESPONSE_FLAGS%``            ``-``, or the local reply's flag (``NR``, ``UH``, ``UT``, ...)
``%UPSTREAM_HOST%``             the endpoint ``address:port`` (``-`` when none was picked)
``%UPSTREAM_CLUSTER%``          the cluster's name
``%ROUTE_NAME%``                the route's name
``%DOWNSTREAM_REMOTE_ADDRESS%`` the client's ``address:port``
``%PROTOCOL%``                  the codec (``thrift``, ``dubbo``, ``redis``, ...)
``%REQUEST_ID%``                the protocol's request id (Dubbo id, Thrift seqid)
``%META(key)%``                 the request's metadata ``key`` (``method``, ``interface``, a
                                Dubbo attachment, a THeader header, ...)
``%%``                          a literal ``%``
==============================  =============================================================

A value that is absent is ``-``, as in Envoy. An unknown operator or an unterminated ``%`` is an
error at start, naming the operator (:class:`FormatError`). Every line ends with a newline.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

from metamesh.proxy.telemetry import NO_FLAGS, RESPONSE_FLAGS

#: One line from (record, request metadata, wall-clock time of the reply).
LineFormat = Callable[[Mapping[str, Any], Mapping[str, str], float], str]
_Piece = Callable[[Mapping[str, Any], Mapping[str, str], float], str]
_OPERATOR: Final = re.compile(r"%(?:([A-Z_]+)(?:\(([^()%]*)\))?)?%")
_FLAGS: Final = {kind.value: flag for kind, flag in RESPONSE_FLAGS.items()}


class FormatError(ValueError):
    """An access log format string that names an unknown operator or is malformed."""


def json_line(record: Mapping[str, Any], metadata: Mapping[str, str], now: float) -> str:
    """The default: the record as one compact JSON object."""
    return json.dumps(record, separators=(",", ":")) + "\n"


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _start_time(record: Mapping[str, Any], md: Mapping[str, str], now: float) -> str:
    start = now - record["duration_ms"] / 1000.0
    when = datetime.datetime.fromtimestamp(start, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _code(record: Mapping[str, Any], md: Mapping[str, str], now: float) -> str:
    code = record["response_code"]
    return code if code in ("0", "1") else "1"


def _flags(record: Mapping[str, Any], md: Mapping[str, str], now: float) -> str:
    return _FLAGS.get(record["response_code"], NO_FLAGS)


def _field(name: str) -> _Piece:
    return lambda record, md, now: _text(record.get(name))


_OPERATORS: Final[dict[str, _Piece]] = {
    "START_TIME": _start_time,
    "DURATION": lambda record, md, now: str(int(record["duration_ms"])),
    "RESPONSE_CODE": _code,
    "RESPONSE_FLAGS": _flags,
    "UPSTREAM_HOST": _field("endpoint"),
    "UPSTREAM_CLUSTER": _field("cluster"),
    "ROUTE_NAME": _field("route"),
    "DOWNSTREAM_REMOTE_ADDRESS": _field("downstream"),
    "PROTOCOL": _field("protocol"),
    "REQUEST_ID": _field("request_id"),
}


def _meta(key: str) -> _Piece:
    return lambda record, md, now: _text(md.get(key))


def _literal(text: str) -> _Piece:
    return lambda record, md, now: text


def compile_format(text: str) -> LineFormat:
    """``text`` (Envoy command operators, see the module docstring) as a line formatter."""
    pieces: list[_Piece] = []
    pos = 0
    for m in _OPERATOR.finditer(text):
        if "%" in text[pos : m.start()]:
            raise FormatError(f"access log format: unterminated '%' at {pos + 1}: {text!r}")
        pieces.append(_literal(text[pos : m.start()]))
        name, arg = m.group(1), m.group(2)
        if name is None:
            pieces.append(_literal("%"))
        elif name == "META" and arg:
            pieces.append(_meta(arg))
        elif name in _OPERATORS and arg is None:
            pieces.append(_OPERATORS[name])
        else:
            known = ", ".join(f"%{n}%" for n in (*_OPERATORS, "META(key)"))
            raise FormatError(f"access log format: unknown operator {m.group(0)} (known: {known})")
        pos = m.end()
    if "%" in text[pos:]:
        raise FormatError(f"access log format: unterminated '%' in {text!r}")
    pieces.append(_literal(text[pos:] + "\n"))

    def line(record: Mapping[str, Any], md: Mapping[str, str], now: float) -> str:
        return "".join(p(record, md, now) for p in pieces)

    return line


class AccessLogFile:
    """Where access log lines go (``--access-log``) and how they are written."""

    def __init__(self, file: IO[str], line: LineFormat = json_line) -> None:
        self.file = file
        self.line = line

    def record(self, record: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
        self.file.write(self.line(record, metadata, time.time()))

    def flush(self) -> None:
        self.file.flush()
