"""Snapshots cross the pipe to a worker as equal objects (worker_wire)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from metamesh.proxy.config import Snapshot
from metamesh.proxy.config_yaml import load_snapshot
from metamesh.runtime.worker_wire import encode, read_message

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def through_pipe(*messages: tuple[object, ...]) -> list[tuple[object, ...] | None]:
    async def run() -> list[tuple[object, ...] | None]:
        reader = asyncio.StreamReader()
        for m in messages:
            data = encode(m)
            reader.feed_data(data[:3])  # a frame in pieces
            reader.feed_data(data[3:])
        reader.feed_eof()
        return [await read_message(reader) for _ in range(len(messages) + 1)]

    return asyncio.run(run())


def test_snapshots_arrive_equal() -> None:
    snapshots = [
        load_snapshot(str(EXAMPLES / n)) for n in ("proxy-static.yaml", "proxy-policies.yaml")
    ]
    got = through_pipe(*(("apply", i, s, {"x": 1}) for i, s in enumerate(snapshots)))
    assert got[-1] is None  # the end of the pipe
    for i, (message, sent) in enumerate(zip(got, snapshots, strict=False)):
        assert message is not None and message[:2] == ("apply", i) and message[3] == {"x": 1}
        arrived = message[2]
        assert isinstance(arrived, Snapshot)
        assert arrived == sent and arrived.to_dict() == sent.to_dict()
        assert type(arrived.listeners) is type(sent.listeners)  # still read-only
