"""Building blocks shared by every resource kind of the static YAML config: the strict base
model (unknown fields are errors), socket addresses, durations ("1s", "250ms" or seconds, checked
where they stand so errors name the field), metadata matchers and fractional percents.

The models are private to the loader (:mod:`metamesh.proxy.config_yaml`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from metamesh.api.regex import regex_error
from metamesh.proxy import config as cfg


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SocketAddress(_Model):
    address: str
    port_value: int = Field(ge=0, le=65535)


class _Address(_Model):
    socket_address: _SocketAddress


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def _parse_duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. '1s', '250ms' or 0.5)")
        seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


#: A duration field ("1s", "250ms" or seconds), checked where it stands so errors name it.
_Duration = Annotated[float, BeforeValidator(_parse_duration)]


class _StringMatch(_Model):
    exact: str | None = None
    prefix: str | None = None
    safe_regex: _Regex | None = None


class _Regex(_Model):
    regex: str
    google_re2: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _compiles(self) -> _Regex:
        error = regex_error(self.regex)  # RE2, as the router matches
        if error is not None:
            raise ValueError(error)
        return self


class _HeaderMatcher(_Model):
    name: str = Field(min_length=1)
    exact_match: str | None = None
    prefix_match: str | None = None
    safe_regex_match: _Regex | None = None
    present_match: bool | None = None
    string_match: _StringMatch | None = None
    invert_match: bool = False

    def to_matcher(self) -> cfg.MetadataMatcher:
        kinds: list[tuple[cfg.MatchKind, str]] = []
        if self.exact_match is not None:
            kinds.append((cfg.MatchKind.EXACT, self.exact_match))
        if self.prefix_match is not None:
            kinds.append((cfg.MatchKind.PREFIX, self.prefix_match))
        if self.safe_regex_match is not None:
            kinds.append((cfg.MatchKind.SAFE_REGEX, self.safe_regex_match.regex))
        if self.present_match is not None:
            if not self.present_match:
                raise ValueError("present_match: false is meaningless; use invert_match")
            kinds.append((cfg.MatchKind.PRESENT, ""))
        sm = self.string_match
        if sm is not None:
            if sm.exact is not None:
                kinds.append((cfg.MatchKind.EXACT, sm.exact))
            if sm.prefix is not None:
                kinds.append((cfg.MatchKind.PREFIX, sm.prefix))
            if sm.safe_regex is not None:
                kinds.append((cfg.MatchKind.SAFE_REGEX, sm.safe_regex.regex))
        if len(kinds) != 1:
            raise ValueError(
                "needs exactly one of exact_match, prefix_match, safe_regex_match, "
                "present_match, string_match.{exact,prefix,safe_regex}"
            )
        kind, value = kinds[0]
        return cfg.MetadataMatcher(self.name, kind, value, self.invert_match)

    @model_validator(mode="after")
    def _one_kind(self) -> _HeaderMatcher:
        self.to_matcher()
        return self


class _RouteMatch(_Model):
    metadata: list[_HeaderMatcher] = []


class _FractionalPercent(_Model):
    numerator: int = Field(ge=0)
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"

    def percent(self) -> float:
        scale = {"HUNDRED": 1.0, "TEN_THOUSAND": 100.0, "MILLION": 10000.0}[self.denominator]
        return min(100.0, self.numerator / scale)


_StringMatch.model_rebuild()
