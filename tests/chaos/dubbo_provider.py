"""A dubbo-py provider in a process of its own, so a chaos test can SIGKILL it.

Run: ``python dubbo_provider.py PORT NAME`` (``PORT`` 0 = ephemeral); prints ``READY <port>``.
It reuses ``tests/peers/dubbo/dubbopy_provider.py`` (imported for its loopback patches; dubbo-py
binds with ``SO_REUSEADDR`` and ``SO_REUSEPORT``, so a restarted provider binds the port its
killed predecessor held) and serves ``org.apache.dubbo.demo.DemoService``:

* ``echo(x)`` -> ``"<NAME>:<x>"``, so a consumer sees which provider answered;
* ``echo("hold:...")`` prints ``HOLD <x>`` and waits 60 s first (in flight when killed);
* ``echo("slow:<seconds>:...")`` waits that long, then prints ``SERVED <x>``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "dubbo"))

import dubbopy_provider as base  # importing it patches dubbo-py to stay on loopback

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def echo(name: str, x: str) -> str:
    if x.startswith("hold:"):
        say(f"HOLD {x}")
        time.sleep(60)
    elif x.startswith("slow:"):
        time.sleep(float(x.split(":")[1]))
        say(f"SERVED {x}")
    return f"{name}:{x}"


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    svc = base.ds.DubboService(port, f"chaos-provider-{name}", dubbo_version="2.0.2")
    svc.add_method(base.IFACE, "echo", lambda x: echo(name, x))
    svc.start()
    say(f"READY {svc._server.server.server_address[1]}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
