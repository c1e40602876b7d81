"""What ``/config_dump`` hides: mutation values, secret-looking match values and fields.

A proxy's config carries values an operator should not leak by pasting a config dump into a
ticket: request/response mutations (often a bearer token or a tenant key injected on the way
up), match values on headers such as ``authorization`` or ``x-api-key``, and any field whose
name says it holds a secret. :func:`redact` returns a copy of the dump with those values
replaced by ``"[redacted]"``; the keys stay, so the shape of the config is still visible. The
admin serves the unredacted dump only for ``/config_dump?include_secrets`` asked from a loopback
address.
"""

from __future__ import annotations

import re
from typing import Final

REDACTED: Final = "[redacted]"
#: Names of headers, attributes and fields whose values are treated as secrets.
SECRET_NAME: Final = re.compile(
    r"authorization|token|secret|passw(or)?d|cookie|credential|api[-_]?key|private[-_]?key|"
    r"session|signature",
    re.IGNORECASE,
)
_MUTATIONS: Final = frozenset({"request_mutation", "response_mutation"})


def redact(value: object) -> object:
    """A copy of a JSON-ready config with secret values replaced (see the module docstring)."""
    if isinstance(value, list):
        return [redact(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, object] = {}
    matcher_name = value.get("name")
    secret_matcher = isinstance(matcher_name, str) and bool(SECRET_NAME.search(matcher_name))
    for key, item in value.items():
        if key in _MUTATIONS and isinstance(item, list):
            out[key] = [_redact_pair(pair) for pair in item]
        elif (key == "value" and secret_matcher and isinstance(item, str)) or (
            isinstance(item, str) and SECRET_NAME.search(key)
        ):
            out[key] = REDACTED
        else:
            out[key] = redact(item)
    return out


def _redact_pair(pair: object) -> object:
    if isinstance(pair, list | tuple) and len(pair) == 2:
        return [pair[0], REDACTED]
    return REDACTED
