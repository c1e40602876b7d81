"""Runs: a burst of pipelined requests forwarded as one, for protocols that allow it (sans-IO).

A pipelining client (``redis-benchmark -P 16``, a redis-py pipeline) sends many requests in one
write. On the plain path each one costs an :class:`~metamesh.proxy.upstream.ActiveRequest`, a
place in the upstream FIFO and the client's reply order, a deadline, and on the way back a
decoded reply message and its own dispatch. A **run** is the consecutive requests of one read
that all go the same way: the same upstream connection, no filter, mirror, mutation, hash key,
weighted split, retry or per-try timeout, no outlier detection or Redis Cluster slot table on
the cluster, an upstream already connected that has no request budget and no metadata exchange
pending; a route timeout (Redis ``opTimeout``) is allowed. Each request is still decoded and
routed on its own (its route, cluster breaker and load balancer pick, exactly as the plain path
would), so the decision is per request; what a run shares is the rest:

* one :class:`Run` (an ``ActiveRequest`` standing for all of them) in the upstream FIFO, the
  client's reply order and the route timeout's deadline lane;
* one write upstream: the requests' bytes are one slice of what the client sent;
* on the way back, the codec measures the replies (:meth:`~metamesh.codecs.base.Codec.reply_run`,
  the RESP walk with no message built), each reply is accounted like a plain one (the request
  and response sizes, OK or error, the latency histogram: Istio's statistics count every
  request of the run), and the replies go to the client as one slice per read.

What a client or the metrics see is what the plain path gives: replies in request order, one
error reply per request the upstream did not answer when its connection fails mid-run, one
``upstream timeout`` reply per request still unanswered at the route timeout (the run's
requests were all read at the same instant, so they share one deadline; their late replies are
dropped as the plain path drops them), nothing more for a client that left. Only codecs whose
:attr:`~metamesh.codecs.base.Codec.runs` is set (Redis) take this path; tracing and access logs
(one record per request, with its own route) keep every request on the plain path.

The layer sits between the request path and the client side: it overrides ``upstream_data``
for connections carrying a run, and the deadline, failure and untrack hooks for :class:`Run`
objects, so the plain path's code is unchanged.
"""

from __future__ import annotations

from typing import Any, Final, cast

from metamesh.codecs import CodecError, ErrorKind, Message
from metamesh.codecs.base import REPLY_SKIP
from metamesh.proxy.core import _CLOSED, _READY, _REQUEST, MAX_DEAD
from metamesh.proxy.filters.chain import RouteExtras
from metamesh.proxy.filters.command_stats import CommandStatsFilter
from metamesh.proxy.listener import Downstream, ListenerState
from metamesh.proxy.policy import ROUTE_TIMEOUT, RequestExt
from metamesh.proxy.request_path import RequestPath
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.stats import CommandStats, RequestStats
from metamesh.proxy.upstream import ActiveRequest, ClusterState, Upstream, UpstreamState

#: The text of the local reply to a request of a run still unanswered at its route timeout
#: (the plain path's).
TIMEOUT_TEXT: Final = "route timeout"


class Run(ActiveRequest):
    """Consecutive requests of one client read, forwarded together (see the module docstring).

    ``answered`` counts the replies taken from the upstream so far (late ones too, after a
    timeout: the FIFO entry stays until the last one); ``held`` the replies waiting for an
    earlier request of the client; ``gone`` says the client was already answered for the
    rest (timeout, or the connection failed)."""

    __slots__ = ("answered", "count", "gone", "held", "messages", "rows")

    def __init__(
        self,
        downstream: Downstream,
        messages: list[Message],
        route: CompiledRoute,
        cluster: ClusterState,
        start: float,
        stats: RequestStats,
    ) -> None:
        super().__init__(downstream, messages[0], route, cluster, start, stats)
        self.messages = messages
        self.count = len(messages)
        self.answered = 0
        self.held = b""
        self.gone = False
        #: Per-command counters of each request (``enableCommandStats``), else None.
        self.rows: list[CommandStats] | None = None


