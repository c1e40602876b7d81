"""One log format for every metamesh command.

Every command logs to stderr as ``TIME LEVEL LOGGER: message`` (:func:`configure`). What the
long-running commands print to stdout (``metamesh: serving 2 listener(s) ...``, the admin and
xDS addresses) is their status display for people and scripts, not a log: it says what is
served now and is printed again whenever that changes.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str | int = "INFO") -> None:
    """Log to stderr in :data:`FORMAT` at ``level`` (a name such as ``"INFO"``, or a number)."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, format=FORMAT, stream=sys.stderr
    )
