"""Distributed tracing in the core: context in, one span per request, context out (sans-IO).

A request's trace context is read from the protocol's own headers, which every codec exposes as
metadata (Dubbo attachments, THeader info headers, KV-RPC headers): W3C ``traceparent`` /
``tracestate``, else B3's headers (``x-b3-traceid``/``x-b3-spanid``/``x-b3-sampled``/
``x-b3-flags``; the single-header ``b3`` form is not read). The proxy makes one span per
request: ``CLIENT`` on an outbound listener, ``SERVER`` on an inbound one, child of the
incoming span (or the root of a new trace), and writes its own span as the parent into the
request it forwards (``traceparent`` always, and the B3 headers when the request came with
them), through the codec's mutation path.

Sampling: an incoming sampled flag is followed (parent-based, as OpenTelemetry's default); a
request without one is sampled with :attr:`TracingConfig.rate`, using the core's random
generator. The decision comes first and costs almost nothing for a request that is not sampled
(the path that must stay cheap: at 1%, 99 requests in 100): one scan of the frame's bytes for
``trace`` (no header is looked up, no lazy metadata decoded, when it is absent; a read of
several pipelined frames is searched once as a whole, see ``RequestPath.trace_hint``) and one
integer decrement (:attr:`Tracer.skip`); no span, no allocation, the request forwarded
untouched. With
:attr:`TracingConfig.errors`, a request without context that ends in an error gets its span at
the end (:meth:`Tracer.late`, from the start time the request keeps anyway), so keeping errors
costs nothing until one happens; a request that came with a context that says "not sampled"
keeps its span from the start (its parent ids), its context not propagated (the request went
out unchanged).

The core never exports: a finished span is a :class:`SpanRecord` appended to the core's
``spans`` list, the runtime exporter's queue, with a ``(SPAN,)`` action only when the exporter
has something to do (see ``metamesh.proxy.core.SPAN``); the runtime exports them over OTLP
(:mod:`metamesh.runtime.otlp`).
Times are the core's ``now`` (loop time, seconds); the runtime maps them to wall time.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_HEX: Final = frozenset("0123456789abcdef")
W3C: Final = "traceparent"
W3C_STATE: Final = "tracestate"
B3_TRACE: Final = "x-b3-traceid"
B3_SPAN: Final = "x-b3-spanid"
B3_PARENT: Final = "x-b3-parentspanid"
B3_SAMPLED: Final = "x-b3-sampled"
B3_FLAGS: Final = "x-b3-flags"
#: What a frame's bytes must contain for its trace headers to be looked up (frames of a codec
#: whose framing has no headers, ``Codec.carries_headers`` False, are not scanned).
MARKER: Final = b"trace"
MARKER_SIZE: Final = 5  # len(MARKER)
#: The search for :data:`MARKER`: ``HAS_MARKER(frame) is not None``. A compiled pattern's
#: ``search`` takes its arguments the fast way (a C array, no tuple) and scans long frames
#: faster than ``bytes.find``, whose arguments are parsed from a tuple by a format string
#: built per call; ``MARKER in frame`` first tries its argument as an integer and builds (then
#: clears) a TypeError for every frame; ``frame.partition`` copies the frame when it holds the
#: marker, which every request of an application that propagates context does. Measured per
#: call (interpreted, on this project's machine): a 184-byte Dubbo request 250 ns vs 400 for
#: ``find`` and 330 for ``partition``; 4 KB 2.5 vs 3.9 and 3.3 us.
HAS_MARKER: Final = re.compile(MARKER).search
#: The skip count of a rate of 0: never runs out, and stays a machine integer in the native
#: build (mypyc boxes integers from 2**62 on, and a boxed decrement allocates).
NEVER: Final = 1 << 60


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``rate``: the share of requests without a sampling decision that are traced (0..1);
    ``errors``: also export the span of every request that ends in an error."""

    rate: float = 0.01
    errors: bool = False


