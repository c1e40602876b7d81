"""Linear-time regexes for route and authorization matching: RE2, as Envoy and Aeraki use.

A MetaRouter or authorization ``regex`` is matched against values a client chooses (method
names, attachments), so a backtracking engine hands every client a way to stall the proxy:
with Python's ``re``, ``(a+)+$`` against ``'a' * 28 + '!'`` took 6 s and doubled with every
character. RE2 (the ``google-re2`` binding) runs in time linear in the input whatever the
pattern, and refuses what cannot be matched that way (backreferences, lookaround), which is
also what Envoy refuses, so a config valid here is valid for an Envoy data plane.

Two limits bound the compiled program as Envoy's ``max_program_size`` does: the pattern's
length (:data:`MAX_PATTERN_LENGTH`) and RE2's program size (:data:`MAX_PROGRAM_SIZE`; Envoy's
default error level is 100, which refuses ``[a-z]{1,64}`` and ``\\pL+``, so metamesh allows
more; RE2's own 8 MB memory budget per pattern bounds the rest). A pattern
over either, or one RE2 refuses, raises :class:`RegexError` with the reason; the validator
reports it on the resource's field and the xDS client NACKs a config carrying it.

Patterns are compiled with captures off (matching only asks yes or no) and RE2's own error
logging off (the reason travels in the exception).
"""

from __future__ import annotations

from typing import Final, Protocol

import re2

MAX_PATTERN_LENGTH: Final = 1024
MAX_PROGRAM_SIZE: Final = 10_000


class RegexError(ValueError):
    """A pattern RE2 refuses or that is over a limit; the message says which and why."""


class Pattern(Protocol):
    """What matching uses of a compiled pattern."""

    def fullmatch(self, text: str) -> object | None: ...


def _options() -> object:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS: Final = _options()


def compile_regex(pattern: str) -> Pattern:
    """``pattern`` compiled by RE2 for :meth:`Pattern.fullmatch`; raises :class:`RegexError`."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(
            f"regex is {len(pattern)} characters long, over the limit of {MAX_PATTERN_LENGTH}"
        )
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"RE2 refuses regex {pattern!r}: {reason}") from None
    size: int = compiled.programsize
    if size > MAX_PROGRAM_SIZE:
        raise RegexError(
            f"regex {pattern!r} compiles to an RE2 program of size {size}, over the limit of "
            f"{MAX_PROGRAM_SIZE}"
        )
    result: Pattern = compiled
    return result


def regex_error(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or None."""
    try:
        compile_regex(pattern)
    except RegexError as exc:
        return str(exc)
    return None
