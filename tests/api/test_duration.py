"""Durations: protobuf JSON ("1.5s") and Go-style ("100ms", "1h30m") strings to float seconds."""

from __future__ import annotations

import pytest

from metamesh.api.duration import format_duration, parse_duration
from metamesh.api.metaprotocol import TokenBucket


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("1.5s", 1.5),
        (".25s", 0.25),
        ("100ms", 0.1),
        ("250us", 0.00025),
        ("10ns", 1e-8),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2m0.5s", 120.5),
        ("0", 0.0),
        ("0s", 0.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1 s", "-1s", "1s2", "ms", "1.2.3s"])
def test_reject(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(1.0, "1s"), (0.1, "0.1s"), (1.5, "1.5s")])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_field_accepts_strings_and_rejects_bare_numbers() -> None:
    bucket = TokenBucket.model_validate({"maxTokens": 1, "fillInterval": "100ms"})
    assert bucket.fill_interval == pytest.approx(0.1)
    assert bucket.model_dump(mode="json", by_alias=True)["fillInterval"] == "0.1s"
    with pytest.raises(ValueError, match="not the number 10"):
        TokenBucket.model_validate({"maxTokens": 1, "fillInterval": 10})