class Span:
    """One request's span while it is in flight.

    A plain class with its own ``__init__`` rather than a dataclass: in the native build a
    dataclass's ``__init__`` is the one the ``dataclasses`` module generates, which runs
    interpreted (and a frozen one sets every field through ``object.__setattr__``); this one
    is compiled, and both are made for every sampled request."""

    __slots__ = (
        "b3",
        "parent_id",
        "sampled",
        "server",
        "span_id",
        "start",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,  # 0: a root span
        sampled: bool,
        server: bool,  # SERVER (inbound listener) or CLIENT (outbound) kind
        start: float,
        tracestate: str = "",
        b3: bool = False,  # the request came with B3 headers: write them besides traceparent
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.server = server
        self.start = start
        self.tracestate = tracestate
        self.b3 = b3

    def headers(self) -> dict[str, str]:
        """The headers that make this span the parent of the forwarded request."""
        # to_bytes().hex(): no format spec to parse per call (f"{x:032x}" cost 2.5x as much)
        trace = self.trace_id.to_bytes(16, "big").hex()
        span = self.span_id.to_bytes(8, "big").hex()
        flag = "1" if self.sampled else "0"
        out = {W3C: f"00-{trace}-{span}-0{flag}"}
        if self.tracestate:
            out[W3C_STATE] = self.tracestate
        if self.b3:
            out.update({B3_TRACE: trace, B3_SPAN: span, B3_SAMPLED: flag})
            if self.parent_id:
                out[B3_PARENT] = self.parent_id.to_bytes(8, "big").hex()
        return out


#: A span's attributes: (key, value) pairs in their order. The core shares one tuple between
#: the spans of the same listener, route, endpoint, outcome and method (``CoreState.
#: span_attributes``), so a sampled request builds no mapping of its own and the exporter
#: serializes each distinct tuple once.
Attributes = tuple[tuple[str, str | int], ...]


class SpanRecord:
    """A finished span, for the runtime's exporter (not changed once made). A plain class for
    the same reason as :class:`Span`. ``attributes`` is kept as :data:`Attributes` (a mapping
    given is turned into its pairs)."""

    __slots__ = (
        "attributes",
        "end",
        "error",
        "name",
        "parent_id",
        "server",
        "span_id",
        "start",
        "trace_id",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,
        server: bool,
        name: str,
        start: float,
        end: float,
        error: bool,
        attributes: Attributes | Mapping[str, str | int] = (),
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.server = server
        self.name = name
        self.start = start
        self.end = end
        self.error = error
        self.attributes: Attributes = (
            attributes if isinstance(attributes, tuple) else tuple(attributes.items())
        )

    def __repr__(self) -> str:
        return (
            f"SpanRecord({self.name!r}, trace {self.trace_id:032x}, span {self.span_id:016x}, "
            f"parent {self.parent_id:016x}, error={self.error})"
        )


def _hex_id(text: str | None, digits: tuple[int, ...]) -> int:
    """The id in ``text`` (lowercase hex of one of ``digits`` lengths, not zero), else 0."""
    if text is None or len(text) not in digits or not _HEX.issuperset(text):
        return 0
    return int(text, 16)


def incoming(metadata: Mapping[str, str]) -> tuple[int, int, bool | None, str, bool]:
    """(trace id, parent span id, sampled or None if undecided, tracestate, came as B3) of a
    request's headers; trace id 0 when it carries no valid context."""
    parent = metadata.get(W3C)
    if parent is not None:
        parts = parent.split("-")
        if len(parts) >= 4 and len(parts[0]) == 2 and parts[0] != "ff" and len(parts[3]) == 2:
            trace, span = _hex_id(parts[1], (32,)), _hex_id(parts[2], (16,))
            if trace and span and _HEX.issuperset(parts[3]):
                sampled = bool(int(parts[3], 16) & 1)
                return trace, span, sampled, metadata.get(W3C_STATE, ""), False
    trace = _hex_id(metadata.get(B3_TRACE), (16, 32))
    span = _hex_id(metadata.get(B3_SPAN), (16,))
    if trace and span:
        flag = metadata.get(B3_SAMPLED)
        debug = metadata.get(B3_FLAGS) == "1"
        decision = True if debug else None if flag is None else flag in ("1", "true")
        return trace, span, decision, "", True
    return 0, 0, None, "", False


class Tracer:
    """Starts spans for one proxy core (its random generator makes the ids and decisions).

    The request path asks :meth:`begin` only for requests that may be traced: those whose
    frame bytes contain ``trace`` (``traceparent``, ``x-b3-traceid``: one scan of the frame
    whatever the protocol); a request without one is drawn by the rate inline (``skip``) and
    its span, when sampled, is :meth:`fresh`; the span of a request without context that
    fails, when errors are kept, comes from :meth:`late`. Looking at the bytes first matters:
    codecs decode some metadata lazily (Dubbo's attachments), and asking every request for a
    ``traceparent`` would decode them all. A compressed frame (THeader's zlib transform)
    hides its headers: such requests are sampled by the rate."""

    def __init__(self, config: TracingConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.rate = config.rate
        self.errors = config.errors
        #: log(1 - rate), the geometric draw's divisor (:meth:`_gap`), computed once
        self._log_miss = math.log(1.0 - self.rate) if 0.0 < self.rate < 1.0 else -1.0
        #: Requests without context to pass over before the next one the rate samples: a
        #: geometric draw per sampled request, the same law as one draw per request, for an
        #: integer decrement per request (:meth:`draw`).
        self.skip = self._gap()

    def _gap(self) -> int:
        rate = self.rate
        if rate >= 1.0:
            return 0
        if rate <= 0.0:
            return NEVER
        return min(int(math.log(1.0 - self.rng.random()) / self._log_miss), NEVER)

    def draw(self) -> bool:
        """The rate's decision for one request without context (the request path inlines the
        decrement and calls this only when the count runs out)."""
        self.skip = self._gap()
        return True

    def begin(self, metadata: Mapping[str, str], server: bool, now: float) -> Span | None:
        """The span of a request whose frame may carry a context (its ``metadata``), or None
        when it is neither sampled nor kept for errors. A context without a decision (B3
        without ``x-b3-sampled``) and a frame that named ``trace`` but holds no valid context
        are drawn by the rate."""
        trace, parent, sampled, state, b3 = incoming(metadata)
        if sampled is None:
            self.skip -= 1
            sampled = self.skip < 0 and self.draw()
        if not sampled and not self.errors:
            return None
        rng = self.rng
        if not trace:
            trace, parent = rng.getrandbits(128) or 1, 0
        return Span(trace, rng.getrandbits(64) or 1, parent, sampled, server, now, state, b3)

    def fresh(self, server: bool, now: float) -> Span:
        """The span of a request without context that the rate sampled: a new trace's root."""
        rng = self.rng
        return Span(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, 0, True, server, now)

    def late(self, start: float, server: bool) -> Span:
        """The span of a request without context that was not sampled and ended in an error
        (errors kept): a new trace's root, made only now since nothing was propagated."""
        rng = self.rng
        return Span(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, 0, False, server, start)
