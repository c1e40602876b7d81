"""``metamesh demo``: the live embedded-mesh demo, and the codec walk-through (``--codecs``).

The live demo (:mod:`metamesh.demo.walkthrough`) needs the real Thrift and Dubbo libraries
(``thrift``, ``thriftpy2``, ``dubbo-py``: the ``demo`` extra); they are imported only when it
runs, so that ``metamesh`` works without them and a missing one is reported plainly.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from metamesh import logs
from metamesh.demo.codec_tour import run_demo

#: The log line format of every metamesh command (as ``up``, ``proxy`` and ``control-plane``).
LOG_FORMAT = logs.FORMAT


def configure_demo_logging() -> None:
    """Log as the other commands do, from ERROR up: dubbo-py logs a WARNING on the root logger
    each time a connection ends ("got EOF error, stop recv loop!"), which is no news here."""
    logging.basicConfig(level=logging.ERROR, format=LOG_FORMAT, stream=sys.stderr)


def missing_libraries() -> str | None:
    """Why the live demo cannot run here, or None."""
    try:
        import dubbo.server  # noqa: F401
        import thrift.Thrift  # noqa: F401
        import thriftpy2  # noqa: F401
    except ImportError as exc:
        return (
            f"the live demo needs the Thrift and Dubbo libraries ({exc}): "
            "pip install 'metamesh[demo]' (thrift, thriftpy2, dubbo-py), "
            "or run scripts/demo.sh from a checkout"
        )
    return None


def run_live(
    *,
    step_seconds: float = 5.0,
    keep_running: bool = False,
    admin_port: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the live demo (see :mod:`metamesh.demo.walkthrough`); its exit code."""
    problem = missing_libraries()
    if problem:
        print(f"metamesh demo: {problem}", file=sys.stderr)
        return 1
    from metamesh.demo.walkthrough import DemoOptions, run_live_demo

    options = DemoOptions(step_seconds, keep_running, admin_port)
    return run_live_demo(options, out)


__all__ = ["LOG_FORMAT", "configure_demo_logging", "missing_libraries", "run_demo", "run_live"]
