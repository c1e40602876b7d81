"""Traffic policies of the request path: timeouts, retries, outlier detection (sans-IO).

Everything here takes ``now`` as an argument and keeps no clock. Three pieces:

* :class:`RoutePolicy` is a route's timeout and retry policy compiled once per snapshot; routes
  without either get ``None`` and the connection manager never looks further.
* :class:`RequestExt` is the per-request state a policy or a filter chain needs (attempt count,
  endpoints that failed, deadlines, where a paused filter chain resumes). Plain requests carry
  ``None`` instead, so the common path allocates nothing extra.
* :class:`DeadlineQueue` holds the deadlines: request timeouts, per-try timeouts, delayed
  retries, paused filters and outlier returns. Each kind checks on expiry whether it still
  applies (a request that was answered, an attempt that was superseded), so cancelling is free.
  Request and per-try timeouts, one per request at the request rate, go into a FIFO lane per
  duration (:meth:`DeadlineQueue.push_after`): deadlines of one duration set in loop-time order
  are already sorted, so they cost O(1) instead of a heap's O(log n) tuple comparisons, and
  the entries of answered requests are dropped from the lane's front as new ones come, instead
  of keeping every request alive for its whole timeout. The rest share one heap of ``(when,
  seq, kind, obj, token)``. The runtime asks :meth:`DeadlineQueue.next_deadline` for the one
  timer it arms.
* :class:`OutlierDetector` counts consecutive failures per endpoint and ejects endpoints by
  clearing their flag in the load balancer's ``healthy`` list until their ejection ends.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from typing import Any

from metamesh.proxy.config import RETRY_ON_VALUES, Endpoint, OutlierDetection, RetryPolicy, Route
from metamesh.proxy.lb import LoadBalancer

#: Deadline kinds (what an entry of the DeadlineQueue means).
ROUTE_TIMEOUT, TRY_TIMEOUT, RETRY, RESUME, UNEJECT, CONNECT_TIMEOUT = range(6)

#: Retry conditions.
CONNECT_FAILURE, RESET, ERROR_RESPONSE, TIMEOUT = RETRY_ON_VALUES


class RoutePolicy:
    """A route's timeout and retry settings, flattened for the request path."""

    __slots__ = (
        "backoff_base",
        "backoff_max",
        "num_retries",
        "per_try_timeout",
        "retry_non_idempotent",
        "retry_on",
        "timeout",
    )

    def __init__(self, timeout: float | None, retry: RetryPolicy | None) -> None:
        self.timeout = timeout
        self.num_retries = retry.num_retries if retry is not None else 0
        self.retry_on = frozenset(retry.retry_on) if retry is not None else frozenset()
        self.per_try_timeout = retry.per_try_timeout if retry is not None else None
        base = retry.backoff_base if retry is not None else 0.0
        self.backoff_base = base
        limit = retry.backoff_max if retry is not None else None
        self.backoff_max = limit if limit is not None else 10.0 * base
        self.retry_non_idempotent = retry.retry_non_idempotent if retry is not None else False

    @staticmethod
    def compile(route: Route) -> RoutePolicy | None:
        """The policy of ``route``, or ``None`` when it has no timeout and no retries."""
        action = route.route
        retry = action.retry_policy
        if action.timeout is None and (retry is None or retry.num_retries <= 0):
            return None
        return RoutePolicy(action.timeout, retry if retry and retry.num_retries > 0 else None)

    def try_timeout(self) -> float | None:
        """How long one attempt may take (the per-try timeout, else the route timeout)."""
        return self.per_try_timeout if self.per_try_timeout is not None else self.timeout

    def may_retry(self, ext: RequestExt, condition: str) -> bool:
        """Whether a failed attempt of ``ext``'s request may be tried again."""
        if ext.attempt >= self.num_retries or condition not in self.retry_on:
            return False
        # Once the request reached an upstream, the server may have acted on it.
        return not ext.sent or self.retry_non_idempotent

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Wait before retry ``retry_number`` (1-based): fully jittered exponential."""
        if self.backoff_base <= 0:
            return 0.0
        ceiling: float = min(self.backoff_max, self.backoff_base * 2.0 ** (retry_number - 1))
        return float(rng.random() * ceiling)


class RequestExt:
    """Policy and filter-chain state of one request (absent for plain requests)."""

    __slots__ = (
        "attempt",
        "chain",
        "deadline",
        "done",
        "excluded",
        "filter_index",
        "ordered",
        "policy",
        "sent",
        "then",
        "wait_token",
    )

    def __init__(self, policy: RoutePolicy | None, chain: tuple[Any, ...]) -> None:
        self.policy = policy
        self.chain = chain
        self.filter_index = 0
        self.attempt = 0  # retries made so far
        self.sent = False  # this attempt's bytes were handed to a connected upstream
        self.done = False  # answered (or abandoned): every pending deadline is stale
        self.deadline: float | None = None
        self.excluded: set[int] = set()  # endpoint indexes that failed an attempt
        self.ordered = False  # already queued in the client's reply order (pipelined)
        self.then: Any = None  # result to apply when a stopped filter resumes
        self.wait_token = 0  # bumps on every stop, so a stale resume is ignored


#: The entries of a lane: (when, kind, request, token).
LaneEntry = tuple[float, int, Any, int]


class DeadlineQueue:
    """Deadlines: FIFO lanes per timeout duration, and a heap; see the module docstring."""

    __slots__ = ("_heap", "_lanes", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any, int]] = []
        self._seq = itertools.count()
        #: timeout duration -> its deadlines in the order they were set (their time order)
        self._lanes: dict[float, deque[LaneEntry]] = {}

    def push(self, when: float, kind: int, obj: Any, token: int = 0) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, obj, token))

    def push_after(self, now: float, duration: float, kind: int, req: Any, token: int = 0) -> float:
        """A request's deadline ``duration`` after ``now`` (``now`` never goes back: the
        loop's monotonic time), in ``duration``'s lane; returns it. ``req`` is an
        :class:`~metamesh.proxy.upstream.ActiveRequest` with a :class:`RequestExt`: entries
        at the lane's front whose request is done are dropped first."""
        when = now + duration
        lane = self._lanes.get(duration)
        if lane is None:
            lane = self._lanes[duration] = deque()
        else:
            while lane and lane[0][2].ext.done:
                lane.popleft()
            if lane and lane[-1][0] > when:  # (a clock that went back: keep the order right)
                self.push(when, kind, req, token)
                return when
        lane.append((when, kind, req, token))
        return when

    def next_deadline(self) -> float | None:
        heap = self._heap
        first = heap[0][0] if heap else None
        for lane in self._lanes.values():
            if lane and (first is None or lane[0][0] < first):
                first = lane[0][0]
        return first

    def pop_due(self, now: float) -> list[tuple[int, Any, int]]:
        """Every entry whose time has come, earliest first."""
        heap = self._heap
        found: list[tuple[float, int, Any, int]] = []
        while heap and heap[0][0] <= now:
            when, _, kind, obj, token = heapq.heappop(heap)
            found.append((when, kind, obj, token))
        lanes = 0
        for lane in self._lanes.values():
            if lane and lane[0][0] <= now:
                lanes += 1
                while lane and lane[0][0] <= now:
                    found.append(lane.popleft())
        if lanes and len(found) > 1:
            found.sort(key=_when)
        return [(kind, obj, token) for _, kind, obj, token in found]

    def __len__(self) -> int:
        return len(self._heap) + sum(len(lane) for lane in self._lanes.values())


