"""Record what real Kafka clients and a real broker say to each other: how ``captured.jsonl``
was made (``python -m tests.codecs.kafka.capture``, a few seconds).

A Tansu broker (tests/support/kafka_broker.py) advertises the address of a socket relay that
this script runs, so every connection the clients open (bootstrap, then the advertised broker)
passes the relay, which writes each whole frame down. kafka-python and aiokafka produce and
consume in-process; kafkajs runs ``tests/peers/node/kafka_client.js``. The first request of
each (client, API, version) is kept with its response, when that is under 4 KiB.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

from tests.support.kafka_broker import running_broker
from tests.support.ports import free_port

HERE = Path(__file__).parent
Frames = list[tuple[int, str, bytes]]  # (connection, "req" / "resp", frame)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int, way: str, out: Frames
) -> None:
    buf = bytearray()
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">i", buf)[0]:
            size = 4 + struct.unpack_from(">i", buf)[0]
            out.append((conn, way, bytes(buf[:size])))
            del buf[:size]
    writer.close()


def relay(listen: int, broker: int, out: Frames, stop: threading.Event) -> None:
    async def serve() -> None:
        count = 0

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            br, bw = await asyncio.open_connection("127.0.0.1", broker)
            await asyncio.gather(
                _pump(cr, bw, count, "req", out), _pump(br, cw, count, "resp", out)
            )

        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(serve())


def clients(address: str) -> None:
    """Produce and consume with each client through ``address`` (the relay records)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=address, client_id="kp-producer")
    producer.send("orders", b"hello", partition=0).get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=address, consumer_timeout_ms=2000,
                             auto_offset_reset="earliest", client_id="kp-consumer")  # fmt: skip
    consumer.assign([TopicPartition("orders", 0)])
    list(consumer)
    consumer.close()

    async def aio() -> None:
        p = AIOKafkaProducer(bootstrap_servers=address, client_id="ak-producer")
        await p.start()
        await p.send_and_wait("payments", b"a0", partition=0)
        await p.stop()
        c = AIOKafkaConsumer("payments", bootstrap_servers=address, group_id="ak-group",
                             auto_offset_reset="earliest", client_id="ak-consumer")  # fmt: skip
        await c.start()
        for _ in range(30):  # until the group is joined and the message read
            if await c.getmany(timeout_ms=500):
                break
        await c.stop()

    asyncio.run(aio())
    node = HERE.parents[1] / "peers" / "node"
    subprocess.run(["node", "kafka_client.js", address, "events", "kj-group", "1"],
                   cwd=node, check=True, timeout=60)  # fmt: skip


def main() -> None:
    listen = free_port()
    frames: Frames = []
    stop = threading.Event()
    with running_broker(advertised=f"127.0.0.1:{listen}") as broker:
        thread = threading.Thread(target=relay, args=(listen, broker.port, frames, stop))
        thread.start()
        try:
            clients(f"127.0.0.1:{listen}")
        finally:
            stop.set()
            thread.join()
    pending: dict[int, list[bytes]] = defaultdict(list)
    seen: set[tuple[str, int, int]] = set()
    rows = []
    for conn, way, frame in frames:
        if way == "req":
            pending[conn].append(frame)
            continue
        request = pending[conn].pop(0)
        api_key, version = struct.unpack_from(">hh", request, 4)
        client = "kafka-python" if b"kp-" in request else "kafkajs"
        client = "aiokafka" if b"ak-" in request else client
        if (client, api_key, version) in seen or len(frame) > 4096:
            continue
        seen.add((client, api_key, version))
        rows.append({"client": client, "api_key": api_key, "api_version": version,
                     "request": request.hex(), "response": frame.hex()})  # fmt: skip
    (HERE / "captured.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} request/response pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
