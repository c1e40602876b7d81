"""A problem found in a set of resources: where it is, what is wrong, and how bad.

Loading and validation never stop at the first problem; they return every one, each pointing at
the file, the document in it, the line (when the YAML parser knows it), the resource and the
field path in YAML spelling (``spec.routes[0].route[1].weight``), so the user can fix them all
in one pass. :meth:`Problem.format` gives the compiler-style line ``metamesh validate`` prints.

Severities: an ``error`` keeps the resource (and, in a watched directory, its file) out of
force; a ``warning`` is something that loads but will not do what it says (an unsupported
field, a route never used); ``info`` is a note that changes nothing, such as the objects of
kinds metamesh does not read, which are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
PathElement = str | int
FieldPath = tuple[PathElement, ...]


def format_path(path: Sequence[PathElement]) -> str:
    """``("spec", "routes", 0, "name")`` -> ``spec.routes[0].name``."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        else:
            out += f".{element}" if out else str(element)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    kind: str
    name: str
    field_path: str
    message: str
    severity: Severity = "error"
    line: int | None = None
    document: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """``file:line: error: Kind namespace/name: field.path: message``."""
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.line is None and self.document is not None:
            where += f" (document {self.document + 1})"
        subject = " ".join(part for part in (self.kind, self.name) if part)
        parts = [where, self.severity, subject, self.field_path, self.message]
        return ": ".join(part for part in parts if part)


def sort_problems(problems: Sequence[Problem]) -> list[Problem]:
    """Problems ordered by file, line, then errors before warnings before info."""
    return sorted(
        problems,
        key=lambda p: (
            p.file,
            p.document or 0,
            p.line or 0,
            _SEVERITY_ORDER[p.severity],
            p.field_path,
        ),
    )
