"""Global rate limit slot: the request waits for the runtime's answer; others go on."""

from __future__ import annotations

from metamesh.proxy.config import GlobalRateLimitConfig
from metamesh.proxy.filters import GLOBAL_RATELIMIT
from metamesh.proxy.filters.ratelimit import RATELIMIT_CHECK
from tests.proxy.filters.support import ROUTER, policy_harness, route, tick
from tests.proxy.harness import Harness, call


def harness(deny: bool) -> tuple[Harness, list[tuple[object, ...]]]:
    config = GlobalRateLimitConfig(
        "kv", descriptors=(("method", "method"),), timeout=0.02, failure_mode_deny=deny
    )
    h = policy_harness(
        [route()],
        filters=(GLOBAL_RATELIMIT, ROUTER),
        filter_configs=((GLOBAL_RATELIMIT, config),),
    )
    checks: list[tuple[object, ...]] = []

    def observe(action: tuple[object, ...]) -> None:
        if action[0] == RATELIMIT_CHECK:
            checks.append(action)

    h.on_action.append(observe)
    return h, checks


def test_answers_resume_requests_out_of_order() -> None:
    h, checks = harness(deny=False)
    d = h.client()
    h.send(d, call(1, method="get") + call(2, method="put"))
    assert [c[4] for c in checks] == [(("method", "get"),), (("method", "put"),)]
    assert h.connects == []
    _, req2, token2 = checks[1][:3]
    h.core.resume_request(req2, token2, False, h.now)  # type: ignore[arg-type]
    h.flush()
    assert [(f[2], f[3]) for f in h.take(d)] == [(2, {"error": "over_limit"})]
    _, req1, token1 = checks[0][:3]
    h.core.resume_request(req1, token1, True, h.now)  # type: ignore[arg-type]
    h.flush()
    assert len(h.connects) == 1
    h.core.resume_request(req1, token1, False, h.now)  # a second answer is ignored
    h.flush()
    assert h.take(d) == []


def test_timeout_applies_failure_mode() -> None:
    for deny in (False, True):
        h, _checks = harness(deny)
        d = h.client()
        h.send(d, call(1, method="get"))
        tick(h, 0.02)
        if deny:
            assert [f[3] for f in h.take(d)] == [{"error": "over_limit"}]
        else:
            assert len(h.connects) == 1
