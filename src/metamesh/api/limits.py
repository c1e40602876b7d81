"""What loading a config may cost: file size, documents per file, resources, alias expansion.

A config directory is input like any other: a file dropped into it must not be able to take a
process's memory or hold its control thread for minutes. Every limit is checked *before* the
costly step it guards, and every refusal is a :class:`~metamesh.api.problems.Problem` naming
the file (and line) and the limit, so the file source keeps the file's last good version and
``metamesh validate`` reports it like any other error.

**Alias expansion.** YAML anchors and aliases make a graph, not a tree: ``b: &b [*a, *a, ...]``
nine levels deep is a 600-byte document that stands for 490 million nodes. Composing it is
cheap (the nodes are shared), and so is constructing it (PyYAML builds each node once), but
every later walk -- pydantic validation, error reports, ``<<`` merge keys -- expands it, and
took seconds and hundreds of megabytes, or a MemoryError. :func:`expansion` counts what a
document stands for, each alias use counted as a full copy of the node it names, memoised per
node so the count is linear in the composed document; a recursive alias (a node that contains
itself) expands without end and is always refused.

The limit is relative: a document may stand for at most ``alias_ratio`` (10) times its own
nodes, and always for ``alias_floor`` (1,000). Aliases used to share a block (labels, a
``trafficPolicy`` for many subsets, ``<<: *defaults``) stay well under 10x, and a document
without aliases never meets the limit, however large (a 30 MB ``kind: List`` export is fine).
An absolute allowance such as 100,000 nodes per document would be multiplied by the number of
documents: 50,000 small documents each just under it is 5 billion nodes. With the relative
limit a crafted directory stays within a small factor of an ordinary one with as many
resources: 50,000 ServiceEntries each expanded to 959 nodes (just under the floor) load in
72 s and 1.2 GB, 50,000 plain ones in 25 s and 0.9 GB.

**Sizes.** ``max_resources`` (50,000) counts the objects of the kinds metamesh reads, valid or
not (each one is validated, so each costs work), and fits 10,000 services of ServiceEntry +
DestinationRule + MetaRouter (30,000) with room for ApplicationProtocols and policies; objects
of other kinds are skipped without being validated and do not count. Past it the whole load is
refused (:class:`LimitExceeded`) and the previous model stays, since serving part of a
directory would drop services at random. Parsing stops at the limit, so a directory of 170,000
resources costs what 50,000 do. ``max_file_bytes`` (32 MiB) fits those 10,000 services in one
generated file (18 MB with short names); a larger file is not read at all. ``max_documents``
(50,000) lets one file hold the whole mesh, and bounds the work spent on a file of empty or
skipped documents (32 MiB of ``---`` is 8 million of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from metamesh.api.problems import Problem

__all__ = [
    "DEFAULT_LIMITS",
    "FileTooLarge",
    "LimitExceeded",
    "LoadLimits",
    "alias_refusal",
    "expansion",
    "read_limited",
]


@dataclass(frozen=True, slots=True)
class LoadLimits:
    """The limits of one load (see the module docstring for the defaults)."""

    max_file_bytes: int = 32 * 1024 * 1024
    max_documents: int = 50_000  #: per file
    max_resources: int = 50_000  #: objects of metamesh's kinds per load (a directory)
    alias_ratio: int = 10  #: a document may stand for this many times its own nodes ...
    alias_floor: int = 1_000  #: ... and always for this many

    def alias_limit(self, own: int) -> int:
        """How many nodes a document of ``own`` composed nodes may expand to."""
        return max(self.alias_floor, self.alias_ratio * own)


DEFAULT_LIMITS = LoadLimits()


class LimitExceeded(ValueError):
    """A whole load refused (too many resources); ``problem`` says where and which limit."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.format())
        self.problem = problem


class FileTooLarge(ValueError):
    """A file over ``max_file_bytes``; not read."""


#: Expanded counts saturate here, so a deep chain of aliases stays a small integer.
_SATURATED = 1 << 62
#: Marks a node whose children are being counted: meeting it again means it contains itself.
_OPEN = -1


_SCALAR, _MAPPING = yaml.ScalarNode, yaml.MappingNode


def _children(node: yaml.Node) -> list[yaml.Node]:
    if type(node) is _MAPPING:
        return [child for pair in node.value for child in pair]
    children: list[yaml.Node] = node.value  # a SequenceNode
    return children


def expansion(root: yaml.Node) -> tuple[int, int | None]:
    """``(own, expanded)`` nodes of a composed document; ``expanded`` None if recursive.

    ``own`` counts each node object once; ``expanded`` counts what the document stands for,
    each alias use a full copy (saturating at 2**62). Depth first with an explicit stack, so a
    deep document cannot exhaust the Python stack; each node is opened once and closed once
    (about 0.75 us a node, 5% of what loading it costs).
    """
    sizes: dict[int, int] = {}
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        state = sizes.get(key)
        if state is None:  # first visit: open it and push the children not yet counted
            if type(node) is _SCALAR:
                sizes[key] = 1
                stack.pop()
                continue
            sizes[key] = _OPEN
            for child in _children(node):
                seen = sizes.get(id(child))
                if seen is None:
                    stack.append(child)
                elif seen == _OPEN:  # an ancestor: the node contains itself
                    return len(sizes), None
            continue
        stack.pop()
        if state == _OPEN:  # children all counted: close it
            total = 1
            for child in _children(node):
                total += sizes[id(child)]
            sizes[key] = total if total < _SATURATED else _SATURATED
    return len(sizes), sizes[id(root)]


def alias_refusal(root: yaml.Node, limits: LoadLimits) -> str | None:
    """Why the document ``root`` is refused for its aliases, or None when it is within limits."""
    own, expanded = expansion(root)
    if expanded is None:
        return "document refused: a YAML alias refers to a node that contains it (recursive)"
    limit = limits.alias_limit(own)
    if expanded <= limit:
        return None
    amount = f"{expanded:,}" if expanded < _SATURATED else f"more than {_SATURATED:,}"
    return (
        f"document refused: YAML aliases expand it to {amount} nodes; the limit is {limit:,} "
        f"(alias_ratio {limits.alias_ratio} x its own {own:,} nodes, or alias_floor "
        f"{limits.alias_floor:,} if larger)"
    )


def read_limited(path: Path, max_bytes: int) -> str:
    """The UTF-8 text of ``path``; :class:`FileTooLarge` past ``max_bytes`` (never read whole).

    Raises OSError and UnicodeDecodeError as ``Path.read_text`` does.
    """
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise FileTooLarge(_too_large(size, max_bytes))
        data = file.read(max_bytes + 1)  # it may have grown since
    if len(data) > max_bytes:
        raise FileTooLarge(_too_large(None, max_bytes))
    return data.decode("utf-8")


def _too_large(size: int | None, max_bytes: int) -> str:
    what = f"{size:,} bytes" if size is not None else "more bytes"
    return f"{what} is over the limit of {max_bytes:,} bytes per file (max_file_bytes): not read"
