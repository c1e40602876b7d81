"""A dubbo-py provider whose answers name its version, for ``tests/e2e/test_up_dubbo.py``.

Run: ``python dubbopy_versioned.py PORT VERSION``; prints ``READY <port>`` (the convention of
``tests/codecs/dubbo/peers.py``). It reuses ``tests/peers/dubbo/dubbopy_provider.py`` (imported
for its loopback patches and ``getAttachment``) and serves ``org.apache.dubbo.demo.DemoService``
with ``sayHello(name)`` -> ``"<VERSION>:Hello <name>"``, ``echo(x)`` -> ``"<VERSION>:<x>"`` and
``getAttachment(key)`` -> ``"<VERSION>:<attachment key as received>"``, so a consumer sees
which provider version answered.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "dubbo"))

import dubbopy_provider as base  # importing it patches dubbo-py to stay on loopback


def main() -> None:
    port, version = int(sys.argv[1]), sys.argv[2]
    svc = base.ds.DubboService(port, f"demo-provider-{version}", dubbo_version="2.0.2")
    svc.add_method(base.IFACE, "sayHello", lambda name: f"{version}:Hello {name}")
    svc.add_method(base.IFACE, "echo", lambda x: f"{version}:{x}")
    svc.add_method(base.IFACE, "getAttachment", lambda k: f"{version}:{base._get_attachment(k)}")
    svc.start()
    print("READY", svc._server.server.server_address[1], flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