class Runs(RequestPath):
    """Runs of pipelined requests: forwarding, replies, timeouts, failures."""

    #: Upstream connection -> runs in its FIFO (only connections listed here are read with
    #: :meth:`_run_data`); ``None`` until the first run.
    runs_on: dict[Upstream, int] | None = None

    # -- hooks implemented by the client side (DownstreamSide) ---------------------------------

    def _downstream_message(self, d: Downstream, msg: Message, now: float) -> None:
        raise NotImplementedError

    def _refuse_downstream(self, d: Downstream, bad: CodecError) -> None:
        raise NotImplementedError

    # -- the client side ----------------------------------------------------------------------

    def _forward_runs(self, d: Downstream, data: bytes, now: float) -> int:
        """Handle the whole frames at the start of ``data`` (a read with nothing buffered),
        forming runs of consecutive requests that go the same way; returns the offset of what
        is left for the buffered decode (a partial frame, or one the codec decodes there)."""
        codec = d.codec
        listener = d.listener
        end = len(data)
        pos = 0
        run: list[Message] = []
        first = 0
        target: Upstream | None = None
        route: CompiledRoute | None = None
        cs: ClusterState | None = None
        extras: RouteExtras | None = None
        idx = -1
        last: CompiledRoute | None = None
        last_cs: ClusterState | None = None
        last_extras: RouteExtras | None = None
        while pos < end:
            try:
                msg = codec.decode_at(data, pos)
            except CodecError as bad:
                if run:
                    self._send_run(d, run, data, first, pos, target, route, cs, extras, idx, now)
                self._refuse_downstream(d, bad)
                return end
            if msg is None:
                break
            nxt = pos + len(msg.frame)
            up: Upstream | None = None
            if msg.type is _REQUEST and (run or nxt < end):
                r = listener.table.match(msg)
                if r is not None:
                    if r is not last:
                        last = r
                        last_cs, last_extras = self._run_route(listener, r)
                    c = last_cs
                    if c is not None and c.active_requests + len(run) < c.max_requests:
                        i = c.lb.pick(None)
                        if i is not None:
                            if run and c is cs and i == idx:  # where the run goes (checked)
                                up = target
                            else:
                                up = c.mux.get((listener.protocol, codec.wire_variant, i))
                                if up is not None and (
                                    up.state is not _READY
                                    or up.tell
                                    or up.requests_left
                                    or up.retired
                                ):
                                    up = None
                            if up is not None:
                                if run and (up is not target or last_extras is not extras):
                                    self._send_run(
                                        d, run, data, first, pos, target, route, cs, extras,
                                        idx, now,
                                    )  # fmt: skip
                                    run = []
                                if not run:
                                    first = pos
                                    target, route, cs, extras, idx = up, r, c, last_extras, i
                                run.append(msg)
            if up is None:
                if run:
                    self._send_run(d, run, data, first, pos, target, route, cs, extras, idx, now)
                    run = []
                self._downstream_message(d, msg, now)
                if d.closed:
                    return end
            pos = nxt
        if run:
            self._send_run(d, run, data, first, pos, target, route, cs, extras, idx, now)
        return pos

    def _run_route(
        self, listener: ListenerState, route: CompiledRoute
    ) -> tuple[ClusterState | None, RouteExtras | None]:
        """The cluster requests matching ``route`` may go to in a run (None: they take the
        plain path) and the route's extras: a route timeout and per-command stats at most."""
        if (
            route.mirrors
            or route.request_mutation is not None
            or route.response_mutation is not None
            or route.hash_keys
            or not route.cluster
        ):
            return None, None
        extras = listener.extras
        ex = extras.get(route) if extras is not None else None
        if ex is not None:
            policy = ex.policy
            if policy is not None and (policy.num_retries or policy.per_try_timeout is not None):
                return None, None
            chain = ex.chain
            if chain and (len(chain) > 1 or type(chain[0]) is not CommandStatsFilter):
                return None, None
        cs = self.clusters.get(route.cluster)
        if cs is None or cs.slots is not None or cs.outlier is not None:
            return None, None
        return cs, ex

    def _send_run(
        self,
        d: Downstream,
        messages: list[Message],
        data: bytes,
        start: int,
        stop: int,
        up: Upstream | None,
        route: CompiledRoute | None,
        cs: ClusterState | None,
        extras: RouteExtras | None,
        idx: int,
        now: float,
    ) -> None:
        """Forward ``messages`` (``data[start:stop]``) to ``up`` as one run."""
        assert up is not None and route is not None and cs is not None
        n = len(messages)
        row = cs.request_stats.get(d.origin)
        stats = row[idx] if row is not None else self._request_stats(d, cs, idx)
        run = Run(d, messages, route, cs, now, stats)
        policy = extras.policy if extras is not None else None
        ext = run.ext = RequestExt(policy, ())
        if extras is not None and extras.chain:  # enableCommandStats: counted as its filter does
            counter = extras.chain[0]
            assert isinstance(counter, CommandStatsFilter)
            listener = d.listener
            rows = run.rows = [counter.row(listener, m) for m in messages]
            for command in rows:
                command.requests += 1
        ext.ordered = True
        ext.sent = True
        d.owed += n
        cs.active_requests += n
        lb = cs.lb
        lb.active[idx] += n
        run.lb = lb
        run.endpoint_index = idx
        run.upstream = up
        self.stats.active_requests += n
        up.fifo.append(run)
        d.order.append(run)
        runs = self.runs_on
        if runs is None:
            runs = self.runs_on = {}
        runs[up] = runs.get(up, 0) + 1
        up.out.append(data if start == 0 and stop == len(data) else data[start:stop])
        if not up.dirty:
            up.dirty = True
            self.dirty.append(up)
        if policy is not None and policy.timeout is not None:
            ext.deadline = self.deadlines.push_after(now, policy.timeout, ROUTE_TIMEOUT, run)

    # -- the upstream side --------------------------------------------------------------------

    def upstream_data(self, up: Upstream, data: bytes, now: float) -> None:
        runs = self.runs_on
        if runs is None or up not in runs:
            super().upstream_data(up, data, now)
        else:
            self._run_data(up, data, now)

    def _run_data(self, up: Upstream, data: bytes, now: float) -> None:
        """Bytes from a connection with a run in its FIFO: a run at the head takes its replies
        in one measured sweep; anything else goes one reply at a time to the plain path."""
        if up.state is _CLOSED:
            return
        runs = self.runs_on
        assert runs is not None
        buf = data
        inbuf = up.inbuf
        if inbuf:
            buf = bytes(inbuf) + data
            del inbuf[:]
        pos = 0
        size = len(buf)
        codec = up.codec
        fifo = up.fifo
        try:
            while pos < size:
                if cast(UpstreamState, up.state) is _CLOSED:  # closed while handling a reply
                    return
                if up not in runs:  # the last run is answered: the rest as usual
                    super().upstream_data(up, buf[pos:], now)
                    return
                head = fifo[0] if fifo else None
                if type(head) is Run:
                    nxt = self._run_replies(up, head, buf, pos, now)
                    if nxt == pos:
                        break  # an incomplete reply
                    pos = nxt
                    continue
                msg = codec.decode_at(buf, pos)
                if msg is not None:
                    pos += len(msg.frame)
                else:  # something only decode handles (a setup reply), or an incomplete one
                    rest = bytearray(buf[pos:])
                    msg = codec.decode(rest)
                    if msg is None:
                        break
                    pos = size - len(rest)
                self._upstream_message(up, msg, now)
        except CodecError as e:
            self._bad_upstream_frame(up, e, now)
            return
        closed = cast(UpstreamState, up.state) is _CLOSED
        if pos < size and not closed:
            inbuf += buf[pos:]
        if up.retired and up.in_flight == 0 and not closed:
            self._close_upstream(up)

    def _run_replies(self, up: Upstream, run: Run, buf: bytes, pos: int, now: float) -> int:
        """Take the replies at ``buf[pos:]`` that ``run`` is owed; returns where they end."""
        ends: list[int] = []
        taken = up.codec.reply_run(buf, pos, run.count - run.answered, ends)
        if not ends:
            return pos
        stop = ends[-1] >> 2
        if run.gone:  # answered already (timeout): late replies, dropped
            self.stats.late_responses += taken
        elif taken:
            d: Downstream = run.downstream
            stats = run.stats
            assert stats is not None
            elapsed_ms = (now - run.start) * 1000.0
            messages = run.messages
            rows = run.rows
            i = run.answered
            at = pos
            skipped = False
            for e in ends:
                end = e >> 2
                code = e & 3
                if code == REPLY_SKIP:  # not a reply (a setup reply, a push)
                    skipped = True
                    at = end
                    continue
                stats.observe(code, elapsed_ms, len(messages[i].frame), end - at)
                if rows is not None:  # the command stats filter's on_response
                    rows[i].observe(code, elapsed_ms)
                at = end
                i += 1
            self._run_untrack(run, taken)
            if not d.closed:
                d.owed -= taken
                if not d.owed:
                    d.idle_since = now
                self._run_deliver(d, run, _replies(buf, pos, ends) if skipped else buf[pos:stop])
        run.answered += taken
        if run.answered == run.count:
            up.fifo.popleft()
            self._run_left(up)
            if run.gone:
                up.dead -= 1
            else:
                self._run_complete(run)
        return stop

    def _run_untrack(self, run: Run, n: int) -> None:
        """``n`` requests of ``run`` are no longer in flight (answered, failed, timed out)."""
        cs = run.cluster
        if cs is not None:
            cs.active_requests -= n
        lb = run.lb
        if lb is not None and run.endpoint_index < len(lb.active):
            lb.active[run.endpoint_index] -= n
        self.stats.active_requests -= n

    def _run_left(self, up: Upstream) -> None:
        """A run left ``up``'s FIFO."""
        runs = self.runs_on
        if runs is not None:
            left = runs.get(up, 0) - 1
            if left > 0:
                runs[up] = left
            elif up in runs:
                del runs[up]

    def _run_deliver(self, d: Downstream, run: Run, chunk: bytes) -> None:
        """Replies of ``run`` for the client: written now if every earlier request of the
        client is answered, else held until then."""
        if not chunk or d.closed:
            return
        order = d.order
        first = order[0] if order else None
        if first is run:
            if run.held:
                chunk = run.held + chunk
                run.held = b""
            d.out.append(chunk)
            d.bytes_out += len(chunk)
            if not d.dirty:
                d.dirty = True
                self.dirty.append(d)
        else:
            run.held += chunk

    def _run_complete(self, run: Run) -> None:
        """Every request of ``run`` is answered: its place in the client's reply order ends."""
        ext = run.ext
        if ext is not None:
            ext.done = True
        d: Downstream = run.downstream
        if d.closed:
            return
        order = d.order
        data = run.held
        run.held = b""
        first = order[0] if order else None  # (not `order[0] is run`: that would type order[0])
        if first is not run:
            run.reply = data  # written when the earlier requests are answered
            return
        order.popleft()
        while order and order[0].reply is not None:
            data += order.popleft().reply  # type: ignore[operator]
        if data:
            d.out.append(data)
            d.bytes_out += len(data)
            if not d.dirty:
                d.dirty = True
                self.dirty.append(d)
        if not d.owed and (d.eof or self.draining):
            self._end_downstream(d)

    def _run_fail(self, run: Run, kind: ErrorKind, text: str, now: float) -> None:
        """Answer every request of ``run`` still unanswered with a local error (each one
        counted and recorded as the plain path's local replies are)."""
        run.gone = True
        left = run.count - run.answered
        self._run_untrack(run, left)
        d: Downstream = run.downstream
        parts: list[bytes] = []
        for msg in run.messages[run.answered :]:
            data = self._local_error(
                d, msg, kind, text, run.route, None, run.stats, run.start, now, None
            )
            if data:
                parts.append(data)
        if parts:
            self._run_deliver(d, run, b"".join(parts))
        self._run_complete(run)

    # -- hooks of the lower layers, for runs --------------------------------------------------

    def _on_deadline(self, kind: int, obj: Any, token: int, now: float) -> None:
        if type(obj) is not Run:
            super()._on_deadline(kind, obj, token, now)
            return
        run: Run = obj
        ext = run.ext
        if ext is None or ext.done or run.gone:
            return
        left = run.count - run.answered
        self.stats.timeouts += left
        up = run.upstream
        if up is not None and up.state is not _CLOSED:
            up.dead += 1  # the FIFO entry stays until the last late reply
            if up.dead > MAX_DEAD:
                self._retire(up)
        self._run_fail(run, ErrorKind.TIMEOUT, TIMEOUT_TEXT, now)

    def _fail_request(
        self, req: ActiveRequest, kind: ErrorKind, text: str, now: float, condition: str = ""
    ) -> None:
        if type(req) is not Run:
            super()._fail_request(req, kind, text, now, condition)
            return
        run = req
        up = run.upstream
        if up is not None:
            self._run_left(up)
        if not run.gone:
            self._run_fail(run, kind, text, now)

    def _untrack(self, req: ActiveRequest) -> None:
        if type(req) is not Run:
            super()._untrack(req)
            return
        run = req
        if not run.gone:
            run.gone = True
            self._run_untrack(run, run.count - run.answered)
        up = run.upstream
        if up is not None:
            self._run_left(up)


def _replies(buf: bytes, pos: int, ends: list[int]) -> bytes:
    """The replies among the values measured at ``buf[pos:]``, without the skipped ones."""
    pieces: list[bytes] = []
    for e in ends:
        end = e >> 2
        if e & 3 != REPLY_SKIP:
            pieces.append(buf[pos:end])
        pos = end
    return b"".join(pieces)
