"""The core's deadlines (sans-IO): FIFO lanes per timeout duration beside the heap."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from metamesh.proxy.policy import DeadlineQueue


def request(done: bool = False) -> Any:
    """What a lane looks at: an ActiveRequest's ``ext.done``."""
    return SimpleNamespace(ext=SimpleNamespace(done=done))


def test_lanes_and_heap_fire_in_time_order() -> None:
    q = DeadlineQueue()
    a, b, c = request(), request(), request()
    assert q.push_after(10.0, 5.0, 0, a) == 15.0
    assert q.push_after(11.0, 2.0, 1, b, 7) == 13.0  # another duration: another lane
    q.push(14.0, 2, c)  # the heap (a retry, say)
    assert q.next_deadline() == 13.0 and len(q) == 3
    assert q.pop_due(12.9) == []
    assert q.pop_due(15.0) == [(1, b, 7), (2, c, 0), (0, a, 0)]
    assert q.next_deadline() is None and len(q) == 0


def test_answered_requests_leave_the_front_of_their_lane_as_new_ones_come() -> None:
    q = DeadlineQueue()
    reqs = [request() for _ in range(1000)]
    for i, r in enumerate(reqs):
        q.push_after(float(i), 5.0, 0, r)
        if i >= 2:
            reqs[i - 2].ext.done = True  # answered two requests later
    assert len(q) == 3  # only what is still in flight, and the newest answered one
    for r in reqs[-2:]:
        r.ext.done = True
    slow = request()
    q.push_after(1000.0, 5.0, 0, slow)
    for i in range(1001, 1100):  # answered at once, behind the slow one: kept until it ends
        r = request()
        q.push_after(float(i), 5.0, 0, r)
        r.ext.done = True
    assert len(q) == 100
    slow.ext.done = True
    q.push_after(1100.0, 5.0, 0, request())
    assert len(q) == 1


def test_a_deadline_earlier_than_its_lane_end_goes_to_the_heap() -> None:
    q = DeadlineQueue()
    late, early = request(), request()
    q.push_after(10.0, 5.0, 0, late)
    q.push_after(9.0, 5.0, 0, early)  # a clock that went back
    assert q.next_deadline() == 14.0
    assert q.pop_due(20.0) == [(0, early, 0), (0, late, 0)]
