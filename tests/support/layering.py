"""Which modules of given packages an import pulls in, seen from a fresh interpreter.

The layering tests (``tests/api``, ``tests/xds``) check that a lower layer imports nothing of an
upper one. ``sys.modules`` of the test process already holds everything other tests imported, so
the check runs the imports in a new ``python -c`` and reads back the sorted module names.
"""

from __future__ import annotations

import subprocess
import sys


def loaded_under(imports: str, upper: tuple[str, ...]) -> str:
    """The printed sorted list of modules starting with ``upper`` after ``import <imports>``."""
    code = (
        f"import sys, {imports}\n"
        f"upper = {upper!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith(upper)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return run.stdout.strip()
