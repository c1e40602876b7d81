"""A dubbo-py provider with two interfaces whose answers say they came from dubbo-py.

Run: ``python dubbopy_two_services.py [PORT]``; prints ``READY <port>`` (the convention of
``tests/codecs/dubbo/peers.py``). It reuses ``tests/peers/dubbo/dubbopy_provider.py`` (imported
for its loopback and attachment patches and its ``getAttachment``) and serves:

* ``org.apache.dubbo.demo.DemoService``: ``sayHello(name)`` -> ``"Hello <name> from dubbo-py"``,
  ``echo(x)`` -> ``"dubbo-py echo: <x>"``, ``add(a, b)``, ``getAttachment(key)``;
* ``org.apache.dubbo.demo.GreetingService``: ``greet(name)`` -> ``"greetings, <name>"`` and
  ``getAttachment(key)``.

The proxy tests put it beside the sofa-rpc-node provider (whose ``sayHello`` answers
``"Hello <name>"``), so a consumer's answer shows which provider its request was routed to.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "dubbo"))

import dubbopy_provider as base  # importing it patches dubbo-py to stay on loopback

GREETING = "org.apache.dubbo.demo.GreetingService"


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    svc = base.ds.DubboService(port, "demo-provider-2", dubbo_version="2.0.2")
    svc.add_method(base.IFACE, "sayHello", lambda name: f"Hello {name} from dubbo-py")
    svc.add_method(base.IFACE, "echo", lambda x: f"dubbo-py echo: {x}")
    svc.add_method(base.IFACE, "add", lambda a, b: a + b)
    svc.add_method(base.IFACE, "getAttachment", base._get_attachment)
    svc.add_method(GREETING, "greet", lambda name: f"greetings, {name}")
    svc.add_method(GREETING, "getAttachment", base._get_attachment)
    svc.start()
    print("READY", svc._server.server.server_address[1], flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
