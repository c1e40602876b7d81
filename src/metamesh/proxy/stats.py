"""Every proxy statistic, declared in one place as plain integers.

The request path only does ``+= 1`` on attributes of objects it already holds (no locks, no
label lookups, no prometheus objects): one :class:`ProxyStats` per worker core, and one
:class:`RequestStats` per label set, which the request path finds in a row per (connection
:class:`~metamesh.proxy.telemetry.Origin`, cluster) indexed by endpoint: a dict lookup by
identity and a list index per request. The admin endpoint turns these into Prometheus text at
scrape time (:mod:`metamesh.runtime.admin`), using Istio's standard metric and label names:

* ``istio_requests_total``, ``istio_request_duration_milliseconds``,
  ``istio_request_bytes`` and ``istio_response_bytes`` (histograms) with Istio's full label set
  (:data:`metamesh.proxy.telemetry.ISTIO_LABELS`): ``response_code`` is ``0`` ok / ``1``
  error, as MetaProtocol reports, ``response_flags`` Envoy's flag of a local reply (``NR``,
  ``UH``, ``UT``, ...) or ``-``;
* ``istio_tcp_*`` per client connection (:class:`TcpStats`);
* ``metamesh_*`` counters and gauges below (names are stable; see :data:`COUNTERS`).
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs import ErrorKind
from metamesh.proxy.telemetry import BASE_LABELS, UNKNOWN_WORKLOAD, Origin, Workload

#: Istio's default duration buckets, in milliseconds.
DURATION_BUCKETS_MS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip

#: Istio's default size buckets, in bytes (istio_request_bytes / istio_response_bytes).
SIZE_BUCKETS: Final[tuple[int, ...]] = (
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
)  # fmt: skip

#: metamesh counters: attribute of ProxyStats -> (metric name, help).
COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "downstream_decode_errors": (
        "metamesh_downstream_decode_errors_total",
        "Client connections closed because their bytes were not a valid frame",
    ),
    "downstream_frame_too_large": (
        "metamesh_downstream_frame_too_large_total",
        "Client connections closed because a frame exceeded the size limit",
    ),
    "downstream_half_closed": (
        "metamesh_downstream_half_closed_total",
        "Clients that ended their sending side with requests in flight, kept open to answer them",
    ),
    "downstream_frame_timeouts": (
        "metamesh_downstream_frame_timeouts_total",
        "Client connections closed because a frame they started was not complete in time",
    ),
    "downstream_cx_evicted": (
        "metamesh_downstream_cx_evicted_total",
        "Idle client connections closed to make room for a new one at the connection cap",
    ),
    "downstream_cx_overflow": (
        "metamesh_downstream_cx_overflow_total",
        "New client connections refused at the connection cap (no idle client to replace)",
    ),
    "downstream_drained": (
        "metamesh_downstream_drained_total",
        "Client connections closed by a drain once they were owed nothing",
    ),
    "drain_aborted_requests": (
        "metamesh_drain_aborted_requests_total",
        "Requests still in flight upstream at the drain deadline, answered with an error",
    ),
    "downstream_idle_timeouts": (
        "metamesh_downstream_idle_timeouts_total",
        "Client connections closed after the listener's idle_timeout with no request in flight",
    ),
    "downstream_truncated": (
        "metamesh_downstream_truncated_frames_total",
        "Client connections that closed in the middle of a frame",
    ),
    "downstream_unread": (
        "metamesh_downstream_unread_replies_closed_total",
        "Client connections closed because they did not read their replies (stalled too long "
        "or too many bytes queued)",
    ),
    "downstream_unexpected_frames": (
        "metamesh_downstream_unexpected_frames_total",
        "Frames from clients that are neither requests nor heartbeats (dropped)",
    ),
    "upstream_decode_errors": (
        "metamesh_upstream_decode_errors_total",
        "Upstream connections reset because their bytes were not a valid frame",
    ),
    "upstream_connects": ("metamesh_upstream_connects_total", "Upstream connections opened"),
    "upstream_connect_failures": (
        "metamesh_upstream_connect_failures_total",
        "Upstream connection attempts that failed or timed out",
    ),
    "upstream_resets": (
        "metamesh_upstream_resets_total",
        "Upstream connections that closed with requests in flight",
    ),
    "upstream_unmatched_responses": (
        "metamesh_upstream_unmatched_responses_total",
        "Upstream responses whose request id matched no request in flight (dropped)",
    ),
    "heartbeats": ("metamesh_heartbeats_total", "Client heartbeats answered by the proxy"),
    "oneway_requests": ("metamesh_oneway_requests_total", "One-way requests forwarded"),
    "mirrored_requests": ("metamesh_mirrored_requests_total", "Request copies sent to mirrors"),
    "mirror_dropped": (
        "metamesh_mirror_dropped_total",
        "Request copies not sent because the mirror's connection was congested",
    ),
    "downstream_connections_total": (
        "metamesh_downstream_connections_total",
        "Client connections accepted",
    ),
    "retries": ("metamesh_retries_total", "Request attempts retried by a route retry policy"),
    "timeouts": (
        "metamesh_timeouts_total",
        "Request attempts that ran past a route timeout or per-try timeout",
    ),
    "redirects": (
        "metamesh_redirects_total",
        "Requests sent again to the endpoint a cluster's redirection named (Redis MOVED/ASK)",
    ),
    "late_responses": (
        "metamesh_late_responses_total",
        "Upstream responses that arrived after their request timed out (dropped)",
    ),
    "outlier_ejections": (
        "metamesh_outlier_ejections_total",
        "Endpoints ejected by outlier detection",
    ),
    "ratelimit_ok": (
        "metamesh_ratelimit_ok_total",
        "Requests admitted by a rate limit filter",
    ),
    "ratelimit_over_limit": (
        "metamesh_ratelimit_over_limit_total",
        "Requests refused by a rate limit filter",
    ),
    "ratelimit_errors": (
        "metamesh_ratelimit_errors_total",
        "Global rate limit checks that failed or timed out",
    ),
    "rbac_allowed": ("metamesh_rbac_allowed_total", "Requests allowed by authorization"),
    "rbac_denied": ("metamesh_rbac_denied_total", "Requests denied by authorization"),
    "fault_delays": ("metamesh_fault_delays_total", "Requests delayed by fault injection"),
    "fault_aborts": ("metamesh_fault_aborts_total", "Requests aborted by fault injection"),
}

#: metamesh gauges: attribute of ProxyStats -> (metric name, help).
GAUGES: Final[dict[str, tuple[str, str]]] = {
    "active_downstream_connections": (
        "metamesh_active_downstream_connections",
        "Open client connections",
    ),
    "active_upstream_connections": (
        "metamesh_active_upstream_connections",
        "Open or connecting upstream connections",
    ),
    "active_requests": ("metamesh_active_requests", "Requests waiting for an upstream response"),
}


class ProxyStats:
    """Worker-wide counters; attribute names are the keys of :data:`COUNTERS` / :data:`GAUGES`.

    ``local_replies`` counts local replies by reason (``metamesh_local_replies_total``);
    ``mutations_dropped`` accumulates codecs' ``dropped_mutations`` when connections close.
    """

    __slots__ = (
        *COUNTERS,
        *GAUGES,
        "local",
        "commands",
        "local_replies",
        "mutations_dropped",
        "origins",
        "requests",
        "tcp",
    )

    def __init__(self) -> None:
        self.downstream_decode_errors = 0
        self.downstream_frame_too_large = 0
        self.downstream_truncated = 0
        self.downstream_half_closed = 0
        self.downstream_idle_timeouts = 0
        self.downstream_drained = 0
        self.downstream_frame_timeouts = 0
        self.downstream_cx_evicted = 0
        self.downstream_cx_overflow = 0
        self.drain_aborted_requests = 0
        self.downstream_unexpected_frames = 0
        self.downstream_unread = 0
        self.upstream_decode_errors = 0
        self.upstream_connects = 0
        self.upstream_connect_failures = 0
        self.upstream_resets = 0
        self.upstream_unmatched_responses = 0
        self.heartbeats = 0
        self.oneway_requests = 0
        self.mirrored_requests = 0
        self.mirror_dropped = 0
        self.downstream_connections_total = 0
        self.retries = 0
        self.timeouts = 0
        self.late_responses = 0
        self.redirects = 0
        self.outlier_ejections = 0
        self.ratelimit_ok = 0
        self.ratelimit_over_limit = 0
        self.ratelimit_errors = 0
        self.rbac_allowed = 0
        self.rbac_denied = 0
        self.fault_delays = 0
        self.fault_aborts = 0
        self.active_downstream_connections = 0
        self.active_upstream_connections = 0
        self.active_requests = 0
        self.local_replies: dict[ErrorKind, int] = dict.fromkeys(ErrorKind, 0)
        self.mutations_dropped = 0
        #: This proxy's workload: the source of what it sends out, the destination of what
        #: its inbound listeners receive. Set by the runtime before traffic flows.
        self.local: Workload = UNKNOWN_WORKLOAD
        #: Interned connection origins (see :class:`~metamesh.proxy.telemetry.Origin`).
        self.origins: dict[tuple[str, Workload, str, str, str], Origin] = {}
        #: request labels (:func:`~metamesh.proxy.telemetry.request_labels`) -> RequestStats
        self.requests: dict[tuple[str, ...], RequestStats] = {}
        #: (destination_service, request_protocol, command) -> CommandStats, kept by the
        #: ``metamesh.filters.command_stats`` filter (Redis ``enableCommandStats``)
        self.commands: dict[tuple[str, str, str], CommandStats] = {}
        #: request labels of a connection's origin -> its istio_tcp_* counters
        self.tcp: dict[tuple[str, ...], TcpStats] = {}

    def origin(
        self, reporter: str, source: Workload, protocol: str, security: str, service: str
    ) -> Origin:
        """The interned :class:`Origin` for these values."""
        key = (reporter, source, protocol, security, service)
        o = self.origins.get(key)
        if o is None:
            o = self.origins[key] = Origin(reporter, source, protocol, security, service)
        return o

    def request_stats(self, labels: tuple[str, ...]) -> RequestStats:
        """The (created on first use) request counters for one label set."""
        rs = self.requests.get(labels)
        if rs is None:
            rs = self.requests[labels] = RequestStats(labels)
        return rs

    def totals(self, **match: str) -> list[int]:
        """[ok, error] requests over every label set with these values (``BASE_LABELS``
        names: ``destination_service="a", destination_version="v1"``), local replies included."""
        where = [(BASE_LABELS.index(k), v) for k, v in match.items()]
        out = [0, 0]
        for labels, rs in self.requests.items():
            if all(labels[i] == v for i, v in where):
                for one in (rs, *rs.flagged.values()):
                    out[0] += one.count[0]
                    out[1] += one.count[1]
        return out

    def tcp_stats(self, labels: tuple[str, ...]) -> TcpStats:
        """The (created on first use) connection counters for one label set."""
        ts = self.tcp.get(labels)
        if ts is None:
            ts = self.tcp[labels] = TcpStats()
        return ts


class RequestStats:
    """Request counts, duration and size histograms for one label set (response flags ``-``);
    local replies are counted in ``flagged`` children, one per Envoy response flag.

    Written once per reply, so each response code has fields of its own: in the native build
    the counts, sums and byte totals are machine integers and floats in the object (an update
    is an add, not a list item read, a new int object and a store), and each histogram is a
    flat list per code. Readers take the per-code pairs (``count``, ``sum_ms``, ...) as
    ``[ok, error]`` lists, built when read (at scrape time).
    """

    __slots__ = (
        "error_buckets",
        "error_count",
        "error_ms",
        "error_request_buckets",
        "error_request_bytes",
        "error_response_buckets",
        "error_response_bytes",
        "flagged",
        "labels",
        "ok_buckets",
        "ok_count",
        "ok_ms",
        "ok_request_buckets",
        "ok_request_bytes",
        "ok_response_buckets",
        "ok_response_bytes",
    )

    def __init__(self, labels: tuple[str, ...] = ()) -> None:
        self.labels = labels
        self.ok_count = 0  # response_code 0
        self.error_count = 0  # response_code 1
        self.ok_ms = 0.0
        self.error_ms = 0.0
        self.ok_request_bytes = 0
        self.error_request_bytes = 0
        self.ok_response_bytes = 0
        self.error_response_bytes = 0
        # Non-cumulative counts per bucket (+1 for +Inf).
        self.ok_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.error_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.ok_request_buckets = [0] * (len(SIZE_BUCKETS) + 1)
        self.error_request_buckets = [0] * (len(SIZE_BUCKETS) + 1)
        self.ok_response_buckets = [0] * (len(SIZE_BUCKETS) + 1)
        self.error_response_buckets = [0] * (len(SIZE_BUCKETS) + 1)
        self.flagged: dict[str, RequestStats] = {}

    def observe(self, code: int, duration_ms: float, sent: int = 0, received: int = 0) -> None:
        """One request: its response code (0 ok, else error), duration, request and response
        sizes in bytes. The request path calls this once per reply."""
        if code:
            self.error_count += 1
            self.error_ms += duration_ms
            self.error_buckets[duration_bucket(duration_ms)] += 1
            self.error_request_bytes += sent
            self.error_request_buckets[size_bucket(sent)] += 1
            self.error_response_bytes += received
            self.error_response_buckets[size_bucket(received)] += 1
        else:
            self.ok_count += 1
            self.ok_ms += duration_ms
            self.ok_buckets[duration_bucket(duration_ms)] += 1
            self.ok_request_bytes += sent
            self.ok_request_buckets[size_bucket(sent)] += 1
            self.ok_response_bytes += received
            self.ok_response_buckets[size_bucket(received)] += 1

    @property
    def count(self) -> list[int]:
        """Requests, ``[ok, error]``."""
        return [self.ok_count, self.error_count]

    @property
    def sum_ms(self) -> list[float]:
        """Total duration in milliseconds, ``[ok, error]``."""
        return [self.ok_ms, self.error_ms]

    @property
    def request_bytes(self) -> list[int]:
        """Request bytes, ``[ok, error]``."""
        return [self.ok_request_bytes, self.error_request_bytes]

    @property
    def response_bytes(self) -> list[int]:
        """Response bytes, ``[ok, error]``."""
        return [self.ok_response_bytes, self.error_response_bytes]

    @property
    def buckets(self) -> list[list[int]]:
        """Duration histogram counts per bucket, ``[ok, error]`` (the live lists)."""
        return [self.ok_buckets, self.error_buckets]

    @property
    def request_buckets(self) -> list[list[int]]:
        """Request size histogram counts per bucket, ``[ok, error]`` (the live lists)."""
        return [self.ok_request_buckets, self.error_request_buckets]

    @property
    def response_buckets(self) -> list[list[int]]:
        """Response size histogram counts per bucket, ``[ok, error]`` (the live lists)."""
        return [self.ok_response_buckets, self.error_response_buckets]

    def flag(self, flags: str) -> RequestStats:
        """The counters of this label set's requests answered locally with ``flags``."""
        child = self.flagged.get(flags)
        if child is None:
            child = self.flagged[flags] = RequestStats(self.labels)
        return child


