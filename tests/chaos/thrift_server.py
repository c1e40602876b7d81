"""An Apache Thrift ``Calc`` server in a process of its own, so a chaos test can SIGKILL it.

Run: ``python thrift_server.py PORT NAME GEN_DIR`` (``PORT`` 0 = ephemeral; ``GEN_DIR``: where
``thrift --gen py`` wrote ``metamesh_calc``). Prints ``READY <port>`` once listening
(the convention of ``tests/codecs/dubbo/peers.py``), framed transport, binary protocol, one
thread per connection, as Apache's ``TThreadedServer``. The listening socket takes
``SO_REUSEADDR`` (Apache's ``TServerSocket`` sets it), so a restarted server binds the port
its killed predecessor held.

``echo(s)`` answers ``"<NAME>:<s>"``, so a client sees which server answered. Two prefixes
slow it down: ``hold:...`` prints ``HOLD <s>`` and waits 60 s (a call the test knows is in
flight when it kills the server), ``slow:<seconds>:...`` waits that long and prints
``SERVED <s>`` once answered (the drain test's count of what the server sent back).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


class Handler:
    def __init__(self, name: str) -> None:
        self.name = name

    def ping(self) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, s: str) -> str:
        if s.startswith("hold:"):
            say(f"HOLD {s}")
            time.sleep(60)
        elif s.startswith("slow:"):
            time.sleep(float(s.split(":")[1]))
        answer = f"{self.name}:{s}"
        if s.startswith("slow:"):
            say(f"SERVED {s}")  # as the answer is returned, before Apache writes it
        return answer


def serve(processor: Any, client: Any) -> None:
    iprot = TBinaryProtocolAccelerated(TFramedTransport(client))
    oprot = TBinaryProtocolAccelerated(TFramedTransport(client))
    with contextlib.suppress(TTransportException, OSError, EOFError):
        while True:
            processor.process(iprot, oprot)
    client.close()


def main() -> None:
    port, name, gen_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, str(Path(gen_dir)))
    from metamesh_calc import Calc

    processor = Calc.Processor(Handler(name))
    listener = TSocket.TServerSocket(host="127.0.0.1", port=port)
    listener.listen()
    say(f"READY {listener.handle.getsockname()[1]}")
    while True:
        client = listener.accept()
        threading.Thread(target=serve, args=(processor, client), daemon=True).start()


if __name__ == "__main__":
    main()
