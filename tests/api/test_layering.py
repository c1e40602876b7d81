"""The api layer is the bottom one: importing it loads no proxy, runtime, xds or control code."""

from __future__ import annotations

import subprocess
import sys


def test_api_imports_no_upper_layer() -> None:
    code = (
        "import sys, metamesh.api, metamesh.api.validate\n"
        "upper = ('metamesh.proxy', 'metamesh.runtime', 'metamesh.xds', 'metamesh.control')\n"
        "print(sorted(m for m in sys.modules if m.startswith(upper)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
