"""Small field checks shared by the validation rules: DNS names, exportTo, regular expressions.

Each returns a list of messages (empty when fine), so a caller can attach them to a field path.
They follow the checks of Aeraki's validating webhook (which reuses Istio's) so that a manifest
metamesh accepts is one Aeraki would accept.

Regular expressions are RE2, as in Aeraki and Envoy, and metamesh's proxy matches with RE2 too
(:mod:`metamesh.api.regex`): a pattern RE2 refuses (lookaround, backreferences) or one over the
size limits is an error naming the reason; RE2-only syntax such as ``\\pL`` is accepted.
"""

from __future__ import annotations

import re

from metamesh.api.regex import regex_error

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


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
    """(errors, warnings) for a match regex; ``*`` (Aeraki's "present") is fine.

    Patterns are RE2 (:mod:`metamesh.api.regex`), as in Envoy and Aeraki: what RE2 refuses
    (backreferences, lookaround) or what is over the size limits is an error with the reason.
    """
    if pattern == "":
        return ["regex string match should not be empty"], []
    if pattern == "*":
        return [], []
    error = regex_error(pattern)
    return ([error] if error else []), []
