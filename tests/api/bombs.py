"""YAML alias bombs ("billion laughs") for the load-limit tests of api, control and proxy.

``nested_anchors(9, 9)`` is ``a: &a [x, x, ...]`` (nine items), ``b: &b [*a, *a, ...]`` (nine
aliases of ``a``), ... nine levels: about 200 bytes that stand for 9**9 = 387,420,489 nodes.
:func:`bomb_service_entry` puts it under ``status`` of an otherwise valid ServiceEntry (about
600 bytes; status is accepted as anything, so without the limit every check walks all of it).
"""

from __future__ import annotations

import itertools

LEVELS = "abcdefghijklmnop"


def nested_anchors(levels: int, width: int, indent: str = "  ") -> list[str]:
    """The lines of a mapping whose last key stands for ``width ** levels`` scalars."""
    lines = [f"{indent}a: &a [" + ",".join(["x"] * width) + "]"]
    for prev, cur in itertools.pairwise(LEVELS[:levels]):
        lines.append(f"{indent}{cur}: &{cur} [" + ",".join([f"*{prev}"] * width) + "]")
    return lines


def bomb_service_entry(levels: int = 9, width: int = 9, name: str = "bomb") -> str:
    """A valid ServiceEntry ``ns/<name>`` whose ``status`` holds :func:`nested_anchors`."""
    lines = [
        "apiVersion: networking.istio.io/v1beta1",
        "kind: ServiceEntry",
        f"metadata: {{name: {name}, namespace: ns}}",
        f"spec: {{hosts: [{name}.example], addresses: [127.0.10.99], resolution: STATIC,",
        "  ports: [{number: 9, name: tcp-metaprotocol-thrift-x}],",
        "  endpoints: [{address: 127.0.0.1}]}",
        "status:",
        *nested_anchors(levels, width),
    ]
    return "\n".join(lines) + "\n"


#: 599 and 723 bytes (9**9 and 12**10 scalars), like the 591- and 755-byte bombs of the review.
SMALL_BOMB = bomb_service_entry(9, 9)
LARGE_BOMB = bomb_service_entry(10, 12)
