"""The global rate limit service (``metamesh ratelimit-server``).

An implementation of Envoy's ``envoy.service.ratelimit.v3.RateLimitService`` (the gRPC API the
proxy's ``aeraki.meta_protocol.filters.ratelimit`` filter, and Envoy itself, call) with limits
in the reference service's YAML format and fixed-window counters in Redis, so any number of
server processes behind any number of proxies enforce one shared limit.

* :mod:`.limits`: the limits YAML, validation with file- and field-named errors, matching;
* :mod:`.counting`: window arithmetic and Redis keys (pure), the Redis counter;
* :mod:`.service`: the gRPC servicer and server process (reload on SIGHUP or file change).
"""