def _when(entry: tuple[float, int, Any, int]) -> float:
    return entry[0]


def pick_excluding(lb: LoadBalancer, hash_key: int | None, excluded: set[int]) -> int | None:
    """``lb``'s pick, moved to the next healthy endpoint not in ``excluded`` when possible.

    Falls back to the plain pick when every healthy endpoint already failed (a retry to the
    same endpoint beats no retry at all).
    """
    idx = lb.pick(hash_key)
    if idx is None or idx not in excluded:
        return idx
    n = len(lb.endpoints)
    healthy = lb.healthy
    for k in range(1, n):
        j = (idx + k) % n
        if healthy[j] and j not in excluded:
            return j
    return idx


class OutlierDetector:
    """Consecutive-error ejection for one cluster; state survives endpoint list changes."""

    __slots__ = ("config", "consecutive", "ejected_until", "ejections", "endpoints", "returned")

    def __init__(self, config: OutlierDetection, endpoints: tuple[Endpoint, ...]) -> None:
        self.config = config
        self.endpoints = endpoints
        n = len(endpoints)
        self.consecutive = [0] * n
        self.ejections = [0] * n  # ejection multiplier, decays while the endpoint is healthy
        self.ejected_until: list[float | None] = [None] * n
        self.returned = [0.0] * n  # when the endpoint last came back

    def adopt(self, old: OutlierDetector | None, lb: LoadBalancer) -> None:
        """Carry state over from ``old`` (by address) and mark ejected endpoints in ``lb``."""
        if old is None:
            return
        index = {(e.address, e.port): i for i, e in enumerate(old.endpoints)}
        for j, e in enumerate(self.endpoints):
            i = index.get((e.address, e.port))
            if i is None:
                continue
            self.consecutive[j] = old.consecutive[i]
            self.ejections[j] = old.ejections[i]
            self.ejected_until[j] = old.ejected_until[i]
            self.returned[j] = old.returned[i]
            if old.ejected_until[i] is not None:
                lb.healthy[j] = False

    def success(self, idx: int) -> None:
        self.consecutive[idx] = 0

    def failure(self, idx: int, lb: LoadBalancer, now: float) -> float | None:
        """Count a failure; returns the end of the ejection when this one ejects ``idx``."""
        if idx >= len(self.consecutive) or self.ejected_until[idx] is not None:
            return None
        self.consecutive[idx] += 1
        config = self.config
        if self.consecutive[idx] < config.consecutive_errors:
            return None
        n = len(self.endpoints)
        ejected = sum(1 for t in self.ejected_until if t is not None)
        if ejected and (ejected + 1) * 100.0 > config.max_ejection_percent * n:
            return None
        decay = int((now - self.returned[idx]) // config.interval) if config.interval > 0 else 0
        count = max(0, self.ejections[idx] - decay) + 1
        self.ejections[idx] = count
        until = now + config.base_ejection_time * count
        self.ejected_until[idx] = until
        self.consecutive[idx] = 0
        lb.healthy[idx] = False
        return until

    def expire(self, lb: LoadBalancer, now: float) -> None:
        """Return every endpoint whose ejection has ended."""
        for i, until in enumerate(self.ejected_until):
            if until is not None and now >= until:
                self.ejected_until[i] = None
                self.returned[i] = now
                if i < len(lb.healthy):
                    lb.healthy[i] = True
