"""The request lifecycle for routes with filters or traffic policies (sans-IO).

Requests whose route has a filter chain, a timeout or a retry policy carry a
:class:`~metamesh.proxy.policy.RequestExt` and take this path: the decoder filters run in order
(a filter may stop the request and resume it later, from a timer or an asynchronous answer such
as a global rate limit check); then :meth:`Attempts._dispatch` routes it exactly like the plain
path (cluster, circuit breakers, load balancer excluding endpoints that already failed, pool).
Failed attempts may be retried with jittered back-off; route and per-try timeouts, retries,
resumes and ends of outlier ejections are entries of the one
:class:`~metamesh.proxy.policy.DeadlineQueue` that :meth:`Attempts.on_timer` drains. Outlier
detection hears about every endpoint failure through :meth:`Attempts._endpoint_failed`.
"""

from __future__ import annotations

from typing import Any

from metamesh.codecs import (
    ErrorKind,
    Message,
)
from metamesh.proxy.core import (
    _CLOSED,
    _CONNECTING,
    _ONEWAY,
    _READY,
    _REQUEST,
    CLOSE_UPSTREAM,
    GONE,
    LOG,
    MAX_DEAD,
    WARNING,
)
from metamesh.proxy.filters.base import LocalReply, Stop
from metamesh.proxy.filters.chain import RouteExtras
from metamesh.proxy.listener import Downstream
from metamesh.proxy.mirror import Mirroring
from metamesh.proxy.policy import (
    CONNECT_TIMEOUT,
    RESUME,
    RETRY,
    ROUTE_TIMEOUT,
    TIMEOUT,
    TRY_TIMEOUT,
    UNEJECT,
    RequestExt,
)
from metamesh.proxy.router import CompiledRoute, no_route_text
from metamesh.proxy.tracing import Span
from metamesh.proxy.upstream import ActiveRequest, ClusterState, Upstream


