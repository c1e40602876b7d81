"""The three steps of the live demo: what each one writes, says and expects.

Each :class:`Step` names the packaged MetaRouter manifest it puts in force, the route text
``metamesh up`` prints once the proxy applied it (how the demo knows the change is live), a few
lines of explanation, and a check of the step's counts. The checks make the demo say plainly
whether what the table shows is what the route asks for; the demo exits 1 if one fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from metamesh.demo.counts import PROTOCOLS, Reading


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    title: str
    manifest: str
    served_routes: str
    explanation: tuple[str, ...]
    check: Callable[[Reading], list[str]]


def _method_route(r: Reading) -> list[str]:
    problems = []
    for p in PROTOCOLS:
        if r.method((p, "v1"), "sayHello") or not r.method((p, "v2"), "sayHello"):
            problems.append(f"{p}: sayHello is not all on v2")
        if r.method((p, "v2"), "echo") or not r.method((p, "v1"), "echo"):
            problems.append(f"{p}: echo is not all on v1")
    return problems


def within_5_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def _split(r: Reading) -> list[str]:
    problems = []
    for p in PROTOCOLS:
        if r.method((p, "v1"), "sayHello"):
            problems.append(f"{p}: sayHello reached v1")
        v1, v2 = r.method((p, "v1"), "echo"), r.method((p, "v2"), "echo")
        if not within_5_sigma(v1, v1 + v2, 0.2) or not v1 + v2:
            problems.append(f"{p}: echo v1 {v1} of {v1 + v2} is not about 20%")
    return problems


def _all_v2(r: Reading) -> list[str]:
    problems = []
    for p in PROTOCOLS:
        if r.server_total((p, "v1")) or not r.server_total((p, "v2")):
            problems.append(f"{p}: not every request on v2")
    return problems


STEPS = (
    Step(
        1,
        "route by method",
        "1-method-route.yaml",
        "sayhello-to-v2 -> v2; rest-to-v1 -> v1",
        (
            "The codecs decode each request's method name as the `method` attribute; the",
            "MetaRouter sends sayHello to v2 and every other method to v1:",
            "  - match: {attributes: {method: {exact: sayHello}}}  -> subset v2",
            "  - (no match)                                         -> subset v1",
        ),
        _method_route,
    ),
    Step(
        2,
        "a 20/80 canary split",
        "2-split.yaml",
        "sayhello-to-v2 -> v2; split-20-80 -> v1 20%, v2 80%",
        (
            "metarouter.yaml is rewritten: sayHello stays on v2, the other methods are now",
            "split by weight, 20% to v1 and 80% to v2 (picked per request):",
            "  - route: [{subset: v1, weight: 20}, {subset: v2, weight: 80}]",
        ),
        _split,
    ),
    Step(
        3,
        "a live route change: promote v2",
        "3-promote.yaml",
        "all-to-v2 -> v2",
        (
            "metarouter.yaml is rewritten while the clients keep calling on the connections",
            "they opened at the start. The control plane sees the file change and pushes the",
            "new routes over xDS; the proxy swaps its route table between two requests, so",
            "no connection is closed and no request fails:",
            "  - route: [{subset: v2}]",
        ),
        _all_v2,
    ),
)
