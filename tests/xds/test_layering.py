"""The xds layer sits below control: importing it loads no control or runtime code."""

from __future__ import annotations

import subprocess
import sys


def test_xds_imports_no_upper_layer() -> None:
    code = (
        "import sys, metamesh.xds, metamesh.xds.server\n"
        "upper = ('metamesh.control', 'metamesh.runtime', 'metamesh.cli')\n"
        "print(sorted(m for m in sys.modules if m.startswith(upper)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
