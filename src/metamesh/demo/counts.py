"""What the demo counts, and the table it prints.

A :class:`Reading` is one look at three independent counters for every (protocol, version):
the proxy's ``istio_requests_total`` (from ``/stats/prometheus``), the calls each server
handled (per method), and the replies each client got (tallied by the version that answered),
plus the failed calls seen by the clients and by the proxy. Steps show the difference between
two readings (:meth:`Reading.minus`), so each table holds only that step's requests.
:func:`table` renders it; every row is ``protocol version proxy server client sayHello echo``
so that both people and the demo's tests can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from metamesh.demo.services import METHODS

PROTOCOLS = ("thrift", "dubbo")
VERSIONS = ("v1", "v2")
Key = tuple[str, str]  # (protocol, version)


@dataclass(frozen=True, slots=True)
class Reading:
    proxy: dict[Key, int]
    served: dict[Key, dict[str, int]]
    answered: dict[Key, int]
    client_errors: int
    proxy_errors: int

    def minus(self, base: Reading) -> Reading:
        return Reading(
            proxy={k: n - base.proxy.get(k, 0) for k, n in self.proxy.items()},
            served={
                k: {m: n - base.served.get(k, {}).get(m, 0) for m, n in by_method.items()}
                for k, by_method in self.served.items()
            },
            answered={k: n - base.answered.get(k, 0) for k, n in self.answered.items()},
            client_errors=self.client_errors - base.client_errors,
            proxy_errors=self.proxy_errors - base.proxy_errors,
        )

    def server_total(self, key: Key) -> int:
        return sum(self.served.get(key, {}).values())

    def method(self, key: Key, method: str) -> int:
        return self.served.get(key, {}).get(method, 0)

    def errors(self) -> int:
        return self.client_errors + self.proxy_errors

    def disagreements(self) -> list[str]:
        """Where the proxy, the servers and the clients do not count the same."""
        out = []
        for key in self.proxy:
            counts = (self.proxy[key], self.server_total(key), self.answered.get(key, 0))
            if len(set(counts)) > 1:
                out.append(
                    f"{' '.join(key)}: proxy {counts[0]}, server {counts[1]}, client {counts[2]}"
                )
        return out


HEADER = "  service  version    proxy   server   client" + "".join(f"{m:>10}" for m in METHODS)


def table(reading: Reading) -> list[str]:
    lines = [HEADER]
    for protocol in PROTOCOLS:
        for version in VERSIONS:
            key = (protocol, version)
            lines.append(
                f"  {protocol:<7}  {version:<7}  {reading.proxy.get(key, 0):>7}  "
                f"{reading.server_total(key):>7}  {reading.answered.get(key, 0):>7}"
                + "".join(f"{reading.method(key, m):>10}" for m in METHODS)
            )
    lines.append(
        f"  errors: {reading.client_errors} seen by the clients, "
        f"{reading.proxy_errors} reported by the proxy"
    )
    return lines


def summary_line(reading: Reading, elapsed: float) -> str:
    """One line for a live update when the output is not a terminal."""
    parts = []
    for protocol in PROTOCOLS:
        counts = " ".join(f"{v} {reading.proxy.get((protocol, v), 0)}" for v in VERSIONS)
        parts.append(f"{protocol} {counts}")
    return f"  t={elapsed:4.1f}s  " + " | ".join(parts) + f" | errors {reading.errors()}"
