"""``metamesh proxy-config``: a running proxy's config, read from its admin, as tables.

The proxy's admin ``/config_dump`` is its live :class:`~metamesh.proxy.config.Snapshot` as
JSON (listeners with their addresses, so the allocated 127.240.x.y VIPs show, clusters with
endpoints, route configurations). This module fetches it over HTTP (stdlib ``urllib``) and
renders one of four views the way ``istioctl proxy-config`` does: ``listeners``, ``routes``,
``clusters``, ``endpoints``, as a table or as the JSON of that part of the dump only.
An Envoy admin works too: its dump is read into the same shape
(:mod:`metamesh.runtime.envoy_admin`), so one command inspects either data plane. The
``stats`` view reads a metamesh proxy's ``/stats/prometheus`` and Envoy's ``/stats``.
Rendering and selecting are pure functions of the dump, so they are tested without a proxy;
the one thing that needs a proxy, reaching it, fails with a sentence that says where it looked.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from metamesh.runtime.envoy_admin import from_envoy, is_envoy_dump

VIEWS = ("listeners", "routes", "clusters", "endpoints")
#: Not a part of the config dump: the admin's stats (:func:`fetch_stats`).
STATS_VIEW = "stats"


class AdminUnreachableError(Exception):
    """The admin address did not answer with a config dump; the message says why."""


def fetch_config_dump(admin: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``http://ADMIN/config_dump`` (``admin`` is ``host:port``); from an Envoy admin, its
    dump (with EDS) and ``/clusters`` in the metamesh shape
    (:func:`metamesh.runtime.envoy_admin.from_envoy`).

    Raises :class:`AdminUnreachableError` with a message for a person: which address, and
    (when nothing listens there) that no proxy runs there and how to name another one.
    """
    dump = _get_json(admin, "/config_dump", timeout)
    if not is_envoy_dump(dump):
        return dump
    with_eds = _get_json(admin, "/config_dump?include_eds", timeout)
    return from_envoy(with_eds, _get_json(admin, "/clusters?format=json", timeout))


def _get_json(admin: str, path: str, timeout: float) -> dict[str, Any]:
    url = f"http://{admin}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            dump: dict[str, Any] = json.load(reply)
    except urllib.error.HTTPError as e:
        raise AdminUnreachableError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, ConnectionRefusedError):
            raise AdminUnreachableError(
                f"no proxy admin at {admin} (connection refused): is a proxy running? "
                "use --admin HOST:PORT"
            ) from None
        raise AdminUnreachableError(f"cannot read {url}: {reason}") from None
    except ValueError as e:  # not JSON: something else listens there
        raise AdminUnreachableError(f"{url} is not a proxy admin's config dump: {e}") from None
    return dump


def select(view: str, dump: dict[str, Any]) -> list[dict[str, Any]]:
    """The part of ``dump`` that ``view`` shows (one of :data:`VIEWS`), as JSON-ready data:
    the listeners, the route configurations, the clusters, or each cluster's endpoints."""
    if view == "listeners":
        return list(dump.get("listeners", []))
    if view == "routes":
        return list(dump.get("route_configs", []))
    if view == "clusters":
        return list(dump.get("clusters", []))
    if view == "endpoints":
        return [
            {"cluster": c["name"], "endpoints": c.get("endpoints", [])}
            for c in dump.get("clusters", [])
        ]
    raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")


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
        text = ", ".join(f"{c['name']} ({c['weight']})" for c in weighted)
    else:
        text = str(action.get("cluster", ""))
    mirrors = [m["cluster"] for m in action.get("request_mirror_policies") or []]
    return text + "".join(f" +mirror {m}" for m in mirrors)


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


def fetch_stats(admin: str, match: str = "", timeout: float = 5.0) -> list[dict[str, Any]]:
    """The stats whose name contains ``match``, as ``{name, labels, value}``.

    A metamesh proxy: the samples of ``/stats/prometheus`` (histogram buckets left out, their
    ``_count`` and ``_sum`` stay). Envoy (its ``/server_info`` has ``command_line_options``):
    its counters and gauges by their own names from ``/stats?format=json``, since its
    Prometheus export cuts names at dots by its tag rules (``outbound|9090||a.b.svc`` would
    come out as a cluster ``outbound|9090||a`` in a metric named after the rest)."""
    if "command_line_options" in _get_json(admin, "/server_info", timeout):
        stats = _get_json(admin, "/stats?format=json", timeout).get("stats", [])
        return [
            {"name": str(s["name"]), "labels": {}, "value": s["value"]}
            for s in stats
            if "value" in s and match in str(s["name"])
        ]
    url = f"http://{admin}/stats/prometheus"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise AdminUnreachableError(f"cannot read {url}: {e}") from None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise AdminUnreachableError(f"{url} is not Prometheus text: {e}") from None
    return [
        {"name": s.name, "labels": dict(s.labels), "value": s.value}
        for family in families
        for s in family.samples
        if match in s.name and not s.name.endswith("_bucket")
    ]


def render_stats(samples: list[dict[str, Any]]) -> str:
    rows = [
        [
            s["name"],
            ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items())),
            f"{s['value']:g}",
        ]
        for s in samples
    ]
    return table(["NAME", "LABELS", "VALUE"], rows)
