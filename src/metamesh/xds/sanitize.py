"""What the control plane keeps and logs of what clients send: bounded and escaped.

Node ids, versions and NACK ``error_detail`` s come from whoever connects to the ADS port. Kept
as they are, they let a client grow the server's memory without bound (every NACK of 256 KB
kept forever) and write the server's log (a newline in a node id forges a log line; a 51 MB
error detail becomes 51 MB of log). Here:

* :func:`printable` escapes control characters (newlines, escapes, C1 controls) and truncates,
  for every client-supplied string that reaches a log line;
* :data:`MAX_ERROR_DETAIL` bounds the error detail kept per NACK, :data:`MAX_NACKS` the NACKs
  kept (the latest per node and type, oldest dropped first) and :data:`MAX_NODE_ID` a node id.
"""

from __future__ import annotations

from typing import Final

MAX_ERROR_DETAIL: Final = 4096
MAX_NACKS: Final = 1024
MAX_NODE_ID: Final = 256
#: Nodes whose stream has ended whose status is still reported (oldest forgotten first).
MAX_GONE_NODES: Final = 1024

_ESCAPES: Final = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str, limit: int = 256) -> str:
    """``text`` safe for one log line: control characters escaped, at most ``limit`` characters
    of it kept (the rest counted)."""
    cut = text[:limit].translate(_ESCAPES)
    if len(text) > limit:
        cut += f"...({len(text) - limit} more characters)"
    return cut


def bounded(text: str, limit: int) -> str:
    """``text`` truncated to ``limit`` characters (marked when cut), for what is kept."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"...({len(text) - limit} more characters)"
