"""A dubbo-py provider that registers itself in ZooKeeper with dubbo-py's own ``register``.

Run: ``python dubbopy_zk_provider.py ZK_HOSTS INTERFACE VERSION``; prints ``READY <port>`` once
serving and registered. It reuses ``tests/peers/dubbo/dubbopy_provider.py`` (imported for its
loopback patches) and serves ``echo(x)`` -> ``"<VERSION>@<port>:<x>"``.

dubbo-py 0.2.2's ``DubboService.register`` writes ``/dubbo/<interface>/providers/<quote_plus(
URL)>`` with kazoo's ``ensure_path``: a *persistent* node (Dubbo's is ephemeral), so it outlives
the provider, and its ``group`` parameter lacks the ``&`` before it. See docs/zookeeper.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "dubbo"))

import dubbopy_provider as base  # importing it patches dubbo-py to stay on loopback


def main() -> None:
    hosts, interface, version = sys.argv[1:4]
    svc = base.ds.DubboService(0, f"py-provider-{version}", dubbo_version="2.0.2")
    port = svc._server.server.server_address[1]
    svc._port = port  # dubbo-py registers the port it was given (0)
    svc.add_method(interface, "echo", lambda x: f"{version}@{port}:{x}")
    svc.start()
    svc.register(hosts, version=version)
    print("READY", port, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