class Attempts(Mirroring):
    """Requests on routes with filters or policies: chain, dispatch, retries, timeouts."""

    def _start(
        self,
        d: Downstream,
        msg: Message,
        route: CompiledRoute | None,
        ex: RouteExtras,
        now: float,
        span: Span | None = None,
    ) -> None:
        """A request on a route with filters or policies: run the chain, then route."""
        req = ActiveRequest(d, msg, route, None, now, None)
        req.span = span
        ext = req.ext = RequestExt(ex.policy, ex.chain)
        if ex.chain:
            self._run_chain(req, ext, 0, now)
        else:
            self._dispatch(req, ext, now)

    def _run_chain(self, req: ActiveRequest, ext: RequestExt, start: int, now: float) -> None:
        chain = ext.chain
        for k in range(start, len(chain)):
            result = chain[k].on_request(req, now)
            if result is None:
                continue
            if type(result) is Stop:
                ext.filter_index = k + 1
                ext.then = result.then
                ext.wait_token += 1
                d = req.downstream
                if not d.listener.multiplexed and not ext.ordered:
                    ext.ordered = True  # hold this request's place in the reply order
                    d.order.append(req)
                if result.resume_at is not None:
                    self.deadlines.push(result.resume_at, RESUME, req, ext.wait_token)
                return
            assert isinstance(result, LocalReply)
            self._policy_reply(req, ext, result.kind, result.message, now)
            return
        self._dispatch(req, ext, now)

    def resume_request(
        self, req: ActiveRequest, token: int, allowed: bool | None, now: float
    ) -> None:
        """An asynchronous filter answer (global rate limit) for a stopped request.

        ``allowed`` True continues the chain, False answers ``OVER_LIMIT``, None (the check
        failed) applies the filter's failure mode. Answers that come after the filter's own
        timeout (or for a request already answered) are ignored.
        """
        ext = req.ext
        if ext is None or ext.done or token != ext.wait_token:
            return
        ext.wait_token += 1
        if allowed is None:
            self.stats.ratelimit_errors += 1
            self._after_stop(req, ext, ext.then, now)
        elif allowed:
            self.stats.ratelimit_ok += 1
            self._after_stop(req, ext, None, now)
        else:
            self.stats.ratelimit_over_limit += 1
            over = LocalReply(ErrorKind.OVER_LIMIT, "global rate limit exceeded")
            self._after_stop(req, ext, over, now)

    def _after_stop(
        self, req: ActiveRequest, ext: RequestExt, then: LocalReply | None, now: float
    ) -> None:
        if req.downstream.closed:
            ext.done = True
        elif then is not None:
            self._policy_reply(req, ext, then.kind, then.message, now)
        else:
            self._run_chain(req, ext, ext.filter_index, now)

    def _dispatch(self, req: ActiveRequest, ext: RequestExt, now: float) -> None:
        """The router for requests with filters or policies (first attempt and retries)."""
        d = req.downstream
        if d.closed:
            ext.done = True
            return
        route = req.route
        if route is None:
            text = no_route_text(req.request, d.listener.config.service)
            self._policy_reply(req, ext, ErrorKind.ROUTE_NOT_FOUND, text, now)
            return
        cs = req.cluster
        first = cs is None
        if cs is None:
            cs = self._first_attempt(req, ext, route, now)
            if cs is None:
                return
        msg = req.request
        up = self._pick_upstream(d, msg, route, cs, ext.excluded, now)
        if isinstance(up, tuple):
            self._policy_reply(req, ext, up[0], up[1], now)
            return
        ext.sent = up.state is _READY
        req.stats = self._request_stats(d, cs, up.endpoint_index)
        if up.tell:
            req.request = self._tell(d.codec, req.request, up)
        self._send(up, req, d.codec, up.endpoint_index)
        if msg.type is _ONEWAY:
            ext.done = True
            if ext.ordered:  # a stopped one-way request held a place in the reply order
                self._reply_in_order(d, req, b"")
        else:
            policy = ext.policy
            if policy is not None and policy.per_try_timeout is not None:
                self.deadlines.push_after(
                    now, policy.per_try_timeout, TRY_TIMEOUT, req, ext.attempt
                )
        if first and route.mirrors:
            self._mirror(d, msg, route, now)

    def _first_attempt(
        self, req: ActiveRequest, ext: RequestExt, route: CompiledRoute, now: float
    ) -> ClusterState | None:
        """What a request's first attempt settles for all: its cluster (None: answered with
        ``CLUSTER_NOT_FOUND``), statistics, route timeout and request mutation."""
        cluster_name = route.cluster or route.pick_cluster(self.rng)
        cs = self.clusters.get(cluster_name)
        if cs is None:
            text = f"unknown cluster {cluster_name}"
            self._policy_reply(req, ext, ErrorKind.CLUSTER_NOT_FOUND, text, now)
            return None
        req.cluster = cs
        d = req.downstream
        req.stats = self._request_stats(d, cs, -1)  # until an endpoint is picked
        policy = ext.policy
        if policy is not None and policy.timeout is not None and req.request.type is _REQUEST:
            ext.deadline = self.deadlines.push_after(now, policy.timeout, ROUTE_TIMEOUT, req)
        if route.request_mutation is not None:
            req.request = self._mutated(d.codec, req.request, route.request_mutation)
        return cs

    def _retry(self, req: ActiveRequest, condition: str, now: float) -> bool:
        """Try ``req`` again after a failed attempt, if its policy allows; True if so."""
        ext = req.ext
        if ext is None or ext.done:
            return False
        policy = ext.policy
        if policy is None or req.downstream.closed or not policy.may_retry(ext, condition):
            return False
        if ext.deadline is not None and now >= ext.deadline:
            return False
        if req.endpoint_index >= 0:
            ext.excluded.add(req.endpoint_index)
        req.upstream = None
        ext.attempt += 1
        self.stats.retries += 1
        delay = policy.backoff(ext.attempt, self.rng)
        if delay > 0:
            self.deadlines.push(now + delay, RETRY, req, ext.attempt)
        else:
            self._dispatch(req, ext, now)
        return True

    def _abort_attempt(self, req: ActiveRequest) -> None:
        """Take a timed-out attempt off its upstream; its id stays reserved until the late
        reply comes (which is then dropped), so the id is never reused too early."""
        up = req.upstream
        if up is None:
            return
        req.upstream = None
        if up.state is _CONNECTING and req.ext is not None:
            req.ext.sent = True  # its bytes are queued and will still go out on connect
        if up.state is not _CLOSED:
            pending = up.pending
            for rid, r in pending.items():
                if r is req:
                    pending[rid] = GONE
                    up.dead += 1
                    break
            else:
                fifo = up.fifo
                for i, r in enumerate(fifo):
                    if r is req:
                        fifo[i] = GONE
                        up.dead += 1
                        break
            if up.dead > MAX_DEAD:  # an upstream that stopped answering: stop using it
                self._retire(up)
        self._untrack(req)

    def _endpoint_failed(self, cs: ClusterState, idx: int, now: float) -> None:
        """Outlier detection: count a failure of endpoint ``idx``; maybe eject it."""
        od = cs.outlier
        if od is None or idx < 0:
            return
        until = od.failure(idx, cs.lb, now)
        if until is not None:
            self.stats.outlier_ejections += 1
            e = cs.config.endpoints[idx]
            text = f"{cs.config.name}: ejected {e.address}:{e.port} until {until:.3f}"
            self.actions.append((LOG, WARNING, text))
            self.deadlines.push(until, UNEJECT, cs)

    def _on_deadline(self, kind: int, obj: Any, token: int, now: float) -> None:
        if kind == CONNECT_TIMEOUT:
            up: Upstream = obj
            if up.state is _CONNECTING and now >= up.connect_deadline:
                self.upstream_connect_failed(up, "connect timeout", now)
                self.actions.append((CLOSE_UPSTREAM, up))
            return
        if kind == UNEJECT:
            state: ClusterState = obj
            if state.outlier is not None:
                state.outlier.expire(state.lb, now)
            return
        req: ActiveRequest = obj
        ext = req.ext
        if ext is None or ext.done:
            return
        if kind == RESUME:
            if token == ext.wait_token:
                ext.wait_token += 1
                self._after_stop(req, ext, ext.then, now)
        elif kind == RETRY:
            if token == ext.attempt:
                self._dispatch(req, ext, now)
        elif kind == TRY_TIMEOUT:
            if token == ext.attempt and req.upstream is not None:
                self.stats.timeouts += 1
                cs = req.cluster
                if cs is not None:
                    self._endpoint_failed(cs, req.endpoint_index, now)
                self._abort_attempt(req)
                if not self._retry(req, TIMEOUT, now):
                    self._timed_out(req, ext, "per-try timeout", now)
        elif kind == ROUTE_TIMEOUT:
            self.stats.timeouts += 1
            if req.upstream is not None:
                cs = req.cluster
                if cs is not None:
                    self._endpoint_failed(cs, req.endpoint_index, now)
                self._abort_attempt(req)
            self._timed_out(req, ext, "route timeout", now)

    def on_timer(self, now: float) -> None:
        """Fire every deadline that has passed: connect timeouts, request and per-try
        timeouts, delayed retries, paused filters, ends of outlier ejections."""
        for kind, obj, token in self.deadlines.pop_due(now):
            self._on_deadline(kind, obj, token, now)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do (the runtime arms one timer)."""
        return self.deadlines.next_deadline()