class CommandStats:
    """Per-command counters (``metamesh_command_*``): requests seen, and upstream replies by
    response code with their duration histogram."""

    __slots__ = ("buckets", "count", "labels", "requests", "sum_ms")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.requests = 0
        self.count = [0, 0]
        self.sum_ms = [0.0, 0.0]
        self.buckets = [[0] * (len(DURATION_BUCKETS_MS) + 1) for _ in range(2)]

    def observe(self, code: int, duration_ms: float) -> None:
        self.count[code] += 1
        self.sum_ms[code] += duration_ms
        self.buckets[code][duration_bucket(duration_ms)] += 1


class TcpStats:
    """Istio's TCP metrics for the closed client connections of one label set; open ones keep
    their own byte counts (``Downstream.bytes_in``/``bytes_out``), added at scrape time, so a
    connection relabelled by the metadata exchange takes all its bytes to its new labels."""

    __slots__ = ("closed", "received", "sent")

    def __init__(self) -> None:
        self.closed = 0
        self.received = 0  # bytes from clients
        self.sent = 0  # bytes queued for clients


def duration_bucket(duration_ms: float) -> int:
    """The index of the first bucket whose bound is at least ``duration_ms`` (the last index,
    ``len(DURATION_BUCKETS_MS)``, is ``+Inf``). Comparisons with literal bounds, smallest
    first: compiled, each is one machine comparison, and replies land in the first buckets
    (a loop over the tuple would read and unbox each bound; ``bisect`` is a call).
    ``tests/proxy/test_stats.py`` checks the bounds against :data:`DURATION_BUCKETS_MS`."""
    if duration_ms <= 0.5:
        return 0
    if duration_ms <= 1.0:
        return 1
    if duration_ms <= 5.0:
        return 2
    if duration_ms <= 10.0:
        return 3
    if duration_ms <= 25.0:
        return 4
    if duration_ms <= 50.0:
        return 5
    if duration_ms <= 100.0:
        return 6
    if duration_ms <= 250.0:
        return 7
    if duration_ms <= 500.0:
        return 8
    if duration_ms <= 1000.0:
        return 9
    index = 10
    for bound in DURATION_BUCKETS_MS[10:]:
        if duration_ms <= bound:
            return index
        index += 1
    return index


def size_bucket(size: int) -> int:
    """The index of the first :data:`SIZE_BUCKETS` bound at least ``size`` (last: ``+Inf``),
    by literal comparisons as :func:`duration_bucket`."""
    if size <= 100:
        return 0 if size <= 1 else (1 if size <= 10 else 2)
    if size <= 1000:
        return 3
    if size <= 10000:
        return 4
    index = 5
    for bound in SIZE_BUCKETS[5:]:
        if size <= bound:
            return index
        index += 1
    return index
