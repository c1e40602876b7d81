"""``metamesh proxy-config``: a running proxy's config, read from its admin, as tables.

The proxy's admin ``/config_dump`` is its live :class:`~metamesh.proxy.config.Snapshot` as
JSON (listeners with their addresses, so the allocated 127.240.x.y VIPs show, clusters with
endpoints, route configurations). This module fetches it over HTTP (stdlib ``urllib``) and
renders one of four views the way ``istioctl proxy-config`` does: ``listeners``, ``routes``,
``clusters``, ``endpoints``. Rendering is a pure function of the dump, so it is tested without
a proxy.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from typing import Any

VIEWS = ("listeners", "routes", "clusters", "endpoints")


def fetch_config_dump(admin: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``http://ADMIN/config_dump`` (``admin`` is ``host:port``)."""
    with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=timeout) as reply:
        dump: dict[str, Any] = json.load(reply)
    return dump


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def _match_text(matchers: list[dict[str, Any]]) -> str:
    if not matchers:
        return "*"
    parts = []
    for m in matchers:
        op = {"exact": "=", "prefix": "^=", "safe_regex": "~", "present": " present"}.get(
            m["kind"], m["kind"]
        )
        text = f"{m['name']}{op}{m['value']}" if m["kind"] != "present" else f"{m['name']}{op}"
        parts.append(("!" if m.get("invert") else "") + text)
    return " && ".join(parts)


def _destination(action: dict[str, Any]) -> str:
    weighted = action.get("weighted_clusters") or []
    if weighted:
        return ", ".join(f"{c['name']} ({c['weight']})" for c in weighted)
    return str(action.get("cluster", ""))


def render(view: str, dump: dict[str, Any]) -> str:
    """The table for ``view`` (one of :data:`VIEWS`)."""
    if view == "listeners":
        rows = [
            [x["name"], f"{x['address']}:{x['port']}", x["codec"], x["route_config_name"]]
            for x in dump.get("listeners", [])
        ]
        return table(["NAME", "ADDRESS:PORT", "CODEC", "ROUTES"], rows)
    if view == "routes":
        rows = [
            [
                rc["name"],
                r.get("name", ""),
                _match_text(r.get("match", [])),
                _destination(r["route"]),
            ]
            for rc in dump.get("route_configs", [])
            for r in rc.get("routes", [])
        ]
        return table(["ROUTE CONFIG", "ROUTE", "MATCH", "DESTINATION"], rows)
    if view == "clusters":
        rows = [
            [c["name"], str(c.get("lb_policy", "")), str(len(c.get("endpoints", [])))]
            for c in dump.get("clusters", [])
        ]
        return table(["NAME", "LB", "ENDPOINTS"], rows)
    if view == "endpoints":
        rows = [
            [
                f"{e['address']}:{e['port']}",
                str(e.get("weight", 1)),
                ",".join(f"{k}={v}" for k, v in e.get("labels", [])),
                c["name"],
            ]
            for c in dump.get("clusters", [])
            for e in c.get("endpoints", [])
        ]
        return table(["ENDPOINT", "WEIGHT", "LABELS", "CLUSTER"], rows)
    raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
