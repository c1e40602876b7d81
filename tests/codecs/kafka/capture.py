"""Record what real Kafka clients and a real broker say to each other: how ``captured.jsonl``
(Tansu) and ``captured_apache.jsonl`` (Apache Kafka 0.9.0.1) were made
(``python -m tests.codecs.kafka.capture [tansu|apache-0.9]``, a few seconds).

The broker (tests/support/kafka_broker.py) advertises the address of a socket relay that
this script runs, so every connection the clients open (bootstrap, then the advertised broker)
passes the relay, which writes each whole frame down. Against Tansu, kafka-python and aiokafka
produce and consume in-process and kafkajs runs ``tests/peers/node/kafka_client.js``; against
Apache Kafka 0.9 only kafka-python can (``api_version=(0, 9)``), alone and in a consumer
group. The first request of each (client, API, version) is kept with its response (the last
one against Apache Kafka), when that is under 4 KiB.
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
from typing import Any

from tests.support.kafka_broker import Broker, running_broker
from tests.support.ports import free_port

HERE = Path(__file__).parent
FILES = {"tansu": "captured.jsonl", "apache-0.9": "captured_apache.jsonl"}
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


def clients(address: str, broker: Broker) -> None:
    """Produce and consume with each client through ``address`` (the relay records)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    options = broker.client_options
    producer = KafkaProducer(bootstrap_servers=address, client_id="kp-producer", **options)
    producer.send("orders", b"hello", partition=0).get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=address, consumer_timeout_ms=2000,
                             auto_offset_reset="earliest", client_id="kp-consumer",
                             **options)  # fmt: skip
    consumer.assign([TopicPartition("orders", 0)])
    list(consumer)
    consumer.close()
    if broker.kind != "tansu":  # aiokafka and kafkajs cannot talk to Apache Kafka 0.9
        group = KafkaConsumer("orders", bootstrap_servers=address, consumer_timeout_ms=5000,
                              auto_offset_reset="earliest", client_id="kp-group-member",
                              group_id="kp-group", **options)  # fmt: skip
        next(iter(group))
        group.commit()
        group.close()
        return

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
    kind = sys.argv[1] if len(sys.argv) > 1 else "tansu"
    listen = free_port()
    frames: Frames = []
    stop = threading.Event()
    with running_broker(advertised=f"127.0.0.1:{listen}", kind=kind) as broker:
        thread = threading.Thread(target=relay, args=(listen, broker.port, frames, stop))
        thread.start()
        try:
            clients(f"127.0.0.1:{listen}", broker)
        finally:
            stop.set()
            thread.join()
    pending: dict[int, list[bytes]] = defaultdict(list)
    kept: dict[tuple[str, int, int], dict[str, Any]] = {}
    # Apache Kafka answers the first Metadata and FindCoordinator while it still creates the
    # topic and the offsets topic (LEADER_NOT_AVAILABLE without brokers, COORDINATOR_NOT_
    # AVAILABLE): from it the last pair of each kind is kept, from Tansu the first.
    last = kind != "tansu"
    for conn, way, frame in frames:
        if way == "req":
            pending[conn].append(frame)
            continue
        request = pending[conn].pop(0)
        api_key, version = struct.unpack_from(">hh", request, 4)
        client = "kafka-python" if b"kp-" in request else "kafkajs"
        client = "aiokafka" if b"ak-" in request else client
        if client == "kafkajs" and b"kafkajs" not in request:
            continue  # Apache Kafka's controller, reaching its own broker at the relay
        if ((client, api_key, version) in kept and not last) or len(frame) > 4096:
            continue
        kept[(client, api_key, version)] = {"client": client, "api_key": api_key,
            "api_version": version, "request": request.hex(), "response": frame.hex()}  # fmt: skip
    rows = list(kept.values())
    (HERE / FILES[kind]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} request/response pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
