"""Reading a proxy's /stats/prometheus in tests: samples by metric name and label subset.

Istio's metrics carry 21 labels, so tests name only those they care about and add up every
series that has those values (prometheus_client's own parser reads the text)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` whose labels include ``labels``."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append((dict(s.labels), s.value))
    return out


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples :func:`samples` finds (0.0 when none)."""
    return sum(v for _, v in samples(text, name, **labels))
