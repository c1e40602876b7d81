"""Source edit behind ``spin_build.sh``: a busy wait of N ns on every client read.

``spin_build.sh`` copies the tree, runs this on the copy's ``runtime/protocols.py`` and builds
the copy natively, so an A/B run can show how the proxy's CPU per request answers to user-space
work it does per request (``benchmarks/README.md``, "What holds Dubbo c16k1 back"). The wait
reads the monotonic clock until N ns have passed, so it costs N ns of CPU whether compiled or
not. The edit refuses (``ValueError``) if ``DownstreamProtocol.data_received`` no longer looks
as expected, rather than building a variant that measures something else.

Run: ``python benchmarks/spin_patch.py PATH NS`` (edits PATH in place).
"""

from __future__ import annotations

import sys

_CALL = "            self.core.downstream_data(conn, data, self.turn.now())\n"
_GUARD = "        if conn is not None:\n"
_IMPORT = "\nimport asyncio\n"


def add_spin(source: str, ns: int) -> str:
    """``source`` (runtime/protocols.py) with the wait before each client read reaches the core."""
    if ns < 0:
        raise ValueError(f"ns must be >= 0, not {ns}")
    if source.count(_CALL) != 1 or _IMPORT not in source:
        raise ValueError("DownstreamProtocol.data_received is not where spin_patch expects it")
    head, tail = source.split(_CALL)
    before, guard, after = head.rpartition(_GUARD)
    if not guard or after.strip():
        raise ValueError("DownstreamProtocol.data_received is not where spin_patch expects it")
    spin = (
        "        spin_from = _spin_clock()\n"
        f"        while _spin_clock() - spin_from < {ns}:\n"
        "            pass\n"
    )
    patched = before + spin + guard + _CALL + tail
    clock = "\nimport asyncio\nimport time\n\n_spin_clock = time.perf_counter_ns\n"
    return patched.replace(_IMPORT, clock, 1)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: spin_patch.py PATH NS", file=sys.stderr)
        return 2
    path, ns = argv[0], int(argv[1])
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        patched = add_spin(source, ns)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(patched)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
