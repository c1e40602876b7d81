"""Small field checks shared by the validation rules: DNS names, exportTo, regular expressions.

Each returns a list of messages (empty when fine), so a caller can attach them to a field path.
They follow the checks of Aeraki's validating webhook (which reuses Istio's) so that a manifest
metamesh accepts is one Aeraki would accept.

Regular expressions: Aeraki and Envoy use RE2, metamesh's proxy uses Python's ``re``. Patterns
are compiled with ``re`` (a failure is an error) and scanned for constructs only one of the two
engines supports: lookaround and backreferences are Python-only (RE2 rejects them, so the
rule would not work with Aeraki or Envoy), ``\\pL``-style classes and ``\\z`` are RE2-only
(Python rejects them). Those Python-only constructs are reported as warnings.
"""

from __future__ import annotations

import re
import warnings

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PYTHON_ONLY = (
    (re.compile(r"\(\?<?[=!]"), "lookaround"),
    (re.compile(r"\\[1-9]|\(\?P="), "backreferences"),
)


def is_dns1123_label(name: str) -> bool:
    return len(name) <= 63 and _DNS1123_LABEL.fullmatch(name) is not None


def fqdn_errors(host: str) -> list[str]:
    """Istio's ValidateFQDN: DNS-1123 labels, at most 255 chars, TLD not all-numeric."""
    if not host:
        return ["empty domain name not allowed"]
    if len(host) > 255:
        return [f"domain name {host!r} too long (max 255)"]
    labels = host.split(".")
    if labels[-1].isdigit():
        return [f"domain name {host!r} invalid (top level domain {labels[-1]!r} is all-numeric)"]
    for i, label in enumerate(labels):
        if i == len(labels) - 1 and label == "" and i > 0:
            break
        if not is_dns1123_label(label):
            return [
                f"domain name {host!r} invalid (label {label!r} is not a lower-case DNS-1123 label)"
            ]
    return []


def subset_name_errors(name: str) -> list[str]:
    if not name:
        return ["subset name cannot be empty"]
    if not is_dns1123_label(name):
        return [f"subset name {name!r} is not a DNS-1123 label (lower-case letters, digits, '-')"]
    return []


def export_to_errors(namespace: str, export_to: list[str]) -> list[str]:
    """Istio's exportTo rules: ``.``, ``*``, ``~`` or a namespace; no duplicates; no mixing."""
    errors: list[str] = []
    seen: set[str] = set()
    for entry in export_to:
        key = namespace if entry == "." else entry
        if key in seen:
            errors.append(
                f"duplicate entries in exportTo: . and current namespace {namespace}"
                if key != entry
                else f"duplicate entries in exportTo for entry {entry}"
            )
        elif key not in ("*", "~") and not is_dns1123_label(key):
            errors.append(f"exportTo entry {entry!r} is not '.', '*', '~' or a namespace name")
        else:
            seen.add(key)
    if "*" in seen and len(export_to) > 1:
        errors.append("cannot have both public (*) and non-public exportTo values for a resource")
    if "~" in seen and len(export_to) > 1:
        errors.append("cannot export to no one (~) and someone")
    return errors


def regex_problems(pattern: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a match regex; ``*`` (Aeraki's "present") is fine."""
    if pattern == "":
        return ["regex string match should not be empty"], []
    if pattern == "*":
        return [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            re.compile(pattern)
        except re.error as exc:
            hint = " (Python re syntax; RE2-only classes such as \\pL are not supported)"
            return [f"invalid regex {pattern!r}: {exc}{hint}"], []
    notes = [
        f"regex {pattern!r} uses {what}, which RE2 (Aeraki, Envoy) does not support"
        for rx, what in _PYTHON_ONLY
        if rx.search(pattern)
    ]
    return [], notes
